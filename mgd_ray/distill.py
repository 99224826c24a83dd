"""``python -m mgd_ray.distill JOB.yaml [--set k=v ...] [--dry-run] [--stages ...]``

Runs a distillation job: encode -> coreset -> generate -> evaluate, writing under
``output.dir`` (see README "Output contract"). Attaches to a running Ray cluster when there is
one (``ray job submit`` sets RAY_ADDRESS) and otherwise starts a local Ray. Every stage is
resumable: committed latents, targets, shards and evaluation trials are reused when the settings
that shaped them are this job's (a rerun with other settings refuses; see ``pipeline.settings``);
one driver at a time holds ``output.dir`` (``_lease.json``).
"""

from __future__ import annotations

import logging
import os
import platform
import sys
import tempfile
import time

from .config import JobConfig
from .pipeline.labels import check_label_order, generator_labels
from .pipeline.settings import check_settings, check_shards, discard_from, key_hash, record_key, stage_keys
from .pipeline.store import Lease, Store, redact
from .pipeline.units import make_units
from .provenance import git_commit

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
    for p in ("torch", "ray", "diffusers", "faiss-cpu", "faiss-gpu", "pyarrow", "numpy", "scikit-learn"):
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            pass
    return out


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
    # every method needs the model: the VAE encodes the latents of every method
    _, _, info = load_generator(job.model.generator, job.model.vae, allow_download=job.model.allow_download)
    check_label_order(source.classes, info)
    if job.evaluate.enabled:
        from .pipeline.evaluate import load_job_teacher
        load_job_teacher(job)   # soft-label: the teacher must exist before hours of generation
    return source, info


# ---------------------------------------------------------------------------------------------
def absolute_output(job: JobConfig) -> JobConfig:
    """A relative local ``output.dir`` becomes absolute: Ray workers (Train workers especially)
    run in other working directories, so every stage must see the same absolute path."""
    d = job.output.dir
    if "://" in d or os.path.isabs(d):
        return job
    return job.model_copy(update={"output": job.output.model_copy(update={"dir": os.path.abspath(d)})})


def run_job(job: JobConfig, stages: list[str] | None = None, dry_run: bool = False,
            fresh: str | None = None) -> dict:
    """Run the job's stages; returns the final manifest.

    ``manifest["status"]`` is ``complete``, ``partial`` (``reason`` says what is missing and how to
    finish; ``requested_done`` says whether the requested ``stages`` did all they were asked) or,
    when an exception stops the run, ``failed`` with the reason (the exception is re-raised).
    ``fresh``: discard that stage's outputs and every later stage's first (see ``pipeline.settings``).
    """
    setup_logging()
    job = absolute_output(job)
    stages = stages or list(STAGES)
    from .pipeline.plan import dry_run_plan, plan
    if dry_run:
        return {"plan": dry_run_plan(job, stages)}
    source, info = preflight(job)
    p = plan(job, source, info, stages)
    store = Store(job.output.dir, job.output.storage_options)
    store.makedirs()
    keys = stage_keys(job, info)
    with Lease(store):
        if fresh:
            gone = discard_from(store, fresh)
            log.info(f"--fresh {fresh}: discarded {', '.join(gone) or 'nothing (no outputs yet)'}")
        check_settings(store, keys)     # before any heavy work: never mix outputs of other settings
        check_shards(store, keys["generate"])
        store.write_bytes(dump_job_redacted(job).encode(), "config.yaml")
        manifest = base_manifest(job, source, info)
        if store.exists("manifest.json"):
            old = store.read_json("manifest.json")
            manifest["timings"] = old.get("timings", {})
            manifest["nodes"] = old.get("nodes", {})
            manifest["runs"] = old.get("runs", 0)
        manifest["runs"] = manifest.get("runs", 0) + 1
        store.write_json(manifest, "manifest.json")
        log.info(f"job {job.name}: {p['classes']} classes, {p['images_to_encode']} train images, "
                 f"ipc {p['ipc']} x {p['generation_seeds']} seed(s) -> {p['images_to_generate']} images, "
                 f"{p['work_units']} units; output {store.uri()}")
        try:
            run_stages(job, stages, store, source, info, keys, manifest)
        except BaseException as e:
            stage = manifest.get("stage", "start-up")
            why = "interrupted" if isinstance(e, KeyboardInterrupt) else f"{type(e).__name__}: {e}"
            finish(store, manifest, "failed", f"stopped in the {stage} stage: {why}")
            raise
    log.info(f"job {job.name}: status {manifest['status']}; outputs under {store.uri()}")
    if manifest.get("reason"):
        log.info(f"job {job.name}: {manifest['reason']}")
    write_report_page(job)
    if "results_summary" in manifest:
        for k, v in manifest["results_summary"].items():
            for s, m in v.items():
                log.info(f"  {k:12s} {s:10s} final {100 * m['final_acc_mean']:.1f}%  best {100 * m['best_acc_mean']:.1f}%")
    return manifest


