"""The ``--dry-run`` plan: stages, classes, images, work units, resources, forward passes and a
GPU-hour estimate, computed without running anything.

``dry_run_plan`` works at ImageNet scale on a laptop with neither the data nor the model at
hand. It first tries the real thing, then falls back, and says which it used:

- data: list the source (``num_rows``). When the source cannot be listed (an ``s3://`` bucket
  you cannot reach, no credentials) AND the job's classes are ImageNet-1K wnids, use the known
  ILSVRC-2012 split sizes (``mgd_ray.known``). Any other data error (an unknown class, a class
  directory missing from a reachable dataset) is raised as before.
- model: read ``transformer/config.json`` and the VAE's ``config.json`` from a local directory
  or from the Hugging Face cache (no weights are loaded, nothing is downloaded), else take the
  published configs from ``mgd_ray.known``; a model that is neither raises ``ModelError``
  with the fix.
- the label-order preflight (``pipeline.labels.check_label_order``) runs on the result either way.

The estimate states every throughput it assumes and where it comes from: the DiT, the VAE and
the evaluation students from FLOP counts at a stated utilisation of a stated peak (all in
``mgd_ray.known``); nothing is read from a benchmark report.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import JobConfig
from .labels import check_label_order, generator_labels
from .units import make_units

log = logging.getLogger("mgd_ray")

PROTOCOL_EVAL_PX = 224          # evaluation.md: 224 px for the ImageNet family
N_EVALS = 100                   # periodic test evaluations per trial (TrainConfig.n_evals)


# ---------------------------------------------------------------------------------------------
@dataclass
class DataFacts:
    """What the plan needs from a data source, and where each number came from."""

    classes: Any                   # a ClassList (names, name, dit_label ...)
    train: int
    test: int
    train_exact: bool = True
    test_exact: bool = True
    train_min: int | None = None
    basis: str = ""
    fallback_reason: str | None = None

    def train_text(self) -> str:
        if self.train_exact:
            return f"{self.train:,}"
        return f"at most {self.train:,} (between {self.train_min:,} and {self.train:,})"


def _source_facts(source) -> DataFacts:
    n_train, n_test = source.num_rows("train"), source.num_rows("test")
    where = getattr(source, "root", None) or getattr(source, "kind", "the source")
    return DataFacts(classes=source.classes, train=n_train, test=n_test,
                     basis=f"listed from {where}")


def _selected_classes(job: JobConfig):
    """The class selection resolved without touching the data, or None when that needs a listing.

    Unknown class names raise ``DataError`` here, exactly as the source would.
    """
    from ..data.base import resolve_selection
    from ..data.classlists import imagenet1k, is_class_list_name, load_class_list
    d = job.data
    if d.class_list is not None:
        full = load_class_list(d.class_list)
    elif isinstance(d.classes, str) and (is_class_list_name(d.classes) or d.classes.endswith(".txt")):
        full = load_class_list(d.classes)
    elif isinstance(d.classes, (list, tuple)) and all(str(c) in imagenet1k().names for c in d.classes):
        full = imagenet1k()
    else:
        return None
    return resolve_selection(full, d.classes)


def _root_reachable(job: JobConfig) -> bool:
    """True when ``<data.root>/train`` can be seen (then a data error is a real data problem)."""
    if not job.data.root:
        return False
    try:
        import fsspec
        fs, base = fsspec.core.url_to_fs(str(job.data.root), **dict(job.data.storage_options or {}))
        return bool(fs.isdir(base.rstrip("/") + "/train"))
    except Exception:  # noqa: BLE001 - unreachable, no credentials, no such bucket ...
        return False


def _known_data_facts(job: JobConfig, reason: str) -> DataFacts | None:
    from .. import known
    if job.data.source not in ("imagefolder", "parquet"):
        return None
    classes = _selected_classes(job)
    if classes is None:
        return None
    from ..data.classlists import imagenet1k
    ref = imagenet1k().names
    if not all(n in ref for n in classes.names):
        return None
    C = len(classes)
    f = known.imagenet_split_facts(C)
    train, train_min, train_exact = f.train, f.train_min, f.train_exact
    lim = job.data.limit_per_class
    if lim is not None:
        train = C * min(lim, known.IMAGENET_TRAIN_PER_CLASS_MAX)
        train_min = C * min(lim, known.IMAGENET_TRAIN_PER_CLASS_MIN)
        train_exact = lim <= known.IMAGENET_TRAIN_PER_CLASS_MIN
    test = f.test
    tlim = job.data.test_limit_per_class
    if tlim is not None:
        test = C * min(tlim, known.IMAGENET_VAL_PER_CLASS)
    return DataFacts(classes=classes, train=train, test=test, train_exact=train_exact, test_exact=True,
                     train_min=train_min, basis=f"known split sizes: {f.source}", fallback_reason=reason)


def data_facts(job: JobConfig) -> DataFacts:
    """List the source; fall back to known ImageNet split sizes when it cannot be reached."""
    from ..data import open_source
    try:
        return _source_facts(open_source(job.data))
    except Exception as e:  # noqa: BLE001 - decided below: fall back, or raise the original error
        reason = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        if _root_reachable(job):
            raise  # the data is there and something is wrong with it: say so
        facts = _known_data_facts(job, reason)
        if facts is None:
            raise
        log.info("dry run: data source %s cannot be listed (%s); using %s", job.data.root, reason, facts.basis)
        return facts


# ---------------------------------------------------------------------------------------------
def _hub_cache_dir() -> str:
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    try:
        from huggingface_hub import constants
        return constants.HF_HUB_CACHE
    except Exception:  # pragma: no cover
        return os.path.expanduser("~/.cache/huggingface/hub")


def _read_json(p: Path) -> dict:
    return json.loads(Path(p).read_text())


def _config_file(spec: str, subfolder: str | None) -> tuple[dict | None, str]:
    """(config dict or None, where) for ``spec`` = a prior/local dir or a hub id (cache only)."""
    from ..models import resolve_model_path
    path, local = resolve_model_path(spec)
    if local:
        d = Path(path)
        for cand in ([d / subfolder / "config.json"] if subfolder else []) + [d / "config.json"]:
            if cand.is_file():
                return _read_json(cand), f"config file {cand}"
        return None, f"no config.json under {d}"
    try:
        from huggingface_hub import try_to_load_from_cache
        fname = f"{subfolder}/config.json" if subfolder else "config.json"
        hit = try_to_load_from_cache(spec, fname, cache_dir=_hub_cache_dir())
    except Exception:  # noqa: BLE001 - an id the hub client rejects is simply "not cached"
        hit = None
    if isinstance(hit, str) and os.path.isfile(hit):
        return _read_json(Path(hit)), f"config file in the Hugging Face cache ({hit})"
    return None, f"not in the Hugging Face cache ({_hub_cache_dir()})"


def model_facts(job: JobConfig):
    """Model facts from config files (local dir / HF cache), else the known table; never downloads."""
    from .. import known
    from ..models import ModelError, resolve_model_path
    gen, vae = job.model.generator, job.model.vae
    tc, twhere = _config_file(gen, "transformer")
    if vae:
        vae_local = resolve_model_path(vae)[1]
        vc, vwhere = _config_file(vae, "vae" if vae_local else None)
    else:
        vc, vwhere = _config_file(gen, "vae")
    if tc is None and gen in known.TRANSFORMER_CONFIGS:
        tc, twhere = known.TRANSFORMER_CONFIGS[gen], "known table (mgd_ray/known.py)"
    vkey = vae or gen
    if vc is None and vkey in known.VAE_CONFIGS:
        vc, vwhere = known.VAE_CONFIGS[vkey], "known table (mgd_ray/known.py)"
    if tc is None or vc is None:
        missing = gen if tc is None else (vae or f"{gen} (vae/)")
        raise ModelError(
            f"cannot plan: model {missing!r} is not a local directory, is {twhere if tc is None else vwhere}, "
            f"and is not one of the known models ({', '.join(sorted(known.TRANSFORMER_CONFIGS))}). Fix: download it "
            f"once (`hf download {missing}`), or set model.allow_download=true so the real run may fetch it, or point "
            f"model.generator at a local directory in the diffusers DiT layout (transformer/, vae/).")
    path = resolve_model_path(gen)[0]
    src = gen if not vae else f"{gen} + {vae}"
    return known.facts_from_configs(tc, vc, source=src, path=path,
                                    facts_from=f"transformer: {twhere}; vae: {vwhere}")


# ---------------------------------------------------------------------------------------------
def _effective_batch(job: JobConfig) -> int:
    """Images per DiT call: a unit holds one class's slice of targets, so it caps the batch."""
    g = job.generate
    return max(1, min(g.batch_size, g.targets_per_unit, g.ipc))


