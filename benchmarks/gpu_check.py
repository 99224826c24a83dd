"""One-GPU check of what the ImageNet job runs: DiT-XL/2 generation with CFG and the shipped
guidance, the SD VAE, the protocol students, and the ImageNet twin end to end on the GPU.

    python -m benchmarks.gpu_check [--out benchmarks/reports] [--budget 470]     # on a GPU, < 8 min
    python -m benchmarks.gpu_check --dry --out out/gpu-check                     # CPU, tiny, < 1 min

Sections (each with its own time budget; a failure or timeout is recorded, the next one runs):
  env             device name, torch / CUDA / cuDNN / diffusers / Ray versions, GPU memory
  dit_generation  DiT-XL/2-256 (the published config: 28 layers, 16 heads x 72, patch 2, 4 -> 8
                  channels (learned sigma), sample size 32, 1000 classes) with random weights, in
                  the job's dtype (bf16), built with diffusers' DiTTransformer2DModel (no download).
                  ``mgd_ray.method.sample`` at the job's batch (64) with CFG (4.0, first3) and the
                  shipped guidance (jobs/imagenet1k.yaml through the pipeline's ``JobConfig.guidance_params``:
                  members basis, d 8, K 16, beta 1, t_stop 25) on random targets with 128-member
                  neighbourhoods: images/s, the step time with and without guidance, the share of a
                  guided step the guidance takes (CUDA events around the guidance call), CFG-only
                  images/s, and the host synchronisations per step (torch.cuda.set_sync_debug_mode,
                  by source file) in the warm-up run.
  vae_encode      sd-vae-ft-mse's published config (AutoencoderKL, block_out (128, 256, 512, 512),
                  2 layers per block, 4 latent channels, scaling 0.18215) with random weights: encode
                  images/s at 256 px at the job's encode batch (256), and decode images/s (batch 64)
  student_epoch   one training epoch (``mgd_ray.eval.train.train_and_evaluate``: the protocol's
                  augmentation, CutMix, optimiser, and soft-label-imagenet's teacher forward) of each
                  student of each of the job's protocols at its size, 1000 classes, on 1000 synthetic
                  images: training images/s and epoch seconds
  twin_e2e        ``python -m mgd_ray.distill jobs/imagenet1k-twin.yaml --set model.device=cuda
                  --set output.dir=...`` (a subprocess) on a 10-class twin written by
                  ``benchmarks.imagenet_twin.make_twin`` (tiny random models of the real classes,
                  4x32x32 latent): exit status, wall time, the manifest's stage timings

Writes OUT/gpu.json and OUT/gpu.md (device, versions, every figure, per-section timings).
``--dry`` (automatic without CUDA) shrinks everything (tiny DiT/VAE/students, 4 sampler steps with
guidance on two of them, the twin as a plan only: ``--dry-run``) so the same code runs on a CPU;
its report must not go to benchmarks/reports (the default --out of a dry run is out/gpu-check-dry).
On the lent GPU machines, diffusers, Ray and pydantic are not installed: carry them as wheels
(the device tool's README); a section whose import fails is recorded as failed.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
JOB = REPO / "jobs" / "imagenet1k.yaml"
TWIN_JOB = REPO / "jobs" / "imagenet1k-twin.yaml"
SECTIONS = ("env", "dit_generation", "vae_encode", "student_epoch", "twin_e2e")
BUDGET_S = {"env": 15, "dit_generation": 150, "vae_encode": 45, "student_epoch": 90, "twin_e2e": 170}
PRELOAD = ("diffusers", "ray", "pydantic", "mgd_ray.models", "mgd_ray.method", "mgd_ray.pipeline.workers",
           "mgd_ray.eval.train", "benchmarks.imagenet_twin")   # imported before any deadline runs
TOTAL_BUDGET_S = 470          # the whole check, under 8 minutes on one GPU
MIN_SECTION_S = 5.0           # a section with less left than this is skipped


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What each section runs; ``full`` (GPU) and ``dry`` (CPU, tiny)."""
    dit: dict                     # build_dit kwargs
    latent: tuple                 # (C, H, W)
    batch: int                    # DiT batch (images)
    steps: int | None             # sampler steps (None: the job's)
    guidance_override: dict       # GuidanceParams fields replaced (dry: guidance on 2 of 4 steps)
    members: int                  # neighbourhood size per target
    vae: dict                     # build_vae kwargs
    image_px: int
    encode_batch: int | None      # None: the job's encode.batch_size
    encode_batches: int
    decode_batch: int
    student_px: int | None        # None: the job's evaluate.image_size
    student_width: int | None     # None: protocol width
    student_images: int
    student_batch: int | None     # None: the job's evaluate.batch_size
    twin_classes: int
    twin_train: int
    twin_plan_only: bool


