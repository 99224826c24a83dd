"""The full-size twin: ``jobs/imagenet1k.yaml`` itself, end to end on this CPU, through the real
model layout: DiT-XL/2-256 and sd-vae-ft-mse at their published sizes (random weights) in a
Hugging Face hub cache under their real repo ids, loaded with ``HF_HUB_OFFLINE=1``.

    python -m benchmarks.fullsize_twin --out out/fullsize-twin [--train-per-class 4] [--forward-repeats 5]

1. Models: ``DiTTransformer2DModel`` from the published config (28 layers, hidden 1,152 = 16 heads
   x 72, patch 2, 4 -> 8 channels, sample size 32, 1,000 classes, ada_norm_zero; the hub's legacy
   class name ``Transformer2DModel`` in its config) and the SD ``AutoencoderKL`` (128/256/512/512,
   2 layers per block, 32 groups, 256 px, scaling factor 0.18215), written with ``save_pretrained``
   into ``OUT/hf/hub/models--facebook--DiT-XL-2-256`` and ``models--stabilityai--sd-vae-ft-mse``
   (``benchmarks.hub_cache``). Written once; a rerun reuses them.
2. Data: 256-px synthetic images under 2 real wnids (``benchmarks.imagenet_twin``).
3. The job: ``python -m mgd_ray.distill jobs/imagenet1k.yaml`` with overrides of only the data
   root, the class subset, sizes and placement (IPC 1, one seed, 2 sampler steps and t_stop 0 so
   the config validates, one actor per stage on CPUs, no GPUs), evaluation off, and output.dir.
   While it runs, every process of its tree is polled (0.25 s): peak RSS (``VmHWM``) of the driver,
   and per kind of Ray worker (by process title: ``ray::GeneratorWorker``,
   ``ray::MapWorker(MapBatches(CountingEncoder))``, ``ray::_coreset_task``, ...).
4. Probes, each in a fresh process: the preflight's model facts (``models.read_generator_info``,
   which the driver runs in its ``mgd_ray.isolated`` child, so the driver itself never imports torch), an
   encoder actor's load (``models.load_vae``), a generator actor's load (``models.load_generator``):
   seconds and peak RSS; then seconds per DiT-XL/2 forward, defined as one transformer call on a
   batch of 2 latents (2 x 4 x 32 x 32, timestep and class label per row, no CFG doubling), float32,
   ``torch.no_grad``, torch's default threads on this CPU; median of ``--forward-repeats`` after
   one warm-up; next to what the dry run's cost model predicts for the same call
   (``plan.cost.forward_seconds_estimate`` per image x 2).

Prints a table and writes ``benchmarks/reports/fullsize_twin.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks import REPO, machine, md_table, relative_to_repo, write_report

DIT_ID, VAE_ID = "facebook/DiT-XL-2-256", "stabilityai/sd-vae-ft-mse"
JOB = REPO / "jobs" / "imagenet1k.yaml"
IMAGE_SIZE = 256
MODELS_SPEC = {"dit": DIT_ID, "vae": VAE_ID, "seed": 0, "format": 1}
MB = 1024 * 1024


# ---- the models ------------------------------------------------------------------------------
def fullsize_models(seed: int = 0):
    """(DiTTransformer2DModel, AutoencoderKL) of the published configs, random weights, eval mode."""
    import torch
    from diffusers import DiTTransformer2DModel

    from mgd_ray import known
    from mgd_ray.models import build_vae
    torch.manual_seed(seed)
    tc = {k: v for k, v in known.TRANSFORMER_CONFIGS[DIT_ID].items() if not k.startswith("_")}
    dit = DiTTransformer2DModel(**tc)          # the rest at diffusers' defaults = the published ones
    vc = known.VAE_CONFIGS[VAE_ID]
    vae = build_vae(vc["in_channels"], tuple(vc["block_out_channels"]), vc["latent_channels"],
                    layers_per_block=vc["layers_per_block"], norm_num_groups=32, sample_size=vc["sample_size"],
                    scaling_factor=vc["scaling_factor"])
    assert not dit.config.norm_elementwise_affine and dit.config.norm_type == "ada_norm_zero"
    assert vae.config.act_fn == "silu" and vae.config.norm_num_groups == 32
    return dit.eval(), vae.eval()


def write_models(hf_home: Path, seed: int = 0) -> dict:
    """Write both repos into ``hf_home/hub`` (skipped when ``hf_home/fullsize.json`` says so);
    -> the record (sizes, parameter counts, seconds, snapshot commits)."""
    import shutil

    from benchmarks.hub_cache import write_hub_cache
    hf_home = Path(hf_home)
    marker = hf_home / "fullsize.json"
    if marker.is_file() and json.loads(marker.read_text()).get("spec") == MODELS_SPEC:
        return json.loads(marker.read_text())
    t0 = time.time()
    dit, vae = fullsize_models(seed)
    t_build = time.time() - t0
    stage = hf_home / "staging"
    for p in (stage / "dit", stage / "vae"):
        if p.exists():
            shutil.rmtree(p)
    t1 = time.time()
    dit.save_pretrained(stage / "dit" / "transformer")
    cfg_path = stage / "dit" / "transformer" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["_class_name"] = "Transformer2DModel"               # what the hub repo's config says
    cfg_path.write_text(json.dumps(cfg, indent=2))
    (stage / "dit" / "model_index.json").write_text(json.dumps({
        "_class_name": "DiTPipeline", "transformer": ["diffusers", "Transformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"], "scheduler": ["diffusers", "KarrasDiffusionSchedulers"]}, indent=2))
    (stage / "dit" / "scheduler").mkdir()
    (stage / "dit" / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_schedule": "linear",
         "beta_start": 0.0001, "beta_end": 0.02, "clip_sample": False}, indent=2))
    vae.save_pretrained(stage / "vae")                      # files at the repo root, as the hub repo
    rec = {"spec": MODELS_SPEC,
           "dit_params": sum(p.numel() for p in dit.parameters()),
           "vae_params": sum(p.numel() for p in vae.parameters()),
           "dit_weights_bytes": (stage / "dit" / "transformer" / "diffusion_pytorch_model.safetensors").stat().st_size,
           "vae_weights_bytes": (stage / "vae" / "diffusion_pytorch_model.safetensors").stat().st_size,
           "dtype": str(next(dit.parameters()).dtype).replace("torch.", "")}
    del dit, vae
    t_save = time.time() - t1
    t2 = time.time()
    snaps = write_hub_cache(hf_home, {DIT_ID: stage / "dit", VAE_ID: stage / "vae"}, move=True)
    shutil.rmtree(stage)
    rec.update(build_seconds=round(t_build, 1), save_seconds=round(t_save, 1),
               cache_seconds=round(time.time() - t2, 1),
               snapshots={k: Path(v).name for k, v in snaps.items()})
    marker.write_text(json.dumps(rec, indent=1))
    return rec


def hf_env(hf_home: Path) -> dict:
    """This process's environment, pointed at the twin's hub cache, offline, no Ray address."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_CACHE", "RAY_ADDRESS", "HUGGINGFACE_HUB_CACHE")}
    env.update(HF_HOME=str(Path(hf_home).resolve()), HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO),
               RAY_USAGE_STATS_ENABLED="0", TOKENIZERS_PARALLELISM="false")
    return env


