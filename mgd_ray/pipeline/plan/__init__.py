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

The estimate states every throughput it assumes and where it comes from: the DiT and the VAE
from FLOP counts at a stated utilisation of a stated peak, the evaluation students from a
ResNet-18 throughput (a published A100 figure; on CPUs the one benchmarks/eval_throughput.py
measured) scaled by FLOPs (all in ``mgd_ray.known``); nothing is read from a benchmark report at
run time (tests/test_plan.py checks known.py's CPU figures against the committed report).
"""

from __future__ import annotations

import logging

from ...config import JobConfig
from ..evaluate import make_trials
from ..labels import check_label_order, generator_labels
from ..stage import STAGES
from ..units import dit_batch_sizes, make_units
from .cost import estimate
from .data_facts import DataFacts, data_facts, source_facts
from .model_facts import model_facts
from .text import summary

log = logging.getLogger("mgd_ray")


def _model_section(job: JobConfig, info) -> dict:
    d = {"generator": job.model.generator, "vae": job.model.vae,
         "latent": [info.latent_channels, info.latent_size, info.latent_size], "classes": info.num_classes,
         "null_label": info.null_label, "image_size": info.image_size, "scaling_factor": info.scaling_factor,
         "learned_sigma": info.learned_sigma}
    d["facts_from"] = info.facts_from
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
    batches = dit_batch_sizes(units, job.generate.batch_size) if job.generative else []
    batch_mean = sum(batches) / len(batches) if batches else 0.0
    trials = [t for _, view in job.evaluations() for t in make_trials(view)] if job.evaluate.enabled else []
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
        "dit_batches_per_step": len(batches), "dit_forward_batched_calls": len(batches) * steps,
        "dit_batch_images": {"min": min(batches, default=0), "max": max(batches, default=0),
                             "mean": round(batch_mean, 2)},
        "resources": {st.name: st.placement(job, batch_mean=batch_mean, trials=len(trials)) for st in STAGES},
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
        p["estimate"] = estimate(job, info, fwd, batch_mean, data)
        p["summary"] = summary(job, data, info, p)
    except Exception as e:  # noqa: BLE001 - an estimate must never stop a run
        log.warning("plan: no estimate (%s: %s)", type(e).__name__, e)
        p["estimate"] = {"basis": f"not estimated ({type(e).__name__}: {e})"}
        p["summary"] = [f"{data.train_text()} train images to encode", f"{C:,} classes",
                        f"{C * ipc * S:,} images to generate", f"{fwd:,} DiT forward passes"]
    return p


def plan(job: JobConfig, source, info, stages) -> dict:
    """The plan of a real run (the source is open and the model loaded)."""
    return _plan(job, source_facts(source), info, stages)


def dry_run_plan(job: JobConfig, stages) -> dict:
    """The plan printed by ``--dry-run``: works without the data or the model being reachable."""
    data = data_facts(job)
    info = model_facts(job)
    check_label_order(data.classes, info)
    return _plan(job, data, info, stages)