def _vae_flops(info) -> tuple[float, float, str] | None:
    """(encode, decode) FLOPs per image and the source, from the VAE config."""
    from .. import known
    blocks = tuple(getattr(info, "vae_block_out_channels", ()) or ())
    layers = getattr(info, "vae_layers_per_block", 0)
    if blocks == (128, 256, 512, 512) and layers == 2:
        scale = (info.image_size / 256.0) ** 2   # convolutions dominate: FLOPs ~ pixels
        note = "" if info.image_size == 256 else f", scaled by pixels to {info.image_size} px"
        return known.SD_VAE_ENCODE_FLOPS_256 * scale, known.SD_VAE_DECODE_FLOPS_256 * scale, \
            known.SD_VAE_FLOPS_SOURCE + note
    vc = getattr(info, "vae_config", None)
    if not vc:
        return None
    try:
        import torch
        from diffusers import AutoencoderKL
        from torch.utils.flop_counter import FlopCounterMode
        cfg = {k: v for k, v in vc.items() if not k.startswith("_")}
        with torch.device("meta"):
            vae = AutoencoderKL.from_config(cfg)
        s, c = info.image_size, info.image_channels
        with torch.no_grad():
            with FlopCounterMode(display=False) as fc:
                vae.encode(torch.zeros(2, c, s, s, device="meta")).latent_dist.mean
            enc = fc.get_total_flops() / 2
            with FlopCounterMode(display=False) as fc:
                vae.decode(torch.zeros(2, info.latent_channels, info.latent_size, info.latent_size,
                                       device="meta")).sample
            dec = fc.get_total_flops() / 2
        return float(enc), float(dec), "counted with torch FlopCounterMode on this VAE's config (meta device)"
    except Exception as e:  # noqa: BLE001 - an estimate, never a failure
        log.info("dry run: could not count VAE FLOPs (%s)", e)
        return None