# ---- the job and its process tree --------------------------------------------------------------
def job_overrides(data_root: Path, wnids: list[str], out: Path, encode_batch: int = 2) -> list[str]:
    """``jobs/imagenet1k.yaml`` with only its data, sizes, placement, evaluation and output changed."""
    return [f"data.root={data_root}", f"data.classes=[{', '.join(wnids)}]",
            f"encode.batch_size={encode_batch}", "encode.min_actors=1", "encode.max_actors=1",
            "encode.num_cpus=1", "encode.num_gpus=0", "model.device=cpu",
            "generate.ipc=1", "generate.seeds=[0]", "generate.targets_per_unit=1", "generate.batch_size=2",
            "generate.num_actors=1", "generate.num_cpus=1", "generate.num_gpus=0",
            "sampler.steps=2", "guidance.t_stop=0", "evaluate.enabled=false", f"output.dir={out}"]


def _status(pid: int) -> dict:
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0]) * 1024
    return out


ISOLATED_KIND = "driver's child (mgd_ray.isolated: preflight model facts, plan FLOPs)"


def process_kind(title: str, name: str, args=()) -> str:
    """A Ray worker's kind from its process title (``ray::GeneratorWorker.run_units`` ->
    ``GeneratorWorker``; ``ray::MapWorker(MapBatches(CountingEncoder))`` as it is); other
    processes by their executable name (``raylet``, ``gcs_server``, ...)."""
    if title.startswith("ray::"):
        kind = title[5:].split()[0] if title[5:].strip() else "?"
        depth, cut = 0, len(kind)
        for i, ch in enumerate(kind):            # cut at the first '.' outside parentheses
            depth += ch == "("
            depth -= ch == ")"
            if ch == "." and depth == 0:
                cut = i
                break
        return "ray::" + kind[:cut].removesuffix("()")
    if any("mgd_ray.isolated" in a for a in args):   # the driver's child for model facts (mgd_ray/isolated.py)
        return ISOLATED_KIND
    if name.startswith("python"):            # Ray's helper scripts: by script (log_monitor.py, ...)
        script = next((a for a in args if a.endswith(".py")), None)
        return f"python {Path(script).name}" if script else name
    return name


