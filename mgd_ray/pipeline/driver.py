"""The driver: a job's walk from its config to ``results.json``.

``run_job`` = preflight (data, model, labels: before anything heavy) -> take the lease on
``output.dir`` -> the settings check (before ``--fresh`` discards anything) -> a loop over
``pipeline.stage.STAGES`` (each stage reuses what is committed under its key and runs the rest)
-> the final status in ``manifest.json`` -> ``report.html``.

The final status is written first when the driver is stopped: SIGTERM (``ray job stop`` sends
SIGKILL 3 s later) and SIGINT record ``failed`` at once, before any clean-up, and a second signal
during that write is ignored.
"""

from __future__ import annotations

import logging
import os
import platform
import signal
import sys
import threading
import time

from ..config import JobConfig
from ..provenance import git_commit
from .stage import BY_NAME, STAGE_NAMES, Context, check_settings, discard_from, stage_keys, stages_to_run
from .settings import check_shards, key_hash
from .store import Lease, LeaseLost, Store, redact

log = logging.getLogger("mgd_ray")


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


# ---------------------------------------------------------------------------------------------
def preflight(job: JobConfig):
    """Fail before any heavy work: data source, class list vs the generator, model loading."""
    from ..data import open_source
    from ..models import read_generator_info
    from .labels import check_label_order
    source = open_source(job.data)
    n_train = source.num_rows("train")
    if n_train == 0:
        from ..data import DataError
        raise DataError(f"data source {job.data.source!r} has no train rows for the chosen classes")
    from .door import door_checks
    door_checks(job, source)        # bad input at the door (pipeline/door.py), before any heavy work
    # every method needs the model: the VAE encodes the latents of every method. Configs + weight-file
    # hashes only, as load_generator would give them: the driver never holds the weights (3 GB for DiT-XL/2),
    # and reads the configs in a child process (``isolated``): the driver itself never imports torch
    from .. import isolated
    if not job.model.allow_download:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    info = isolated.call(read_generator_info, job.model.generator, job.model.vae,
                         allow_download=job.model.allow_download)
    check_label_order(source.classes, info)
    if job.evaluate.enabled:     # soft-label: the teacher must load before hours of generation
        isolated.call(check_job_teacher, job)
    return source, info


def check_job_teacher(job: JobConfig) -> int:
    """Load each evaluation protocol's teacher as a trial would (in the ``isolated`` child: torch
    stays out of the driver); -> their parameter count (0: no protocol has a teacher)."""
    from .evaluate import load_job_teacher
    n = 0
    for _, view in job.evaluations():
        teacher = load_job_teacher(view)
        n += sum(p.numel() for p in teacher.parameters()) if teacher is not None else 0
    return n


def absolute_output(job: JobConfig) -> JobConfig:
    """A relative local ``output.dir`` becomes absolute: Ray workers (Train workers especially)
    run in other working directories, so every stage must see the same absolute path."""
    d = job.output.dir
    if "://" in d or os.path.isabs(d):
        return job
    return job.model_copy(update={"output": job.output.model_copy(update={"dir": os.path.abspath(d)})})


class _FinalStatus:
    """Writes the run's final status once, and writes it FIRST when a signal stops the driver."""

    def __init__(self, store: Store, manifest: dict):
        self.store, self.manifest, self.written = store, manifest, False
        self._old: dict = {}

    def write(self, status: str, reason: str | None, requested_done: bool = False):
        if self.written:
            return
        self.written = True
        m = self.manifest
        m.update(status=status, requested_done=requested_done, finished=time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                       time.gmtime()))
        if status != "failed":          # a failed run keeps the stage it stopped in
            m.pop("stage", None)
        m.pop("reason", None)
        if reason:
            m["reason"] = reason
        try:
            self.store.write_json(m, "manifest.json")
        except LeaseLost as e:          # another driver owns output.dir: its manifest is not ours to write
            log.error(f"the final status {status!r} was not written: {e}")
        except Exception as e:  # noqa: BLE001 - say so loudly: the manifest may still read "running"
            log.error(f"could not write the final status {status!r} to {self.store.uri('manifest.json')} "
                      f"({type(e).__name__}: {e}); it may still say 'running'. Committed work is kept; "
                      f"rerun the same command to continue")

    def _on_signal(self, signum, _frame):
        for s in self._old:                        # a second Ctrl-C / SIGTERM must not cut the write short
            signal.signal(s, signal.SIG_IGN)
        stage = self.manifest.get("stage", "start-up")
        self.write("failed", f"stopped in the {stage} stage: interrupted by signal {signal.Signals(signum).name}")
        raise KeyboardInterrupt(f"signal {signum}")

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._on_signal)
        return self

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def run_job(job: JobConfig, stages: list[str] | None = None, dry_run: bool = False,
            fresh: str | None = None) -> dict:
    """Run the job's stages; returns the final manifest.

    ``manifest["status"]`` is ``complete``, ``partial`` (``reason`` says what is missing and how to
    finish; ``requested_done`` says whether every requested stage's outputs are complete) or,
    when an exception or a signal stops the run, ``failed`` with the reason (the exception is
    re-raised). ``fresh``: discard that stage's outputs and every later stage's first, after
    checking that the stages before it match this job's settings.
    """
    from .. import isolated
    try:
        return _run_job(job, stages, dry_run, fresh)
    finally:
        isolated.shutdown()           # the preflight's child process, if one is still up