def _student_flops(name: str, channels: int, num_classes: int, size: int) -> float | None:
    """Forward FLOPs per image of an evaluation student (counted on the meta device)."""
    try:
        import torch
        from torch.utils.flop_counter import FlopCounterMode

        from ..eval.students import build_student
        with torch.device("meta"):
            m = build_student(name, channels, num_classes, size).eval()
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            m(torch.zeros(2, channels, size, size, device="meta"))
        return fc.get_total_flops() / 2
    except Exception as e:  # noqa: BLE001
        log.info("dry run: could not count FLOPs of student %s (%s)", name, e)
        return None


def dit_forward_flops(info) -> tuple[float, str]:
    """FLOPs (multiply + add) of one DiT forward for one image, and where the number comes from."""
    from .. import known
    if info.latent_size == 32 and info.num_classes == 1000 and info.latent_channels == 4:
        return known.DIT_XL_2_256_FLOPS, known.DIT_FLOPS_SOURCE
    tokens = (info.latent_size // 2) ** 2
    return 2.0 * known.SMALL_DIT_PARAMS * tokens, f"2 x ~{known.SMALL_DIT_PARAMS:.0e} parameters x {tokens} tokens"


def forward_seconds_estimate(info, gpu: bool) -> tuple[float, str]:
    """Seconds per DiT forward per image from the FLOP count at a stated throughput."""
    from .. import known
    flops, src = dit_forward_flops(info)
    if gpu:
        peak = known.H100_SXM_BF16_DENSE
        return flops / (known.GPU_UTILISATION * peak), (f"{src}; at {known.GPU_UTILISATION:.0%} (assumed) of "
                                                         f"{peak / 1e12:.0f} TFLOP/s bf16 ({known.GPU_PEAK_SOURCE})")
    return flops / known.CPU_FLOPS, f"{src}; at an assumed {known.CPU_FLOPS / 1e9:.0f} GFLOP/s CPU"


def estimate(job: JobConfig, info, fwd: int, data: DataFacts | None = None) -> dict:
    """GPU-hours per stage from stated throughputs (see the module docstring)."""
    from .. import known
    gpu_gen = job.generate.num_gpus > 0
    bs = _effective_batch(job)
    per_fwd, basis = forward_seconds_estimate(info, gpu_gen)
    actors = max(1, job.generate.num_actors)
    gen_s = fwd * per_fwd
    est: dict = {
        # kept for callers of the previous plan format
        "seconds_per_forward_per_image": per_fwd, "basis": basis,
        "generate_wall_seconds": round(gen_s / actors, 1), "generate_device_hours": round(gen_s / 3600, 3),
    }
    vae_peak = known.H100_SXM_BF16_DENSE * known.GPU_UTILISATION
    stages: dict = {}
    stages["generate_dit"] = {"forward_passes": fwd, "seconds_per_forward_per_image": per_fwd,
                              "effective_batch_images": bs, "effective_batch_rows_with_cfg":
                                  bs * (2 if job.sampler.cfg_scale != 1.0 else 1),
                              "device_hours": round(gen_s / 3600, 3), "throughput_basis": basis}
    if bs < 32 and gpu_gen:
        stages["generate_dit"]["note"] = (
            f"a work unit holds one class's targets, so a DiT call sees at most {bs} images "
            f"(generate.batch_size {job.generate.batch_size} cannot be reached); expect GPU utilisation below "
            "the assumed one at this batch")
    vf = _vae_flops(info)
    n_images = 0
    if job.generative:
        n_images = len(data.classes) * job.generate.ipc * len(job.generate.seeds) if data else 0
    n_enc = data.train if data else 0
    if vf is not None:
        enc_f, dec_f, vsrc = vf
        dev_enc = job.encode.num_gpus > 0
        rate_enc = vae_peak if dev_enc else known.CPU_FLOPS
        rate_dec = vae_peak if gpu_gen else known.CPU_FLOPS
        stages["encode_vae"] = {"images": n_enc, "gflop_per_image": round(enc_f / 1e9, 3),
                                "device_hours": round(n_enc * enc_f / rate_enc / 3600, 3),
                                "throughput_basis": (f"{vsrc}; at {known.GPU_UTILISATION:.0%} of "
                                                     f"{known.H100_SXM_BF16_DENSE / 1e12:.0f} TFLOP/s bf16 "
                                                     f"({known.GPU_PEAK_SOURCE})") if dev_enc else
                                f"{vsrc}; at an assumed {known.CPU_FLOPS / 1e9:.0f} GFLOP/s CPU",
                                "note": "VAE compute only; JPEG decoding and resizing run on CPUs in parallel"}
        stages["generate_decode"] = {"images": n_images, "gflop_per_image": round(dec_f / 1e9, 3),
                                     "device_hours": round(n_images * dec_f / rate_dec / 3600, 3)}
    ev = _evaluation_estimate(job, info, data) if (job.evaluate.enabled and data) else None
    if ev:
        stages["evaluate"] = ev
    est["stages"] = stages
    total = sum(v.get("device_hours", 0.0) for v in stages.values())
    est["total_device_hours"] = round(total, 2)
    est["device"] = "GPU" if (gpu_gen or job.encode.num_gpus > 0 or job.evaluate.gpus_per_worker > 0) else "CPU"
    est["generate_wall_hours_with_actors"] = {"actors": actors, "hours": round(gen_s / actors / 3600, 3)}
    return est


def _evaluation_estimate(job: JobConfig, info, data: DataFacts) -> dict | None:
    from .. import known
    from ..eval.train import eval_epochs, protocol_epochs
    from .evaluate import make_trials
    C = len(data.classes)
    ipc = job.generate.ipc
    size = info.image_size
    note = "at the generated image size"
    if size >= PROTOCOL_EVAL_PX:
        size, note = PROTOCOL_EVAL_PX, (f"at the protocol's {PROTOCOL_EVAL_PX} px for the ImageNet family (the current "
                                         "code trains at the stored image size; see cluster/README.md)")
    epochs = job.evaluate.epochs or protocol_epochs(ipc, C, size)
    trials = make_trials(job)
    n_evals = len(eval_epochs(epochs, int(getattr(job.evaluate, "n_evals", N_EVALS) or N_EVALS)))
    gpu = job.evaluate.gpus_per_worker > 0
    rate = known.H100_SXM_TF32_DENSE * known.STUDENT_UTILISATION if gpu else known.CPU_FLOPS
    per_student, hours = {}, 0.0
    for student in job.evaluate.students:
        f = _student_flops(student, info.image_channels, C, size)
        if f is None:
            continue
        n_trials = sum(t["student"] == student for t in trials)
        train_flops = 3 * f * epochs * C * ipc          # forward + backward ~ 3x forward
        test_flops = f * n_evals * data.test
        h = n_trials * (train_flops + test_flops) / rate / 3600
        per_student[student] = {"trials": n_trials, "gflop_forward_per_image": round(f / 1e9, 3),
                                "device_hours": round(h, 3)}
        hours += h
    basis = (f"3 x forward FLOPs x {epochs} epochs x {C * ipc:,} images + {n_evals} test passes over "
             f"{data.test:,} images, per trial; at {known.STUDENT_UTILISATION:.0%} (assumed) of "
             f"{known.H100_SXM_TF32_DENSE / 1e12:.0f} TFLOP/s TF32 ({known.GPU_PEAK_SOURCE})" if gpu else
             f"... at an assumed {known.CPU_FLOPS / 1e9:.0f} GFLOP/s CPU")
    return {"trials": len(trials), "epochs": epochs, "image_px": size, "image_px_note": note,
            "per_student": per_student, "device_hours": round(hours, 3), "throughput_basis": basis}


# ---------------------------------------------------------------------------------------------
def _model_section(job: JobConfig, info) -> dict:
    d = {"generator": job.model.generator, "vae": job.model.vae,
         "latent": [info.latent_channels, info.latent_size, info.latent_size], "classes": info.num_classes,
         "null_label": info.null_label, "image_size": info.image_size, "scaling_factor": info.scaling_factor,
         "learned_sigma": info.learned_sigma}
    d["facts_from"] = getattr(info, "facts_from", "loaded model (configs of the loaded weights)")
    return d


def _plan(job: JobConfig, data: DataFacts, info, stages) -> dict:
    C = len(data.classes)
    ipc = job.generate.ipc
    S = len(job.generate.seeds)
    units = make_units(job.generate.seeds, range(C), data.classes.names, ipc, job.generate.targets_per_unit)
    steps = job.sampler.steps
    cfg_mult = 2 if job.sampler.cfg_scale != 1.0 else 1
    per_seed = C * ipc * steps * cfg_mult if job.generative else 0
    fwd = per_seed * S
    from .evaluate import make_trials
    trials = make_trials(job) if job.evaluate.enabled else []
    labels = None
    try:
        labels = generator_labels(data.classes, info)
    except Exception:  # noqa: BLE001 - informative only
        pass
    p = {
        "job": job.name, "method": job.method, "stages": stages,
        "classes": C, "class_list": getattr(data.classes, "name", None),
        "images_to_encode": data.train, "images_to_encode_exact": data.train_exact,
        "test_images": data.test, "data_basis": data.basis,
        "generation_seeds": S, "seeds": list(job.generate.seeds), "ipc": ipc,
        "images_to_generate_per_seed": C * ipc, "images_to_generate": C * ipc * S, "work_units": len(units),
        "dit_forward_passes_per_image": steps * cfg_mult if job.generative else 0,
        "dit_forward_passes_per_seed": per_seed, "dit_forward_passes": fwd,
        "dit_forward_batched_calls": -(-fwd // (_effective_batch(job) * cfg_mult)) if fwd else 0,
        "resources": {
            "encode": f"{job.encode.min_actors}-{job.encode.max_actors} actors x ({job.encode.num_cpus} CPU, "
                      f"{job.encode.num_gpus} GPU), batch {job.encode.batch_size}",
            "coreset": "Ray tasks, 1 CPU each, classes split across them",
            "generate": f"{job.generate.num_actors} actors x ({job.generate.num_cpus} CPU, "
                        f"{job.generate.num_gpus} GPU), batch {job.generate.batch_size} "
                        f"(effective {_effective_batch(job)} images per DiT call)",
            "evaluate": f"1 TorchTrainer, {job.evaluate.num_workers} workers x ({job.evaluate.cpus_per_worker} CPU, "
                        f"{job.evaluate.gpus_per_worker} GPU), {len(trials)} trials",
        },
        "model": _model_section(job, info),
    }
    if labels is not None:
        wnid_map = info.num_classes == 1000 and hasattr(data.classes, "dit_label") and \
            getattr(data.classes, "is_wnid", False)
        p["generator_labels"] = {"first": labels[:5], "last": labels[-1],
                                 "mapping": "ImageNet-1K label of each wnid (index in the sorted imagenet1k list)"
                                 if wnid_map else "generator label = class index"}
    if data.fallback_reason:
        p["data_fallback"] = {"reason": data.fallback_reason, "note": "the source could not be listed; the counts "
                              "are the known split sizes (mgd_ray/known.py)"}
    try:
        p["estimate"] = estimate(job, info, fwd, data)
        p["summary"] = _summary(job, data, info, p)
    except Exception as e:  # noqa: BLE001 - an estimate must never stop a run
        log.warning("plan: no estimate (%s: %s)", type(e).__name__, e)
        p["estimate"] = {"basis": f"not estimated ({type(e).__name__}: {e})"}
        p["summary"] = [f"{data.train_text()} train images to encode", f"{C:,} classes",
                        f"{C * ipc * S:,} images to generate", f"{fwd:,} DiT forward passes"]
    return p


def _summary(job: JobConfig, data: DataFacts, info, p: dict) -> list[str]:
    e = p["estimate"]
    st = e["stages"]
    C, ipc, S = p["classes"], p["ipc"], p["generation_seeds"]
    cfg = " x 2 (CFG)" if job.sampler.cfg_scale != 1.0 else ""
    lines = [
        f"{data.train_text()} train images to encode ({data.basis})",
        f"{data.test:,} real test images for evaluation (the source's test split)",
        f"{C:,} classes (class list {p['class_list']})",
        f"model {job.model.generator}: latent {info.latent_channels}x{info.latent_size}x{info.latent_size}, "
        f"{info.num_classes} classes, null label {info.null_label}, learned sigma {info.learned_sigma}, "
        f"VAE scaling factor {info.scaling_factor} (from {p['model']['facts_from']})",
    ]
    if job.generative:
        lines += [
            f"{C * ipc:,} images to generate per seed (IPC {ipc} x {C:,} classes) x {S} generation seed(s) "
            f"{list(job.generate.seeds)} = {C * ipc * S:,} images",
            f"{p['dit_forward_passes_per_seed']:,} DiT forward passes per seed ({C * ipc:,} images x "
            f"{job.sampler.steps} steps{cfg}); {p['dit_forward_passes']:,} in all",
        ]
    else:
        lines.append(f"{C * ipc:,} real images selected per seed x {S} seed(s); no generation")
    g = st["generate_dit"]
    lines.append(f"DiT: {g['seconds_per_forward_per_image'] * 1e3:.3f} ms per forward per image "
                 f"[{g['throughput_basis']}] -> {g['device_hours']:.2f} device-hours; "
                 f"{e['generate_wall_hours_with_actors']['hours']:.2f} h wall on "
                 f"{e['generate_wall_hours_with_actors']['actors']} actors")
    for key, label in (("encode_vae", "VAE encode"), ("generate_decode", "VAE decode")):
        if key in st:
            lines.append(f"{label}: {st[key]['images']:,} images x {st[key]['gflop_per_image']:.1f} GFLOP "
                         f"-> {st[key]['device_hours']:.2f} device-hours")
    if "evaluate" in st:
        ev = st["evaluate"]
        lines.append(f"evaluate: {ev['trials']} trials x {ev['epochs']} epochs at {ev['image_px']} px -> "
                     f"{ev['device_hours']:.2f} device-hours [{ev['throughput_basis']}]")
    lines.append(f"total: {e['total_device_hours']:.2f} {e['device']}-hours (compute only; add node start-up, "
                 "model loading and data transfer)")
    return lines


# ---------------------------------------------------------------------------------------------
def plan(job: JobConfig, source, info, stages) -> dict:
    """The plan of a real run (the source is open and the model loaded)."""
    data = _source_facts(source)
    if not hasattr(info, "vae_config"):
        try:  # the VAE architecture for the estimate, from the same config files (cheap, offline)
            mf = model_facts(job)
            info = _InfoWithVae(info, mf)
        except Exception:  # noqa: BLE001 - the estimate then skips the VAE
            pass
    return _plan(job, data, info, stages)


class _InfoWithVae:
    """A loaded ModelInfo plus the VAE architecture fields the estimate reads."""

    def __init__(self, info, facts):
        self._info = info
        self.vae_block_out_channels = facts.vae_block_out_channels
        self.vae_layers_per_block = facts.vae_layers_per_block
        self.vae_config = facts.vae_config

    def __getattr__(self, name):
        return getattr(self._info, name)


def dry_run_plan(job: JobConfig, stages) -> dict:
    """The plan printed by ``--dry-run``: works without the data or the model being reachable."""
    data = data_facts(job)
    info = model_facts(job)
    check_label_order(data.classes, info)
    return _plan(job, data, info, stages)