class TreePoller:
    """Polls a process and its descendants: per pid the peak RSS (``VmHWM``, exact since the
    process started) and the kinds (titles) it was seen under; per kind the largest ``VmHWM`` read
    while a process bore that title, and the most processes of that kind at once."""

    def __init__(self, pid: int, period: float = 0.25):
        self.pid, self.period = pid, period
        self.by_pid: dict[int, dict] = {}
        self.kinds: dict[str, dict] = {}
        self.samples = 0
        self._stop = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import psutil
        root = psutil.Process(self.pid)
        while not self._stop.is_set():
            try:
                procs = [root] + root.children(recursive=True)
            except psutil.Error:
                break
            count: dict[str, int] = {}
            for p in procs:
                try:
                    cmd = p.cmdline()
                    kind = "driver" if p.pid == self.pid else process_kind(cmd[0] if cmd else "", p.name(), cmd[1:])
                    st = _status(p.pid)
                except (psutil.Error, OSError, IndexError):
                    continue
                if "VmHWM" not in st:                 # exiting (a zombie has no memory left to read)
                    continue
                rec = self.by_pid.setdefault(p.pid, {"kinds": set(), "hwm": 0})
                rec["kinds"].add(kind)
                rec["hwm"] = max(rec["hwm"], st.get("VmHWM", 0))
                k = self.kinds.setdefault(kind, {"peak_rss_bytes": 0, "processes": set(), "max_at_once": 0})
                k["peak_rss_bytes"] = max(k["peak_rss_bytes"], st.get("VmHWM", 0))
                k["processes"].add(p.pid)
                count[kind] = count.get(kind, 0) + 1
            for kind, n in count.items():
                self.kinds[kind]["max_at_once"] = max(self.kinds[kind]["max_at_once"], n)
            self.samples += 1
            self._stop.wait(self.period)

    def __enter__(self):
        self.t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.t.join()

    def summary(self) -> dict:
        return {k: {"peak_rss_mb": round(v["peak_rss_bytes"] / MB, 1), "processes": len(v["processes"]),
                    "max_at_once": v["max_at_once"]} for k, v in sorted(self.kinds.items())}


def run_job_measured(out: Path, data_root: Path, wnids: list[str], hf_home: Path, encode_batch: int = 2,
                     timeout: float = 3600) -> dict:
    """Run the job as a subprocess (its own local Ray) while polling its process tree; a previous
    run's outputs under ``out/job`` are removed first (else the rerun would reuse them)."""
    import shutil
    if (out / "job").exists():
        shutil.rmtree(out / "job")
    cmd = [sys.executable, "-m", "mgd_ray.distill", str(JOB)]
    for o in job_overrides(data_root, wnids, out / "job", encode_batch):
        cmd += ["--set", o]
    log = out / "job.log"
    t0 = time.time()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, env=hf_env(hf_home), stdout=fh, stderr=subprocess.STDOUT)
        with TreePoller(proc.pid) as poll:
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.terminate()
                rc = proc.wait(60)
    wall = time.time() - t0
    man_path = out / "job" / "manifest.json"
    man = json.loads(man_path.read_text()) if man_path.is_file() else {}
    kinds = poll.summary()
    return {"rc": rc, "wall_seconds": round(wall, 1), "status": man.get("status"), "reason": man.get("reason"),
            "timings": man.get("timings", {}), "counts": man.get("counts", {}), "model": man.get("model", {}),
            "processes": kinds, "samples": poll.samples,
            "driver_peak_rss_mb": kinds.get("driver", {}).get("peak_rss_mb"),
            "log_tail": log.read_text().splitlines()[-15:] if log.is_file() else []}


