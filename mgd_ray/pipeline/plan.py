"""The ``--dry-run`` plan: stages, classes, images, work units, resources, forward passes and a
time estimate, computed without running anything."""

from __future__ import annotations

from ..config import JobConfig
from .units import make_units


def plan(job: JobConfig, source, info, stages) -> dict:
    n_train = source.num_rows("train")
    C = len(source.classes)
    ipc = job.generate.ipc
    S = len(job.generate.seeds)
    units = make_units(job.generate.seeds, range(C), source.classes.names, ipc, job.generate.targets_per_unit)
    steps = job.sampler.steps
    cfg_mult = 2 if job.sampler.cfg_scale != 1.0 else 1
    fwd = C * ipc * S * steps * cfg_mult if job.generative else 0
    from .evaluate import make_trials
    trials = make_trials(job) if job.evaluate.enabled else []
    p = {
        "job": job.name, "method": job.method, "stages": stages,
        "classes": C, "images_to_encode": n_train, "generation_seeds": S, "ipc": ipc,
        "images_to_generate": C * ipc * S, "work_units": len(units),
        "dit_forward_passes_per_image": steps * cfg_mult if job.generative else 0,
        "dit_forward_passes": fwd, "dit_forward_batched_calls": -(-fwd // (job.generate.batch_size * cfg_mult))
        if fwd else 0,
        "resources": {
            "encode": f"{job.encode.min_actors}-{job.encode.max_actors} actors x ({job.encode.num_cpus} CPU, "
                      f"{job.encode.num_gpus} GPU), batch {job.encode.batch_size}",
            "coreset": "Ray tasks, 1 CPU each, classes split across them",
            "generate": f"{job.generate.num_actors} actors x ({job.generate.num_cpus} CPU, "
                        f"{job.generate.num_gpus} GPU), batch {job.generate.batch_size}",
            "evaluate": f"1 TorchTrainer, {job.evaluate.num_workers} workers x ({job.evaluate.cpus_per_worker} CPU, "
                        f"{job.evaluate.gpus_per_worker} GPU), {len(trials)} trials",
        },
        "model": {"generator": job.model.generator, "latent": [info.latent_channels, info.latent_size,
                                                                info.latent_size], "classes": info.num_classes},
    }
    p["estimate"] = estimate(job, info, fwd)
    return p


def estimate(job: JobConfig, info, fwd: int) -> dict:
    """Time estimate for generation from a stated per-forward cost (see README: Dry run)."""
    from ..bench.throughput import forward_seconds_estimate
    per_fwd, source = forward_seconds_estimate(info, job.generate.num_gpus > 0, job.generate.batch_size)
    actors = max(1, job.generate.num_actors)
    secs = fwd * per_fwd / actors
    return {"seconds_per_forward_per_image": per_fwd, "basis": source,
            "generate_wall_seconds": round(secs, 1), "generate_device_hours": round(fwd * per_fwd / 3600, 2)}


def dry_run_plan(job: JobConfig, stages) -> dict:
    """The plan printed by ``--dry-run`` (runs the cheap preflight: data index + model config)."""
    from ..distill import preflight
    source, info = preflight(job)
    return plan(job, source, info, stages)