FULL = Sizes(dit=dict(num_classes=1000, latent_channels=4, latent_size=32, patch_size=2, num_layers=28,
                      num_heads=16, head_dim=72), latent=(4, 32, 32), batch=64, steps=None, guidance_override={},
             members=128,
             vae=dict(image_channels=3, block_out_channels=(128, 256, 512, 512), latent_channels=4,
                      layers_per_block=2, norm_num_groups=32, sample_size=256, scaling_factor=0.18215),
             image_px=256, encode_batch=None, encode_batches=3, decode_batch=64,
             student_px=None, student_width=None, student_images=1000, student_batch=None,
             twin_classes=10, twin_train=20, twin_plan_only=False)
DRY = Sizes(dit=dict(num_classes=1000, latent_channels=4, latent_size=8, patch_size=2, num_layers=1,
                     num_heads=2, head_dim=16), latent=(4, 8, 8), batch=4, steps=4,
            guidance_override=dict(t_stop=1, warm=1), members=24,
            vae=dict(image_channels=3, block_out_channels=(16, 32), latent_channels=4, layers_per_block=1,
                     norm_num_groups=8, sample_size=32, scaling_factor=0.18215),
            image_px=32, encode_batch=8, encode_batches=2, decode_batch=4,
            student_px=32, student_width=8, student_images=32, student_batch=16,
            twin_classes=2, twin_train=4, twin_plan_only=True)


class SectionTimeout(BaseException):
    """A section ran past its budget (BaseException: library code's ``except Exception`` must not
    swallow it)."""