def actor_peak(processes: dict, needle: str) -> float | None:
    peaks = [v["peak_rss_mb"] for k, v in processes.items() if needle in k]
    return max(peaks) if peaks else None


# ---- probes (each in a fresh process) ----------------------------------------------------------
def _peak_mb() -> float:
    """This process's peak RSS: ``VmHWM`` (reset by exec), not ``ru_maxrss``, which Linux carries
    over from the parent's memory across fork + exec (a probe started by a benchmark process that
    had just written the 3 GB DiT would report the parent's peak)."""
    return _status(os.getpid())["VmHWM"] / MB


def probe(name: str, repeats: int = 3) -> dict:
    """One measurement in this (fresh) process; HF_HOME must point at the twin's cache."""
    import torch

    import diffusers   # imported before the clock starts: the loads are timed, not the imports
    assert diffusers.__version__
    from mgd_ray.models import load_generator, load_vae, read_generator_info
    base = _peak_mb()
    t0 = time.perf_counter()
    if name == "preflight":
        info = read_generator_info(DIT_ID, VAE_ID)
        return {"seconds": round(time.perf_counter() - t0, 2), "peak_rss_mb": round(_peak_mb(), 1),
                "peak_rss_before_mb": round(base, 1), "transformer_sha256": info.transformer_sha256,
                "vae_sha256": info.vae_sha256}
    if name == "load_vae":
        vae, info = load_vae(DIT_ID, VAE_ID)
        return {"seconds": round(time.perf_counter() - t0, 2), "peak_rss_mb": round(_peak_mb(), 1),
                "peak_rss_before_mb": round(base, 1), "vae_params": sum(p.numel() for p in vae.parameters())}
    if name == "generator":
        dit, vae, info = load_generator(DIT_ID, VAE_ID)
        rec = {"load_seconds": round(time.perf_counter() - t0, 2), "load_peak_rss_mb": round(_peak_mb(), 1),
               "peak_rss_before_mb": round(base, 1), "transformer_sha256": info.transformer_sha256,
               "vae_sha256": info.vae_sha256, "dit_params": sum(p.numel() for p in dit.parameters()),
               # diffusers' ada_norm_zero blocks each hold their own class + timestep embedding
               "dit_params_in_block_embeddings": sum(p.numel() for n, p in dit.named_parameters() if ".norm1.emb." in n)}
        from mgd_ray.pipeline.plan.cost import forward_seconds_estimate
        from mgd_ray.pipeline.plan.flops import dit_forward_flops
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2, info.latent_channels, info.latent_size, info.latent_size, generator=g)
        t = torch.tensor([999, 500])
        y = torch.tensor([0, 500])
        times, cpu = [], []
        with torch.no_grad():
            for i in range(repeats + 1):
                s, c = time.perf_counter(), time.process_time()
                out = dit(x, timestep=t, class_labels=y).sample
                if i:
                    times.append(time.perf_counter() - s)
                    cpu.append(time.process_time() - c)
        per_image, basis = forward_seconds_estimate(info, gpu=False)
        # the cost model's CPU seconds are core-seconds: this call runs on torch_threads cores
        per_image /= max(1, torch.get_num_threads())
        basis += f", over {torch.get_num_threads()} threads"
        flops, fsrc = dit_forward_flops(info)
        med = statistics.median(times)
        rec.update(forward={
            "definition": "one DiT-XL/2 transformer call on a batch of 2 latents (2x4x32x32), float32, no_grad",
            "batch": 2, "torch_threads": torch.get_num_threads(), "output_shape": list(out.shape),
            "seconds": [round(s, 3) for s in times], "median_seconds": round(med, 3),
            # CPU seconds of this process (all threads): what other processes on a shared machine inflate less
            "cpu_seconds": [round(c, 3) for c in cpu], "median_cpu_seconds": round(statistics.median(cpu), 3),
            "predicted_seconds": round(2 * per_image, 3), "predicted_basis": basis,
            "flops_per_image": flops, "flops_source": fsrc,
            "measured_gflop_per_s": round(2 * flops / med / 1e9, 1),
            "predicted_over_measured": round(2 * per_image / med, 2)},
            peak_rss_mb=round(_peak_mb(), 1))
        return rec
    raise SystemExit(f"unknown probe {name!r}")


