"""``python -m mgd_ray.distill JOB.yaml [--set k=v ...] [--dry-run] [--stages ...]``

Runs a distillation job: encode -> coreset -> generate -> evaluate, writing under
``output.dir`` (see README "Output contract"). Attaches to a running Ray cluster when there is
one (``ray job submit`` sets RAY_ADDRESS) and otherwise starts a local Ray. Every stage is
resumable: cached latents and targets are reused when their inputs match, committed shards and
finished evaluation trials are skipped.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from .config import JobConfig, dump_job
from .pipeline.store import Store, redact
from .pipeline.units import make_units

log = logging.getLogger("mgd_ray")
STAGES = ("encode", "coreset", "generate", "evaluate")


class _CurrentStdout(logging.StreamHandler):
    """Writes to whatever sys.stdout is at emit time (test runners and notebooks swap it)."""

    def __init__(self):
        super().__init__(sys.stdout)

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, _value):
        pass


def setup_logging():
    if not log.handlers:
        h = _CurrentStdout()
        h.setFormatter(logging.Formatter("%(asctime)s [mgd_ray] %(message)s", "%H:%M:%S"))
        log.addHandler(h)
        log.setLevel(logging.INFO)
        log.propagate = False


def versions() -> dict:
    import importlib.metadata as md
    out = {"python": platform.python_version()}
    for p in ("torch", "ray", "diffusers", "faiss-cpu", "faiss-gpu-cu12", "pyarrow", "numpy", "scikit-learn"):
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            pass
    return out


def git_commit() -> str:
    from .prior import git_commit as gc
    return gc()


def parse_stages(stages: str | None) -> list[str]:
    if not stages:
        return list(STAGES)
    want = [s.strip() for s in stages.split(",") if s.strip()]
    bad = [s for s in want if s not in STAGES]
    if bad:
        from .config import JobError
        raise JobError(f"unknown stage(s) {bad}; choose from {', '.join(STAGES)} (comma-separated)")
    return want


# ---------------------------------------------------------------------------------------------
def preflight(job: JobConfig):
    """Fail before any heavy work: data source, class list vs the generator, model loading."""
    from .data import open_source
    from .models import load_generator
    source = open_source(job.data)
    n_train = source.num_rows("train")
    if n_train == 0:
        from .data import DataError
        raise DataError(f"data source {job.data.source!r} has no train rows for the chosen classes")
    info = None
    if job.generative or True:  # the VAE encodes every method's latents
        _, _, info = load_generator(job.model.generator, job.model.vae, allow_download=job.model.allow_download)
        check_label_order(job, source, info)
    if job.evaluate.enabled:
        from .pipeline.evaluate import load_job_teacher
        load_job_teacher(job)   # soft-label: the teacher must exist before hours of generation
    return source, info


def check_label_order(job: JobConfig, source, info):
    """The class list must map onto the generator's label ids (e.g. ImageNet-1K sorted wnids)."""
    from .models import ModelError
    n = len(source.classes)
    labels = generator_labels(source, info)
    if max(labels) >= info.num_classes:
        raise ModelError(f"class list {source.classes.name!r} maps to generator label {max(labels)}, but the "
                         f"generator has {info.num_classes} classes; use the class list the model was trained "
                         f"with (e.g. imagenet1k sorted wnids for DiT-XL/2)")
    prior_json = Path(info.path) / "prior.json"
    if prior_json.is_file():
        expected = json.loads(prior_json.read_text()).get("classes")
        if expected and [expected[i] for i in labels] != list(source.classes.names):
            raise ModelError(f"label order mismatch: the data's classes {list(source.classes.names)[:5]}... do not "
                             f"match the prior's {expected[:5]}...; the prior was trained on another class list")
    if n == 0:
        raise ModelError("no classes selected")


def generator_labels(source, info) -> list[int]:
    """Generator label id of each data label: the wnid's index in ImageNet-1K for 1000-class models."""
    cl = source.classes
    if info.num_classes == 1000 and hasattr(cl, "dit_label"):
        return [int(cl.dit_label(n)) for n in cl.names]  # a DataError names the class and the fix
    return list(range(len(cl)))


# ---------------------------------------------------------------------------------------------
def absolute_output(job: JobConfig) -> JobConfig:
    """A relative local ``output.dir`` becomes absolute: Ray workers (Train workers especially)
    run in other working directories, so every stage must see the same absolute path."""
    d = job.output.dir
    if "://" in d or os.path.isabs(d):
        return job
    return job.model_copy(update={"output": job.output.model_copy(update={"dir": os.path.abspath(d)})})