@contextlib.contextmanager
def _deadline(seconds: float):
    """Raise SectionTimeout in this (main) thread after ``seconds`` (between Python bytecodes).
    An outer SIGALRM timer (pytest-timeout's) keeps its deadline: it fires through its own handler."""
    t0 = time.monotonic()
    old_handler = signal.getsignal(signal.SIGALRM)
    old_delay, old_interval = signal.getitimer(signal.ITIMER_REAL)
    outer_first = 0 < old_delay < seconds

    def on_alarm(signum, frame):
        if outer_first and callable(old_handler):
            return old_handler(signum, frame)
        raise SectionTimeout(f"over its budget of {seconds:.0f} s")
    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(0.01, old_delay if outer_first else seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        if old_delay > 0:
            signal.setitimer(signal.ITIMER_REAL, max(0.001, old_delay - (time.monotonic() - t0)), old_interval)


class Ctx:
    """What the sections share: device, sizes, a work dir, and (read when first needed, so that a
    missing package fails only the sections that need it) the job and the model dtype."""

    def __init__(self, device: str, sizes: Sizes, workdir: Path, dry: bool, imports: dict | None = None):
        self.device, self.sizes, self.workdir, self.dry = device, sizes, workdir, dry
        self.imports = imports or {}
        self._job = None

    @property
    def job(self):
        if self._job is None:
            from mgd_ray.config import load_job
            self._job = load_job(JOB)
        return self._job

    @property
    def dtype(self):
        from mgd_ray.models import torch_dtype
        return torch_dtype(self.job.model.dtype)

    def sync(self):
        if self.device == "cuda":
            torch.cuda.synchronize()


class Marks:
    """Timestamps in stream order: CUDA events on a GPU (no host synchronisation until read),
    perf_counter on a CPU. ``ms(a, b)`` after ``ctx.sync()``."""

    def __init__(self, device: str):
        self.cuda = device == "cuda"
        self.marks: list[tuple[str, object]] = []

    def mark(self, name: str):
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            self.marks.append((name, e))
        else:
            self.marks.append((name, time.perf_counter()))

    def ms(self, a, b) -> float:
        return a.elapsed_time(b) if self.cuda else 1e3 * (b - a)


class _TimedGuidance:
    """The guidance object, with a mark before and after each call."""

    def __init__(self, guide, marks: Marks):
        self.guide, self.marks = guide, marks

    def is_on(self, step):
        return self.guide.is_on(step)

    def __call__(self, x_t, x0_hat, step):
        self.marks.mark("g0")
        out = self.guide(x_t, x0_hat, step)
        self.marks.mark("g1")
        return out


def _step_figures(marks: Marks) -> dict:
    """Per-step times from marks "step" (model call = start of a step), "g0"/"g1" (guidance), "end"."""
    starts = [i for i, (n, _) in enumerate(marks.marks) if n in ("step", "end")]
    guided, unguided, g_ms = [], [], []
    for a, b in zip(starts, starts[1:]):
        step_ms = marks.ms(marks.marks[a][1], marks.marks[b][1])
        inner = marks.marks[a + 1:b]
        gs = [x for n, x in inner if n == "g0"], [x for n, x in inner if n == "g1"]
        if gs[0]:
            guided.append(step_ms)
            g_ms.append(marks.ms(gs[0][0], gs[1][0]))
        else:
            unguided.append(step_ms)
    mean = (lambda v: sum(v) / len(v) if v else float("nan"))
    return {"steps_guided": len(guided), "steps_unguided": len(unguided),
            "step_ms_guided": mean(guided), "step_ms_unguided": mean(unguided),
            "guidance_ms_per_step": mean(g_ms),
            "guidance_share_of_guided_step": sum(g_ms) / sum(guided) if guided else float("nan"),
            "guidance_share_of_sampling": sum(g_ms) / (sum(guided) + sum(unguided))}


# ---------------------------------------------------------------------------------------------
# sections: each fills ``fig`` as it goes (a timeout keeps what was measured)
# ---------------------------------------------------------------------------------------------
def preload() -> dict:
    """Import what the sections need before any deadline can interrupt an import (a half-imported
    module would break every later section). -> {module: seconds or "missing (...)"}."""
    out = {}
    for mod in PRELOAD:
        t0 = time.perf_counter()
        try:
            __import__(mod)
            out[mod] = round(time.perf_counter() - t0, 2)
        except Exception as e:  # noqa: BLE001 - recorded: the section that needs it fails
            out[mod] = f"missing ({type(e).__name__}: {str(e)[:120]})"
    return out


def section_env(ctx: Ctx, fig: dict):
    import numpy as np
    fig.update(python=platform.python_version(), torch=torch.__version__, numpy=np.__version__,
               platform=platform.platform(), cpu_count=os.cpu_count(), device=ctx.device,
               mode="dry" if ctx.dry else "full", torch_threads=torch.get_num_threads(),
               import_s=ctx.imports)
    for mod in ("diffusers", "ray", "pydantic"):
        m = sys.modules.get(mod)
        fig[mod] = getattr(m, "__version__", "?") if m else ctx.imports.get(mod, "missing")
    if ctx.device == "cuda":
        p = torch.cuda.get_device_properties(0)
        fig.update(device_name=torch.cuda.get_device_name(0), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version(), capability=f"{p.major}.{p.minor}",
                   gpu_memory_gib=p.total_memory / 2**30, multiprocessors=p.multi_processor_count)
        try:
            fig["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=10).stdout.strip()
        except Exception:  # noqa: BLE001 - informative only
            pass
    else:
        fig.update(device_name=platform.processor() or "cpu", cuda=torch.version.cuda)


def _build_dit(ctx: Ctx):
    from mgd_ray.models import build_dit
    torch.manual_seed(0)
    with torch.device(ctx.device):
        dit = build_dit(**ctx.sizes.dit)
    return dit.to(ctx.dtype).eval().requires_grad_(False)


def _build_vae(ctx: Ctx):
    from mgd_ray.models import build_vae
    torch.manual_seed(1)
    with torch.device(ctx.device):
        vae = build_vae(**ctx.sizes.vae)
    return vae.to(ctx.dtype).eval().requires_grad_(False)


def section_dit_generation(ctx: Ctx, fig: dict):
    from mgd_ray.method import (GaussianDiffusion, ManifoldGuidance, dit_model_fn, image_seed,
                                pad_neighbourhoods, sample)
    S, job = ctx.sizes, ctx.job
    t0 = time.perf_counter()
    dit = _build_dit(ctx)
    fig["build_s"] = time.perf_counter() - t0
    fig["params_M"] = sum(p.numel() for p in dit.parameters()) / 1e6
    fig["dtype"] = str(ctx.dtype).replace("torch.", "")
    params = job.guidance_params.replace(**S.guidance_override)
    fig["guidance"] = {k: v for k, v in params.to_dict().items()
                       if k in ("basis", "d", "K", "beta", "lam_mode", "t_stop", "manifold_scale", "warm")}
    B, (C, H, W) = S.batch, S.latent
    D = C * H * W
    steps = S.steps or job.sampler.steps
    fig.update(batch=B, steps=steps, cfg_scale=job.sampler.cfg_scale, cfg_channels=job.sampler.cfg_channels,
               neighbourhood_members=S.members, latent=list(S.latent))
    g = torch.Generator().manual_seed(0)
    c = torch.randn(B, D, generator=g)                                            # targets (CPU, as the pipeline)
    nbrs = pad_neighbourhoods([(c[b] + 0.5 * torch.randn(S.members, D, generator=g)).numpy() for b in range(B)])
    labels = torch.arange(B) % ctx.sizes.dit["num_classes"]
    seeds = [image_seed(0, int(labels[b]), b) for b in range(B)]
    diffusion = GaussianDiffusion().respaced(steps)
    kw = dict(null_label=ctx.sizes.dit["num_classes"], cfg_scale=job.sampler.cfg_scale,
              cfg_channels=job.sampler.cfg_channels, variance_type="learned_range", sampler=job.sampler.kind,
              eta=job.sampler.eta, device=ctx.device)
    base_fn = dit_model_fn(dit)

    def marked(marks: Marks):
        def fn(x, t, y):                          # a mark at the start of every step
            marks.mark("step")
            return base_fn(x, t, y)
        return fn

    def run(guided: bool, marks: Marks | None = None):
        guide = ManifoldGuidance(c, nbrs, params) if guided else None
        if marks is not None and guide is not None:
            guide = _TimedGuidance(guide, marks)
        x0 = sample(marked(marks) if marks is not None else base_fn, diffusion, labels, seeds, S.latent,
                    guidance=guide, **kw)
        if marks is not None:
            marks.mark("end")
        return x0

    # warm-up, with the host synchronisations counted (CUDA: set_sync_debug_mode warns at each)
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if ctx.device == "cuda":
            torch.cuda.set_sync_debug_mode("warn")
        try:
            run(True)
        finally:
            if ctx.device == "cuda":
                torch.cuda.set_sync_debug_mode(0)
    ctx.sync()
    fig["warmup_s"] = time.perf_counter() - t0
    if ctx.device == "cuda":
        syncs = Counter(f"{Path(w.filename).name}:{w.lineno}" for w in caught
                        if "synchroniz" in str(w.message).lower())
        fig["host_syncs_per_step"] = sum(syncs.values()) / steps
        fig["host_syncs_by_site"] = dict(syncs.most_common(12))
    # timed: guided (with per-step marks), then CFG only
    marks = Marks(ctx.device)
    ctx.sync()
    t0 = time.perf_counter()
    x0 = run(True, marks)
    ctx.sync()
    fig["sample_s"] = time.perf_counter() - t0
    fig["images_per_s"] = B / fig["sample_s"]
    fig.update(_step_figures(marks))
    fig["finite"] = bool(torch.isfinite(x0).all())
    ctx.sync()
    t0 = time.perf_counter()
    run(False)
    ctx.sync()
    fig["cfg_only_sample_s"] = time.perf_counter() - t0
    fig["cfg_only_images_per_s"] = B / fig["cfg_only_sample_s"]
    fig["guided_vs_cfg_only_time_ratio"] = fig["sample_s"] / fig["cfg_only_sample_s"]
    del dit, x0


def section_vae_encode(ctx: Ctx, fig: dict):
    from mgd_ray.models import decode_latents, encode_latents
    S = ctx.sizes
    vae = _build_vae(ctx)
    sf = float(vae.config.scaling_factor)
    bs = S.encode_batch or ctx.job.encode.batch_size
    fig.update(encode_batch=bs, image_px=S.image_px, dtype=str(ctx.dtype).replace("torch.", ""),
               params_M=sum(p.numel() for p in vae.parameters()) / 1e6, scaling_factor=sf)
    g = torch.Generator().manual_seed(2)
    x = (torch.rand(bs, 3, S.image_px, S.image_px, generator=g) * 2 - 1).to(ctx.device, ctx.dtype)
    with torch.no_grad():
        z = encode_latents(vae, x, sf)                                        # warm-up
        ctx.sync()
        fig["latent_shape"] = list(z.shape[1:])
        t0 = time.perf_counter()
        for _ in range(S.encode_batches):
            z = encode_latents(vae, x, sf)
        ctx.sync()
        dt = time.perf_counter() - t0
        fig["encode_s"] = dt
        fig["encode_images_per_s"] = bs * S.encode_batches / dt
        zd = z[: S.decode_batch].float()
        decode_latents(vae, zd, sf)                                          # warm-up
        ctx.sync()
        t0 = time.perf_counter()
        img = decode_latents(vae, zd, sf)
        ctx.sync()
        fig["decode_batch"] = len(zd)
        fig["decode_images_per_s"] = len(zd) / (time.perf_counter() - t0)
        fig["finite"] = bool(torch.isfinite(img.float()).all() and torch.isfinite(z.float()).all())


def section_student_epoch(ctx: Ctx, fig: dict):
    """One training epoch of each student of each of the job's evaluation protocols (``evaluate``,
    then ``evaluate.also``), keyed ``<protocol>/<student>``, at that protocol's size and batch."""
    from mgd_ray.eval.train import TrainConfig, train_and_evaluate
    S = ctx.sizes
    n, classes = S.student_images, 1000
    fig.update(images=n, num_classes=classes, students={})
    for pname, view in ctx.job.evaluations():
        ev = view.evaluate
        px = S.student_px or ev.image_size
        bs = S.student_batch or ev.batch_size
        g = torch.Generator().manual_seed(3)
        x = torch.rand(n, 3, px, px, generator=g) * 2 - 1
        y = torch.arange(n) % classes
        xt, yt = x[:64], y[:64]
        for name in ev.students:
            cfg = TrainConfig.build(ev, epochs=1, n_evals=1, batch_size=bs, student=name, device=ctx.device,
                                    width=S.student_width)
            teacher = None
            if ev.protocol == "soft-label-imagenet":   # its teacher's cost counts: a random torchvision ResNet-18
                from mgd_ray.eval.soft_label_imagenet import build_torchvision
                teacher = build_torchvision("resnet18", classes)
            t0 = time.perf_counter()
            r = train_and_evaluate(x, y, xt, yt, classes, cfg, teacher=teacher)
            ctx.sync()
            fig["students"][f"{pname}/{name}"] = {
                "protocol": ev.protocol, "image_px": px, "batch_size": bs,
                "train_images_per_s": r["images_per_s"], "epoch_s": n / r["images_per_s"],
                "total_s": time.perf_counter() - t0, "augment": r["augment"]}


def section_twin_e2e(ctx: Ctx, fig: dict, budget_s: float):
    from benchmarks.imagenet_twin import make_twin
    S = ctx.sizes
    twin, out = ctx.workdir / "twin", ctx.workdir / "twin-out"
    if out.exists():                        # a fresh output dir: a rerun must not resume the last run
        shutil.rmtree(out)
    t0 = time.perf_counter()
    rec = make_twin(twin, S.twin_classes, S.twin_train, 2, formats=("imagefolder",))
    fig["make_twin_s"] = time.perf_counter() - t0
    sets = [f"model.device={ctx.device}", f"output.dir={out}", f"data.root={twin / 'imagefolder'}",
            f"model.generator={twin / 'models'}", f"data.classes=[{', '.join(rec['wnids'])}]"]
    if ctx.device != "cuda":
        sets += ["encode.num_gpus=0", "generate.num_gpus=0", "evaluate.gpus_per_worker=0"]
    cmd = [sys.executable, "-m", "mgd_ray.distill", str(TWIN_JOB.relative_to(REPO))]
    for s in sets:
        cmd += ["--set", s]
    if S.twin_plan_only:
        cmd.append("--dry-run")
    fig.update(command=_rel(" ".join(cmd[1:])), classes=S.twin_classes, train_per_class=S.twin_train,
               plan_only=S.twin_plan_only)
    log_path = ctx.workdir / "twin.log"
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            rc = proc.wait(timeout=max(1.0, budget_s - (time.perf_counter() - t0) - 10))
        finally:
            if proc.poll() is None:                     # timed out (or the section's alarm): end its group
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            fig["wall_s"] = time.perf_counter() - t0
            fig["log_tail"] = _rel(log_path.read_text(errors="replace")[-1500:])
    fig["exit_status"] = rc
    if rc != 0:
        raise RuntimeError(f"the twin exited with {rc}; log tail: {fig['log_tail'][-400:]}")
    man = out / "manifest.json"
    if man.is_file():
        m = json.loads(man.read_text())
        fig.update(manifest_status=m.get("status"), images=m.get("counts", {}).get("images"),
                   stage_timings_s=m.get("timings", {}))
        if fig.get("images") and fig["wall_s"] > 0:
            fig["images_per_s_end_to_end"] = fig["images"] / fig["wall_s"]


def _rel(text: str) -> str:
    """Paths inside the checkout as relative ones (a committed report carries no machine's paths)."""
    return text.replace(str(REPO) + os.sep, "")


# ---------------------------------------------------------------------------------------------
def _free(ctx: Ctx | None):
    gc.collect()
    if ctx is not None and ctx.device == "cuda":
        torch.cuda.empty_cache()


def run_sections(ctx: Ctx, budget_total: float, only: tuple[str, ...] = SECTIONS) -> dict:
    """Run each section under its budget (and what is left of the total); -> {name: record}."""
    fns = {"env": section_env, "dit_generation": section_dit_generation, "vae_encode": section_vae_encode,
           "student_epoch": section_student_epoch}
    t_start = time.perf_counter()
    out = {}
    for name in SECTIONS:
        left = budget_total - (time.perf_counter() - t_start)
        budget = min(BUDGET_S[name], left)
        rec = {"status": "skipped", "budget_s": round(budget, 1), "seconds": 0.0, "figures": {}}
        out[name] = rec
        if name not in only:
            rec["error"] = "not selected (--only)"
            continue
        if budget < MIN_SECTION_S:
            rec["error"] = f"the total budget ({budget_total:.0f} s) is spent"
            continue
        print(f"[gpu_check] {name} (budget {budget:.0f} s) ...", flush=True)
        if ctx.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        try:
            with _deadline(budget):
                if name == "twin_e2e":
                    section_twin_e2e(ctx, rec["figures"], budget)
                else:
                    fns[name](ctx, rec["figures"])
            rec["status"] = "ok"
        except SectionTimeout as e:
            rec.update(status="timeout", error=str(e))
        except Exception as e:  # noqa: BLE001 - a section's failure is recorded, not fatal
            rec.update(status="failed", error=f"{type(e).__name__}: {str(e)[:500]}",
                       traceback=traceback.format_exc()[-2000:])
        rec["seconds"] = round(time.perf_counter() - t0, 2)
        if ctx.device == "cuda":
            rec["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        _free(ctx)
        print(f"[gpu_check] {name}: {rec['status']} in {rec['seconds']} s"
              + (f" ({rec.get('error')})" if rec["status"] != "ok" else ""), flush=True)
    return out


def summary_rows(sections: dict) -> list[dict]:
    """The headline figures: (section, figure, value, unit)."""
    rows = []

    def add(sec, key, unit, label=None):
        v = sections.get(sec, {}).get("figures", {}).get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            rows.append({"section": sec, "figure": label or key, "value": v, "unit": unit})
    add("dit_generation", "images_per_s", "images/s", "generation, CFG + guidance (sampling)")
    add("dit_generation", "cfg_only_images_per_s", "images/s", "generation, CFG only (sampling)")
    add("dit_generation", "step_ms_guided", "ms", "guided step")
    add("dit_generation", "step_ms_unguided", "ms", "unguided step")
    add("dit_generation", "guidance_ms_per_step", "ms", "guidance per guided step")
    add("dit_generation", "guidance_share_of_guided_step", "fraction", "guidance share of a guided step")
    add("dit_generation", "host_syncs_per_step", "per step", "host synchronisations")
    add("vae_encode", "encode_images_per_s", "images/s", "VAE encode")
    add("vae_encode", "decode_images_per_s", "images/s", "VAE decode")
    for name, s in sections.get("student_epoch", {}).get("figures", {}).get("students", {}).items():
        rows.append({"section": "student_epoch", "figure": f"{name} train", "value": s["train_images_per_s"],
                     "unit": "images/s"})
        rows.append({"section": "student_epoch", "figure": f"{name} epoch", "value": s["epoch_s"], "unit": "s"})
    add("twin_e2e", "wall_s", "s", "twin end to end")
    return rows


def write(out_dir: Path, data: dict) -> tuple[Path, Path]:
    from benchmarks import md_table
    out_dir.mkdir(parents=True, exist_ok=True)
    env = data["sections"]["env"]["figures"]
    md = [f"# GPU check ({data['date']}, {data['mode']})", "",
          f"Device: **{env.get('device_name', '?')}** · torch {env.get('torch', '?')} · CUDA {env.get('cuda')} · "
          f"cuDNN {env.get('cudnn', '-')} · diffusers {env.get('diffusers', '?')} · Ray {env.get('ray', '?')} · "
          f"Python {env.get('python', '?')}; total {data['total_s']:.1f} s of a {data['budget_s']:.0f} s budget.",
          "", f"Command: `{data['command']}`", "",
          "## Figures", md_table(data["summary"], ["section", "figure", "value", "unit"]), "",
          "## Sections", md_table([{"section": k, **{f: v.get(f, "") for f in ("status", "seconds", "budget_s",
                                                                                "peak_gpu_memory_gib", "error")}}
                                   for k, v in data["sections"].items()],
                                  ["section", "status", "seconds", "budget_s", "peak_gpu_memory_gib", "error"])]
    dg = data["sections"]["dit_generation"]["figures"]
    if dg:
        md += ["", "## DiT generation", "```", json.dumps({k: v for k, v in dg.items()}, indent=1, default=str),
               "```"]
    tw = data["sections"]["twin_e2e"]["figures"]
    if tw.get("stage_timings_s"):
        md += ["", "## Twin stage timings (s)", md_table([tw["stage_timings_s"]], list(tw["stage_timings_s"]))]
    pj, pm = out_dir / "gpu.json", out_dir / "gpu.md"
    pj.write_text(json.dumps(data, indent=2, default=str) + "\n")
    pm.write_text("\n".join(md) + "\n")
    return pj, pm


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None,
                    help="report dir (default benchmarks/reports; a dry run: out/gpu-check-dry)")
    ap.add_argument("--dry", action="store_true", help="tiny everything, on the CPU (automatic without CUDA)")
    ap.add_argument("--budget", type=float, default=TOTAL_BUDGET_S, help="seconds for all sections together")
    ap.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections to run")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (dry default: 1)")
    ap.add_argument("--workdir", type=Path, default=REPO / "out" / "gpu-check-work",
                    help="scratch dir: the twin's data, models and output (default out/gpu-check-work)")
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    dry = args.dry or not cuda
    device = "cpu" if dry else "cuda"
    out_dir = args.out or (REPO / "out" / "gpu-check-dry" if dry else REPO / "benchmarks" / "reports")
    workdir = args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    if args.threads or dry:
        torch.set_num_threads(args.threads or 1)
    only = tuple(s for s in args.only.split(",") if s)
    unknown = set(only) - set(SECTIONS)
    if unknown:
        raise SystemExit(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    t0 = time.perf_counter()
    imports = preload()
    ctx = Ctx(device, DRY if dry else FULL, workdir, dry, imports)
    sections = run_sections(ctx, args.budget, only)
    data = {"date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "mode": ("dry (no CUDA: automatic)" if dry and not args.dry else "dry") if dry else "full",
            "device": device, "budget_s": args.budget, "total_s": time.perf_counter() - t0,
            "command": "python -m benchmarks.gpu_check " + " ".join(argv if argv is not None else sys.argv[1:]),
            "sizes": dataclasses.asdict(ctx.sizes), "sections": sections}
    data["summary"] = summary_rows(sections)
    pj, pm = write(out_dir, data)
    print(pm.read_text())
    print(f"[gpu_check] wrote {pj} and {pm}")
    return data


if __name__ == "__main__":
    main()