def warm_page_cache(hf_home: Path):
    for f in sorted((Path(hf_home) / "hub").rglob("blobs/*")):
        with open(f, "rb") as fh:
            while fh.read(1 << 24):
                pass


def run_probe(name: str, hf_home: Path, repeats: int = 3) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.fullsize_twin", "--probe", name, "--forward-repeats", str(repeats)]
    r = subprocess.run(cmd, cwd=REPO, env=hf_env(hf_home), capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        raise RuntimeError(f"probe {name} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# ---- the whole benchmark -------------------------------------------------------------------------
def prepare(out: Path, train_per_class: int = 4, test_per_class: int = 1, classes: int = 2) -> dict:
    """The models in the hub cache and the 256-px images; -> {hf_home, data_root, wnids, models}."""
    from benchmarks.imagenet_twin import twin_wnids, write_imagefolder
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    models = write_models(out / "hf")
    wnids = twin_wnids(classes)
    data = out / "imagefolder"
    if not data.is_dir():
        write_imagefolder(data, wnids, train_per_class, test_per_class, image_size=IMAGE_SIZE)
    return {"hf_home": out / "hf", "data_root": data, "wnids": wnids, "models": models}


def rows_for(rec: dict) -> list[dict]:
    m, j, pr = rec["models"], rec["job"], rec["probes"]
    g = pr["generator"]
    fw = g["forward"]
    gb = 1e9
    rows = [
        {"what": "DiT-XL/2-256 (random weights, published config)",
         "value": f"{m['dit_params'] / 1e6:.1f} M params (of which {g['dit_params_in_block_embeddings'] / 1e6:.1f} M "
                  f"in the per-block class + timestep embeddings of diffusers' ada_norm_zero blocks), "
                  f"{m['dit_weights_bytes'] / gb:.2f} GB safetensors ({m['dtype']})"},
        {"what": "sd-vae-ft-mse (random weights, published config)",
         "value": f"{m['vae_params'] / 1e6:.1f} M params, {m['vae_weights_bytes'] / gb:.3f} GB safetensors"},
        {"what": "job: jobs/imagenet1k.yaml, 2 wnids, IPC 1, 2 steps", "value": f"status {j['status']} (exit {j['rc']}), "
                                                                                f"{j['wall_seconds']} s wall"},
        {"what": "driver peak RSS (python -m mgd_ray.distill)", "value": f"{j['driver_peak_rss_mb']} MB"},
    ]
    if ISOLATED_KIND in j["processes"]:
        v = j["processes"][ISOLATED_KIND]
        rows.append({"what": f"peak RSS, {ISOLATED_KIND}, ended before the first stage",
                     "value": f"{v['peak_rss_mb']} MB"})
    for kind, v in j["processes"].items():
        if kind.startswith("ray::") and kind != "ray::IDLE":
            rows.append({"what": f"peak RSS, {kind} ({v['processes']} process(es))", "value": f"{v['peak_rss_mb']} MB"})
    for stage, s in j["timings"].items():
        rows.append({"what": f"stage time: {stage}", "value": f"{s} s"})
    rows += [
        {"what": "preflight's model facts (read_generator_info: configs + weight-file hashes), as the driver's "
                 "child process reads them",
         "value": f"{pr['preflight']['seconds']} s, peak RSS {pr['preflight']['peak_rss_mb']} MB "
                  f"({pr['preflight']['peak_rss_before_mb']} MB after imports)"},
        {"what": "encoder actor's load (load_vae)",
         "value": f"{pr['load_vae']['seconds']} s, peak RSS {pr['load_vae']['peak_rss_mb']} MB"},
        {"what": "generator actor's load (load_generator, fp32; the preflight before this change)",
         "value": f"{g['load_seconds']} s, peak RSS {g['load_peak_rss_mb']} MB at load (weights memory-mapped, "
                  f"not yet touched); {g['peak_rss_mb']} MB after the forwards below"},
        {"what": f"DiT-XL/2 forward, batch 2, fp32, {fw['torch_threads']} threads "
                 f"({len(fw['seconds'])} after a warm-up)",
         "value": f"median {fw['median_seconds']} s ({fw['measured_gflop_per_s']} GFLOP/s), min {min(fw['seconds'])} s, "
                  f"all {fw['seconds']}; CPU time per call (both threads) median {fw['median_cpu_seconds']} s"},
        {"what": "same forward, the dry run's cost model (forward_seconds_estimate x 2)",
         "value": f"{fw['predicted_seconds']} s predicted ({fw['predicted_over_measured']}x the measurement)"},
    ]
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("out/fullsize-twin"))
    ap.add_argument("--train-per-class", type=int, default=4)
    ap.add_argument("--encode-batch", type=int, default=2)
    ap.add_argument("--forward-repeats", type=int, default=5)
    ap.add_argument("--probe", help=argparse.SUPPRESS)
    ap.add_argument("--report-dir", type=Path, default=None, help="default benchmarks/reports")
    a = ap.parse_args(argv)
    if a.probe:
        print(json.dumps(probe(a.probe, a.forward_repeats)))
        return
    t0 = time.time()
    mach = machine()
    prep = prepare(a.out, a.train_per_class)
    print(f"models in {prep['hf_home']} ({prep['models']['dit_weights_bytes'] / 1e9:.2f} GB DiT); running the job")
    job = run_job_measured(a.out.resolve(), prep["data_root"], prep["wnids"], prep["hf_home"], a.encode_batch)
    if job["status"] != "complete":       # no report from a run that did not finish
        print("\n".join(job["log_tail"]))
        raise SystemExit(f"the job did not complete (exit {job['rc']}, status {job['status']}); "
                         f"see {a.out / 'job.log'}; no report written")
    warm_page_cache(prep["hf_home"])      # every probe reads the weight files warm, none pays the first read
    probes = {name: run_probe(name, prep["hf_home"], a.forward_repeats) for name in ("preflight", "load_vae", "generator")}
    rec = {"command": f"python -m benchmarks.fullsize_twin --out {relative_to_repo(a.out)} --train-per-class "
                      f"{a.train_per_class} --encode-batch {a.encode_batch} --forward-repeats {a.forward_repeats}",
           "machine": mach, "job_file": "jobs/imagenet1k.yaml",
           "overrides": job_overrides(Path("<OUT>/imagefolder"), prep["wnids"], Path("<OUT>/job"), a.encode_batch),
           "wnids": prep["wnids"], "train_per_class": a.train_per_class, "image_size": IMAGE_SIZE,
           "models": {k: v for k, v in prep["models"].items() if k != "spec"},
           "job": {k: v for k, v in job.items() if k != "log_tail"}, "probes": probes,
           "benchmark_seconds": round(time.time() - t0, 1),
           "loadavg_at_end": open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else None}
    rows = rows_for(rec)
    table = md_table(rows, ["what", "value"])
    print(table)
    md = ["# Full-size twin: jobs/imagenet1k.yaml through the real model layout, on CPU",
          "", f"`{rec['command']}` ({mach['cpu_count']} CPUs, torch {mach['torch']}, {mach['date']})", "",
          "DiT-XL/2-256 and sd-vae-ft-mse at their published sizes with random weights, in a hub cache under "
          "their real repo ids, loaded with HF_HUB_OFFLINE=1. The job is jobs/imagenet1k.yaml with "
          "only these overrides: " + ", ".join(f"`{o}`" for o in rec["overrides"]) + ".", "", table, "",
          "Peak RSS is the kernel's high-water mark (VmHWM) of each process, read every 0.25 s while the job ran; "
          "per kind, the largest read while a process bore that Ray title (a task worker's mark includes what it "
          "ran before). The loads and the forward were measured afterwards, each in a fresh process, with the "
          "weight files already in the page cache. The forward is one transformer call on a batch of 2 latents "
          "(no CFG doubling), float32, torch.no_grad, after one warm-up call. "
          f"Predicted: {rec['probes']['generator']['forward']['predicted_basis']}. "
          f"This machine is shared: load average {' / '.join(mach['loadavg_at_start'] or [])} (1 / 5 / 15 min) "
          f"at the start, {' / '.join(rec['loadavg_at_end'] or [])} at the end; timings vary with it."]
    write_report("fullsize_twin", rec, "\n".join(md), a.report_dir)
    print(f"wrote {(a.report_dir or Path('benchmarks/reports')) / 'fullsize_twin.json'} and .md")


if __name__ == "__main__":
    main()