def _run_job(job: JobConfig, stages: list[str] | None, dry_run: bool, fresh: str | None) -> dict:
    setup_logging()
    job = absolute_output(job)
    stages = stages or list(STAGE_NAMES)
    from .plan import dry_run_plan, plan
    if dry_run:
        return {"plan": dry_run_plan(job, stages)}
    source, info = preflight(job)
    p = plan(job, source, info, stages)
    from .. import isolated
    isolated.shutdown()      # the model facts and FLOP counts are in: the child's memory goes back now
    from . import runner
    from .door import check_cluster_output
    runner.init_ray(job)
    check_cluster_output(job)      # a local output.dir that other nodes cannot see: refused before any write
    store = Store(job.output.dir, job.output.storage_options)
    store.makedirs()
    keys = stage_keys(job, info, source)
    with Lease(store) as lease:
        # every commit from here on, the driver's and its workers', checks this lease's epoch
        store = lease.fenced(store)
        job = job.model_copy(update={"output": job.output.model_copy(update={"lease_epoch": lease.epoch})})
        if fresh:
            check_settings(store, keys, before=fresh)   # refuse before discarding anything
            gone = discard_from(store, fresh)
            log.info(f"--fresh {fresh}: discarded {', '.join(gone) or 'nothing (no outputs yet)'}")
        check_settings(store, keys)     # before any heavy work: never mix outputs of other settings
        check_shards(store, keys["generate"])
        store.write_bytes(dump_job_redacted(job).encode(), "config.yaml")
        manifest = base_manifest(job, source, info, keys)
        if store.exists("manifest.json"):
            old = store.read_json("manifest.json")
            for k in ("timings", "nodes", "runs"):
                if k in old:
                    manifest[k] = old[k]
        manifest["runs"] = manifest.get("runs", 0) + 1
        store.write_json(manifest, "manifest.json")
        log.info(f"job {job.name}: {p['classes']} classes, {p['images_to_encode']} train images, "
                 f"ipc {p['ipc']} x {p['generation_seeds']} seed(s) -> {p['images_to_generate']} images, "
                 f"{p['work_units']} units; output {store.uri()}")
        ctx = Context(job=job, store=store, source=source, info=info, keys=keys, manifest=manifest,
                      requested=list(stages))
        with _FinalStatus(store, manifest) as final:
            try:
                run_stages(ctx, final)
            except BaseException as e:
                stage = manifest.get("stage", "start-up")
                why = "interrupted" if isinstance(e, KeyboardInterrupt) else f"{type(e).__name__}: {e}"
                final.write("failed", f"stopped in the {stage} stage: {why}")
                raise
    log.info(f"job {job.name}: status {manifest['status']}; outputs under {store.uri()}")
    if manifest.get("reason"):
        log.info(f"job {job.name}: {manifest['reason']}")
    write_report_page(job)
    for proto, by_kind in manifest.get("results_summary", {}).items():
        for k, v in by_kind.items():
            for s, m in v.items():
                log.info(f"  [{proto}] {k:12s} {s:10s} final {100 * m['final_acc_mean']:.1f}%  "
                         f"best {100 * m['best_acc_mean']:.1f}%")
    return manifest