def run_job(job: JobConfig, stages: list[str] | None = None, dry_run: bool = False) -> dict:
    setup_logging()
    job = absolute_output(job)
    stages = stages or list(STAGES)
    t_start = time.time()
    from .pipeline.plan import dry_run_plan, plan
    if dry_run:
        return {"plan": dry_run_plan(job, stages)}
    source, info = preflight(job)
    p = plan(job, source, info, stages)
    store = Store(job.output.dir, job.output.storage_options)
    store.makedirs()
    store.write_bytes(dump_job_redacted(job).encode(), "config.yaml")
    manifest = base_manifest(job, source, info)
    if store.exists("manifest.json"):
        old = store.read_json("manifest.json")
        manifest["timings"] = old.get("timings", {})
        manifest["runs"] = old.get("runs", 0)
    manifest["runs"] = manifest.get("runs", 0) + 1
    manifest["status"] = "running"
    store.write_json(manifest, "manifest.json")
    log.info(f"job {job.name}: {p['classes']} classes, {p['images_to_encode']} train images, "
             f"ipc {p['ipc']} x {p['generation_seeds']} seed(s) -> {p['images_to_generate']} images, "
             f"{p['work_units']} units; output {store.uri()}")

    from .pipeline import runner
    runner.init_ray(job)
    data_key = {"data": json.loads(json.dumps(redact(job.data.model_dump(mode="json")))),
                "model": [info.transformer_sha256, info.vae_sha256, info.path], "encode": {
                    "image_size": job.encode.image_size, "preprocess": job.encode.preprocess}}
    labels = list(range(len(source.classes)))
    timings = manifest.setdefault("timings", {})

    def timed(name, fn):
        t0 = time.time()
        r = fn()
        timings[name] = round(time.time() - t0, 2)
        store.write_json(manifest, "manifest.json")
        return r

    if "encode" in stages or "coreset" in stages or "generate" in stages:
        manifest["encode"] = timed("encode", lambda: runner.run_encode(job, store, source, data_key, info.image_size))
    targets = None
    if any(s in stages for s in ("coreset", "generate")):
        ckey = dict(data_key, coreset=job.coreset.model_dump(mode="json"), method=job.method,
                    ipc=job.generate.ipc, seeds=list(job.generate.seeds))
        targets = timed("coreset", lambda: runner.run_coreset(job, store, labels, ckey))
    units = make_units(job.generate.seeds, labels, source.classes.names, job.generate.ipc,
                       job.generate.targets_per_unit, generator_labels(source, info))
    if "generate" in stages:
        runner.attach_targets(units, targets)
        manifest["generate"] = timed("generate", lambda: runner.run_generate(job, store, units))
        if job.output.preview:
            write_previews(store, job, source)
    done_units = set(store.ls("shards", suffix=".parquet"))
    complete = all(u.shard in done_units for u in units)
    manifest["counts"] = {"classes": len(labels), "ipc": job.generate.ipc, "generation_seeds": len(job.generate.seeds),
                          "units": len(units), "units_committed": sum(u.shard in done_units for u in units),
                          "images": len(units) and sum(u.count for u in units if u.shard in done_units)}
    if "evaluate" in stages and job.evaluate.enabled and complete:
        from .pipeline.evaluate import summarise
        with tempfile.TemporaryDirectory(prefix="mgd-train-") as tmp:
            records = timed("evaluate", lambda: runner.run_evaluate(job, store, source, tmp))
        results = summarise(job, records)
        if job.evaluate.metrics:
            results["distribution"] = timed("metrics", lambda: distribution_metrics(job, store, source, info))
        store.write_json(results, "results.json")
        manifest["results_summary"] = {k: {s: {m: round(c[m], 4) for m in ("final_acc_mean", "best_acc_mean")}
                                           for s, c in v.items()} for k, v in results["results"].items()}
    evaluated = (not job.evaluate.enabled) or store.exists("results.json")
    manifest["status"] = "complete" if (complete and evaluated and set(stages) == set(STAGES)) else "partial"
    manifest["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    timings["total_last_run"] = round(time.time() - t_start, 2)
    store.write_json(manifest, "manifest.json")
    log.info(f"job {job.name}: status {manifest['status']}; outputs under {store.uri()}")
    if "results_summary" in manifest:
        for k, v in manifest["results_summary"].items():
            for s, m in v.items():
                log.info(f"  {k:12s} {s:10s} final {100 * m['final_acc_mean']:.1f}%  best {100 * m['best_acc_mean']:.1f}%")
    return manifest


def dump_job_redacted(job: JobConfig) -> str:
    import yaml
    return yaml.safe_dump(redact(job.model_dump(mode="json")), sort_keys=False)


def base_manifest(job: JobConfig, source, info) -> dict:
    from .method.guidance import GuidanceParams  # noqa: F401  (import check)
    from .pipeline.stages import coreset_kwargs, guidance_params
    return {
        "name": job.name, "status": "running",
        "config": redact(job.model_dump(mode="json")),
        "method": {
            "name": job.method,
            "coreset": coreset_kwargs(job) if job.coreset_method else None,
            "guidance": guidance_params(job).to_dict() if job.method in ("manifoldgd", "mgd3") else None,
            "sampler": job.sampler.model_dump(),
            "choices": {
                "projection": "paper Eq. 4: g = g_mode - beta_t * P_N g_mode" if job.guidance.basis != "reference"
                else "reference code: unprojected mode term + lam_man*tanh(dist/bw) pull to a PCA plane",
                "neighbourhood": "real class latents: cluster members (nearest-to-c first), padded to K",
                "target_selection": job.coreset.selection,
                "cfg_channels": job.sampler.cfg_channels,
                "encode": "posterior mean, no random flip",
            },
        },
        "model": info.to_dict(),
        "data": source.describe(),
        "classes": list(source.classes.names),
        "versions": versions(), "git_commit": git_commit(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": platform.node(),
    }


def write_previews(store: Store, job: JobConfig, source):
    from .pipeline.preview import class_grids
    for name, png in class_grids(store, list(source.classes.names), job.generate.seeds[0]):
        store.write_bytes(png, "preview", name)


def distribution_metrics(job: JobConfig, store: Store, source, info) -> dict:
    """FID etc. in the features of the project's real-data classifier (when one ships with the prior)."""
    from .pipeline.metrics import compute_distribution
    return compute_distribution(job, store, source, info)


def main(argv=None):
    from .cli import app
    app(args=["distill", *(sys.argv[1:] if argv is None else argv)], prog_name="python -m mgd_ray.distill")


if __name__ == "__main__":
    main()