def finish(store: Store, manifest: dict, status: str, reason: str | None, requested_done: bool = False):
    manifest.update(status=status, requested_done=requested_done,
                    finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    manifest.pop("reason", None)
    if reason:
        manifest["reason"] = reason
    store.write_json(manifest, "manifest.json")


def run_stages(job: JobConfig, stages: list[str], store: Store, source, info, keys: dict, manifest: dict):
    t_start = time.time()
    from .pipeline import runner
    from .pipeline.nodes import clear_nodes, stage_nodes
    runner.init_ray(job)
    labels = list(range(len(source.classes)))
    timings = manifest.setdefault("timings", {})
    nodes = manifest.setdefault("nodes", {})   # stage -> the Ray nodes its work ran on

    def timed(name, fn):
        manifest["stage"] = name
        store.write_json(manifest, "manifest.json")
        t0 = time.time()
        clear_nodes(store, name)
        r = fn()
        timings[name] = round(time.time() - t0, 2)
        nodes[name] = stage_nodes(store, name) or nodes.get(name, [])  # none: reused, nothing ran
        store.write_json(manifest, "manifest.json")
        return r

    if "encode" in stages or "coreset" in stages or "generate" in stages:
        manifest["encode"] = timed("encode", lambda: runner.run_encode(job, store, source, keys["encode"],
                                                                        info.image_size))
    targets = None
    if any(s in stages for s in ("coreset", "generate")):
        targets = timed("coreset", lambda: runner.run_coreset(job, store, labels, keys["coreset"]))
        manifest["coreset"] = {k: v for k, v in store.read_json("coreset", "_COMPLETE.json").items() if k != "key"}
    units = make_units(job.generate.seeds, labels, source.classes.names, job.generate.ipc,
                       job.generate.targets_per_unit, generator_labels(source.classes, info))
    problems = []
    if "generate" in stages:
        runner.attach_targets(units, targets)
        record_key(store, "generate", keys["generate"])    # before the first shard
        gen = manifest["generate"] = timed("generate", lambda: runner.run_generate(
            job, store, units, key_hash(keys["generate"])))
        if gen.get("failed"):
            problems.append(f"{gen['failed']} unit(s) failed (listed in {store.uri('failed_units.json')}); "
                            f"rerun the same command to run only the missing units")
        elif job.output.preview:
            write_previews(store, job, source)
    done_units = set(store.ls("shards", suffix=".parquet"))
    complete = all(u.shard in done_units for u in units)
    manifest["counts"] = {"classes": len(labels), "ipc": job.generate.ipc, "generation_seeds": len(job.generate.seeds),
                          "units": len(units), "units_committed": sum(u.shard in done_units for u in units),
                          "images": len(units) and sum(u.count for u in units if u.shard in done_units)}
    if "evaluate" in stages and job.evaluate.enabled and complete:
        from .pipeline.evaluate import summarise
        record_key(store, "evaluate", keys["evaluate"])    # before the first trial
        with tempfile.TemporaryDirectory(prefix="mgd-train-") as tmp:
            records = timed("evaluate", lambda: runner.run_evaluate(job, store, source, tmp))
        results = summarise(job, records)
        if job.evaluate.metrics:
            results["distribution"] = timed("metrics", lambda: distribution_metrics(job, store, source, info))
        store.write_json(results, "results.json")
        manifest["results_summary"] = {k: {s: {m: round(c[m], 4) for m in ("final_acc_mean", "best_acc_mean")}
                                           for s, c in v.items()} for k, v in results["results"].items()}
    elif "evaluate" in stages and job.evaluate.enabled and not problems:
        missing = manifest["counts"]["units"] - manifest["counts"]["units_committed"]
        problems.append(f"evaluation needs every unit's shard and {missing} of {len(units)} are missing; "
                        f"run the generate stage (rerun without --stages)")
    manifest.pop("stage", None)
    evaluated = (not job.evaluate.enabled) or store.exists("results.json")
    timings["total_last_run"] = round(time.time() - t_start, 2)
    if complete and evaluated:
        finish(store, manifest, "complete", None, True)
    elif problems:
        finish(store, manifest, "partial", "; ".join(problems), False)
    else:
        rest = [s for s in STAGES if s not in stages]
        finish(store, manifest, "partial", f"the requested stage(s) {', '.join(stages)} finished; run the job "
                                           f"without --stages (or with --stages {','.join(rest)}) to finish it", True)


def write_report_page(job: JobConfig):
    """report.html beside results.json, from the files just written. The outputs are already
    committed, so a failure here is logged (with the command that rebuilds it), not raised."""
    from .pipeline.report_page import write_report
    try:
        log.info(f"report: {write_report(job.output.dir, job.output.storage_options)}")
    except Exception as e:  # noqa: BLE001
        log.error(f"report.html could not be written ({type(e).__name__}: {e}); "
                  f"rebuild it with `mgd-ray report {job.output.dir}`")


def dump_job_redacted(job: JobConfig) -> str:
    import yaml
    return yaml.safe_dump(redact(job.model_dump(mode="json")), sort_keys=False)


def base_manifest(job: JobConfig, source, info) -> dict:
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


if __name__ == "__main__":
    # `python -m mgd_ray.distill JOB ...` is `mgd-ray distill JOB ...`. Here this file runs as the
    # script `__main__`; the CLI imports the module `mgd_ray.distill`, which never imports the CLI.
    from mgd_ray.cli import app
    app(args=["distill", *sys.argv[1:]], prog_name="python -m mgd_ray.distill")