def run_stages(ctx: Context, final: _FinalStatus):
    """The loop over the stages; then the counts and the final status."""
    from .nodes import clear_nodes, stage_nodes
    job, store, manifest = ctx.job, ctx.store, ctx.manifest
    t_start = time.time()
    timings = manifest.setdefault("timings", {})
    nodes = manifest.setdefault("nodes", {})   # stage -> the Ray nodes its work ran on
    problems = []
    for stage in stages_to_run(ctx.requested):
        if stage is BY_NAME["evaluate"]:
            if not job.evaluate.enabled:
                continue
            if len(ctx.committed_units()) < len(ctx.units):
                missing = len(ctx.units) - len(ctx.committed_units())
                if not problems:
                    problems.append(f"evaluation needs every unit's shard and {missing} of {len(ctx.units)} are "
                                    f"missing; run the generate stage (rerun without --stages)")
                continue
        manifest["stage"] = stage.name
        store.write_json(manifest, "manifest.json")
        t0 = time.time()
        clear_nodes(store, stage.name)
        rec = stage.run(ctx)
        ctx.changed()
        timings[stage.name] = round(time.time() - t0, 2)
        nodes[stage.name] = stage_nodes(store, stage.name) or nodes.get(stage.name, [])  # none: nothing ran
        if rec is not None:
            manifest[stage.name] = rec
        if stage.name == "generate" and rec.get("failed"):
            problems.append(f"{rec['failed']} unit(s) failed (listed in {store.uri('failed_units.json')}); "
                            f"rerun the same command to run only the missing units")
        if stage.name == "evaluate":
            from .evaluate import protocol_results
            manifest["results_summary"] = {
                r["name"]: {k: {s: {m: round(c[m], 4) for m in ("final_acc_mean", "best_acc_mean")}
                                for s, c in v.items()} for k, v in r["results"].items()}
                for r in protocol_results(store.read_json("results.json"))}
        store.write_json(manifest, "manifest.json")
    manifest.pop("stage", None)
    committed = ctx.committed_units()
    units = ctx.units
    manifest["counts"] = {"classes": len(ctx.labels), "ipc": job.generate.ipc,
                          "generation_seeds": len(job.generate.seeds), "units": len(units),
                          "units_committed": len(committed), "images": sum(u.count for u in committed)}
    timings["total_last_run"] = round(time.time() - t_start, 2)
    complete = len(committed) == len(units) and ((not job.evaluate.enabled) or store.exists("results.json"))
    requested_done = all(BY_NAME[n].done(ctx) for n in ctx.requested)
    if complete:
        final.write("complete", None, True)
    elif problems:
        final.write("partial", "; ".join(problems), requested_done)
    elif requested_done:
        rest = [n for n in STAGE_NAMES if n not in ctx.requested]
        final.write("partial", f"the requested stage(s) {', '.join(ctx.requested)} finished; run the job without "
                               f"--stages (or with --stages {','.join(rest)}) to finish it", True)
    else:
        undone = [n for n in ctx.requested if not BY_NAME[n].done(ctx)]
        final.write("partial", f"the requested stage(s) {', '.join(undone)} could not finish: the stages before "
                               f"them have no complete outputs; run the job without --stages", False)


def write_report_page(job: JobConfig):
    """report.html beside results.json, from the files just written. The outputs are already
    committed, so a failure here is logged (with the command that rebuilds it), not raised."""
    from .report_page import write_report
    try:
        log.info(f"report: {write_report(job.output.dir, job.output.storage_options)}")
    except Exception as e:  # noqa: BLE001
        log.error(f"report.html could not be written ({type(e).__name__}: {e}); "
                  f"rebuild it with `mgd-ray report {job.output.dir}`")


def dump_job_redacted(job: JobConfig) -> str:
    """The job as ``config.yaml`` stores it: credentials redacted, no run-time lease epoch."""
    import yaml
    return yaml.safe_dump(redact(job.model_dump(mode="json", exclude={"output": {"lease_epoch"}})),
                          sort_keys=False)


def base_manifest(job: JobConfig, source, info, keys: dict) -> dict:
    return {
        "name": job.name, "status": "running",
        "config": redact(job.model_dump(mode="json")),
        "method": {
            "name": job.method, "summary": job.spec.summary, "guidance_rule": job.spec.guidance_rule,
            "coreset": job.coreset_params.to_dict() if job.coreset_params else None,
            "guidance": job.guidance_params.to_dict() if job.spec.guides else None,
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
        "settings": {name: key_hash(k) for name, k in keys.items()},   # each stage's settings hash
        "versions": versions(), "git_commit": git_commit(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": platform.node(),
    }
