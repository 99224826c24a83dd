"""The job's stages as objects: encode -> coreset -> generate -> evaluate.

A stage owns, in one place:

- its ``name`` and where its outputs live under ``output.dir`` (``dir``), plus the files derived
  from them (``derived``: discarded with it by ``--fresh``);
- its settings key (``key``): the job settings that shape its bytes, including the keys of the
  stages it reads from, recorded as ``<dir>/_SETTINGS.json`` before its first output;
- its completion marker (``<dir>/_COMPLETE.json`` where the stage has one) and ``done``;
- ``run(ctx)``: reuse what is committed under the same key, compute the rest, and return what the
  manifest records of it.

``STAGES`` is the one list: the driver is a loop over it, and ``--stages``, ``--fresh``, the
settings check, the status and the dry run all read it. The Ray wiring of each stage's work is in
``runner`` / ``generate``; this module decides what runs and what is reused.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from typing import Any

from ..config import JobConfig, JobError
from .settings import SettingsChanged, changed, committed_shards, key_hash, section
from .store import Store

log = logging.getLogger("mgd_ray")


@dataclass
class Context:
    """What a stage's ``run`` reads: the job, its store, the opened source, the generator's facts,
    every stage's key, the manifest being written, and the stages the user asked for."""
    job: JobConfig
    store: Store
    source: Any
    info: Any
    keys: dict[str, dict] = field(default_factory=dict)
    manifest: dict = field(default_factory=dict)
    requested: list[str] = field(default_factory=list)
    targets: Any = None                   # the coreset's index table, once the coreset stage ran
    _units: list | None = None
    _committed: list | None = None        # committed_units, until a stage runs (footers read once)

    @property
    def labels(self) -> list[int]:
        return list(range(len(self.source.classes)))

    @property
    def units(self):
        """The generate stage's work units (every seed x class x slice of IPC), in shard order."""
        if self._units is None:
            from .labels import generator_labels
            from .units import make_units
            j = self.job
            self._units = make_units(j.generate.seeds, self.labels, self.source.classes.names, j.generate.ipc,
                                     j.generate.targets_per_unit, generator_labels(self.source.classes, self.info))
        return self._units

    def committed_units(self) -> list:
        """Units whose shard is committed with this job's settings (its footer's hash); the footers
        are read once and again only after a stage ran (``changed``)."""
        if self._committed is None:
            have = committed_shards(self.store, self.store.ls("shards", suffix=".parquet"),
                                    key_hash(self.keys["generate"]))
            self._committed = [u for u in self.units if u.shard in have]
        return self._committed

    def changed(self):
        """A stage ran: what is committed must be read again."""
        self._committed = None


class Stage:
    name: str = ""
    dir: str = ""                       # outputs under output.dir/<dir>
    derived: tuple[str, ...] = ()        # files derived from the outputs, discarded with them
    feeds: tuple[str, ...] = ()          # later stages that cannot run without this one running first
    SETTINGS = "_SETTINGS.json"
    COMPLETE = "_COMPLETE.json"

    # ---- settings key ----------------------------------------------------------------------
    def key(self, job: JobConfig, info, upstream: dict) -> dict:
        """The settings that change this stage's bytes; ``upstream`` is the previous stage's key."""
        raise NotImplementedError

    def recorded_key(self, store: Store) -> dict | None:
        if store.exists(self.dir, self.SETTINGS):
            return store.read_json(self.dir, self.SETTINGS).get("key")
        if store.exists(self.dir, self.COMPLETE):          # written before the settings record existed
            return store.read_json(self.dir, self.COMPLETE).get("key")
        return None

    def record_key(self, store: Store, key: dict):
        """Record the key before the first output (once: an existing record is this key, the
        settings check saw to it)."""
        if store.exists(self.dir, self.SETTINGS) and store.read_json(self.dir, self.SETTINGS).get("key") == key:
            return
        store.write_json({"key": key, "hash": key_hash(key)}, self.dir, self.SETTINGS)

    # ---- outputs ---------------------------------------------------------------------------
    def discard(self, store: Store) -> list[str]:
        gone = []
        for p in (self.dir, *self.derived):
            if store.exists(p):
                store.rm(p)
                gone.append(p)
        return gone

    def done(self, ctx: Context) -> bool:
        return ctx.store.exists(self.dir, self.COMPLETE)

    def run(self, ctx: Context) -> dict | None:
        raise NotImplementedError

    def placement(self, job: JobConfig, **facts) -> str:
        """What the stage asks the cluster for (the dry run prints it)."""
        raise NotImplementedError

    def __repr__(self):
        return f"<stage {self.name}>"


# ---------------------------------------------------------------------------------------------
class EncodeStage(Stage):
    """Source images -> VAE latents, ``latents/label=<k>/*.parquet`` (Ray Data + encoder actors)."""
    name, dir, derived, feeds = "encode", "latents", ("failures.parquet",), ("coreset",)

    def key(self, job, info, upstream):
        # the latents depend on the train rows and the VAE only: not on the DiT, the test split, or
        # a dtype that a CPU run does not use (``compute`` is what actually ran)
        data = {k: v for k, v in section(job, "data").items() if k != "test_limit_per_class"}
        if upstream.get("fingerprint"):
            data["fingerprint"] = upstream["fingerprint"]
        model = {k: v for k, v in section(job, "model").items() if k != "dtype"}
        model.update(vae_sha256=info.vae_sha256, vae_config=model_config_hash(info, "vae_config"))
        return {"data": data, "model": model, "encode": section(job, "encode"),
                "compute": compute(job, job.encode.num_gpus)}

    def run(self, ctx):
        from . import runner
        store = ctx.store
        if self.done(ctx):
            prev = store.read_json(self.dir, self.COMPLETE)
            log.info(f"encode: reusing cached latents ({prev['rows']} rows) from {store.uri(self.dir)}")
            return {k: v for k, v in prev.items() if k != "key"}
        store.rm(self.dir)                       # a half-written encode: Ray Data's write does not resume
        self.record_key(store, ctx.keys[self.name])
        rec = runner.run_encode(ctx.job, store, ctx.source, ctx.job.encode.image_size or ctx.info.image_size)
        store.write_json(rec, self.dir, self.COMPLETE)
        return rec

    def placement(self, job, **facts):
        e = job.encode
        return f"{e.min_actors}-{e.max_actors} actors x ({e.num_cpus} CPU, {e.num_gpus} GPU), batch {e.batch_size}"


class CoresetStage(Stage):
    """Latents -> per-class targets, ``coreset/targets.parquet`` (Ray tasks; per-class parts of an
    interrupted run are kept and only the missing classes are built)."""
    name, dir, feeds = "coreset", "coreset", ("generate",)

    def key(self, job, info, upstream):
        key = {**upstream, "method": job.method, "method_version": job.spec.version,
               "generate": section(job, "generate", ("ipc", "seeds"))}
        if job.coreset_method is not None:        # plain DiT has no coreset: only its seeds are "targets"
            key["coreset"] = {k: v for k, v in section(job, "coreset").items() if k != "neighbourhood_max"}
        return key

    def done(self, ctx):
        return super().done(ctx) and ctx.store.exists(self.dir, "targets.parquet")

    def run(self, ctx):
        from . import runner
        from .workers import TARGET_INDEX_COLUMNS
        store = ctx.store
        if self.done(ctx):
            ctx.targets = store.read_table(self.dir, "targets.parquet", columns=TARGET_INDEX_COLUMNS)
            log.info(f"coreset: reusing {ctx.targets.num_rows} targets from {store.uri(self.dir, 'targets.parquet')}")
        else:
            self.record_key(store, ctx.keys[self.name])    # parts already here share this key
            rec = runner.run_coreset(ctx.job, store, ctx.labels)
            store.write_json(rec, self.dir, self.COMPLETE)
            store.rm(self.dir, "parts")                     # merged into targets.parquet
            ctx.targets = store.read_table(self.dir, "targets.parquet", columns=TARGET_INDEX_COLUMNS)
        return {k: v for k, v in store.read_json(self.dir, self.COMPLETE).items() if k != "key"}

    def placement(self, job, **facts):
        c = job.coreset
        return (f"Ray tasks of {c.num_cpus:g} CPU, one per {c.latents_per_task:,} latents (whole classes); "
                f"a task granted no GPU runs the numpy engine")


class GenerateStage(Stage):
    """Targets -> distilled images, one Parquet shard per work unit (a pool of generator actors);
    every shard's footer carries the stage's settings hash."""
    name, dir, derived = "generate", "shards", ("preview", "failed_units.json")

    def key(self, job, info, upstream):
        key = {**upstream, "generate": section(job, "generate")}
        for name in job.spec.reads:               # only the sections this method's images depend on
            key[name] = section(job, name)
        if job.generative:                        # the DiT, and the device / dtype it runs in
            key["model"] = dict(upstream["model"], transformer_sha256=info.transformer_sha256,
                                transformer_config=model_config_hash(info, "transformer_config"))
            key["compute"] = dict(upstream["compute"], generate=compute(job, job.generate.num_gpus))
        return key

    def done(self, ctx):
        return len(ctx.committed_units()) == len(ctx.units)

    def run(self, ctx):
        from .generate import attach_targets, run_generate
        store = ctx.store
        attach_targets(ctx.units, ctx.targets)
        self.record_key(store, ctx.keys[self.name])        # before the first shard
        rec = run_generate(ctx.job, store, ctx.units, key_hash(ctx.keys[self.name]), source=ctx.source, info=ctx.info)
        if not rec.get("failed") and ctx.job.output.preview:
            from .preview import class_grids
            for name, png in class_grids(store, list(ctx.source.classes.names), ctx.job.generate.seeds[0]):
                store.write_bytes(png, "preview", name)
        if ctx.job.output.preview:      # report.html's real-image rows: a few train images per class
            from .report_page import write_real_preview
            write_real_preview(store, ctx.job, ctx.source, ctx.info)
        return rec

    def placement(self, job, batch_mean: float = 0.0, **facts):
        g = job.generate
        return (f"{g.num_actors} actors x ({g.num_cpus} CPU, {g.num_gpus} GPU), batch {g.batch_size} "
                f"({batch_mean:.1f} images per DiT call on average; units of several classes share a call)")


class EvaluateStage(Stage):
    """Shards (+ the random-real baselines) -> trained students scored on the real test set,
    ``eval/<trial>.json`` per trial (Ray Train) -> ``results.json``."""
    name, dir, derived = "evaluate", "eval", ("results.json",)

    def key(self, job, info, upstream):
        # students and train seeds only add trials (each trial is a unit named by them, and carries
        # this key's hash); the FID classifier shapes the metrics, not the trials
        ev = {k: v for k, v in section(job, "evaluate").items() if k not in ("students", "train_seeds", "classifier")}
        return {**upstream, "evaluate": ev}

    def done(self, ctx):
        if not ctx.job.evaluate.enabled:     # nothing to evaluate: done once there is a full set to evaluate
            return GENERATE.done(ctx)
        return ctx.store.exists("results.json")

    def run(self, ctx, tmp_dir: str | None = None):
        from . import runner
        from .evaluate import summarise
        job, store = ctx.job, ctx.store
        self.record_key(store, ctx.keys[self.name])        # before the first trial
        with tempfile.TemporaryDirectory(prefix="mgd-train-") as tmp:
            records = runner.run_evaluate(job, store, ctx.source, tmp_dir or tmp, key_hash(ctx.keys[self.name]))
        results = summarise(job, records)
        if job.evaluate.metrics:
            from .metrics import compute_distribution
            results["distribution"] = compute_distribution(job, store, ctx.source, ctx.info)
        store.write_json(results, "results.json")
        return {"trials": len(records)}

    def placement(self, job, trials: int = 0, **facts):
        e = job.evaluate
        return (f"1 TorchTrainer, {e.num_workers} workers x ({e.cpus_per_worker} CPU, {e.gpus_per_worker} GPU), "
                f"{trials} trials")


ENCODE, CORESET, GENERATE, EVALUATE = EncodeStage(), CoresetStage(), GenerateStage(), EvaluateStage()
STAGES: tuple[Stage, ...] = (ENCODE, CORESET, GENERATE, EVALUATE)
STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)
BY_NAME: dict[str, Stage] = {s.name: s for s in STAGES}


def parse_stages(stages: str | None) -> list[str]:
    """``--stages a,b`` -> the named stages in pipeline order (all when empty)."""
    if not stages:
        return list(STAGE_NAMES)
    want = [s.strip() for s in stages.split(",") if s.strip()]
    bad = [s for s in want if s not in BY_NAME]
    if bad or not want:
        raise JobError(f"unknown stage(s) {bad or [stages]}; choose from {', '.join(STAGE_NAMES)} (comma-separated)")
    return [s for s in STAGE_NAMES if s in want]


def stages_to_run(requested: list[str]) -> list[Stage]:
    """The requested stages plus every earlier stage one of them cannot run without (``feeds``)."""
    run = set(requested)
    for s in reversed(STAGES):
        if any(t in run for t in s.feeds):
            run.add(s.name)
    return [s for s in STAGES if s.name in run]


def compute(job: JobConfig, gpus: float) -> dict:
    """Where a stage's model runs and in which dtype, as its workers will resolve it: on a GPU when
    ``model.device`` is cuda, or auto with GPUs granted; the job's dtype only on a GPU (a CPU runs
    float32). fp32-CPU and bf16-GPU bytes never share a key."""
    dev = job.model.device
    gpu = dev == "cuda" or (dev == "auto" and gpus > 0)
    return {"device": "cuda" if gpu else "cpu", "dtype": job.model.dtype if gpu else "float32"}


def model_config_hash(info, which: str) -> str:
    from ..models import config_sha256
    cfg = getattr(info, which, None)
    return config_sha256(cfg) if cfg else "unknown"


def stage_keys(job: JobConfig, info, source=None) -> dict[str, dict]:
    """Stage name -> its settings key (each stage's key holds the keys of the stages before it).
    ``source``: the opened data source, whose fingerprint (``BaseSource.fingerprint``: listing,
    sizes, modification times) goes in the encode key."""
    keys, up = {}, {"fingerprint": source.fingerprint("train")} if source is not None else {}
    for s in STAGES:
        up = keys[s.name] = s.key(job, info, up)
    return keys


# ---- the settings check -----------------------------------------------------------------------
def check_settings(store: Store, keys: dict[str, dict], before: str | None = None):
    """Refuse (SettingsChanged) when a stage's recorded key differs from this job's. ``before``:
    check only the stages before that one (``--fresh STAGE`` checks them before discarding)."""
    names = STAGE_NAMES[:STAGE_NAMES.index(before)] if before else STAGE_NAMES
    diffs = {}
    for s in STAGES:
        if s.name in names:
            old = s.recorded_key(store)
            if old is not None and old != keys[s.name]:
                diffs[s.name] = changed(old, keys[s.name])
    if not diffs:
        return
    first = next(n for n in STAGE_NAMES if n in diffs)
    # each stage's key holds the earlier stages' settings: name each change once, at its first stage
    seen, lines = set(), []
    for n in STAGE_NAMES:
        for c in diffs.get(n, []):
            if c not in seen:
                seen.add(c)
                lines.append(f"  {n}: {c}")
    raise SettingsChanged(
        f"{store.uri()} holds outputs made with other settings (from the {first} stage on):\n" + "\n".join(lines)
        + f"\nNothing was run{' and nothing was discarded' if before else ''}. Either write to a new output.dir, "
          f"or rerun with --fresh {first} to discard the {first} stage and every later one and run them again.")


def discard_from(store: Store, stage: str) -> list[str]:
    """``--fresh STAGE``: remove that stage's outputs and every later stage's."""
    gone = []
    for s in STAGES[STAGE_NAMES.index(stage):]:
        gone += s.discard(store)
    return gone


__all__ = ["Context", "Stage", "STAGES", "STAGE_NAMES", "BY_NAME", "ENCODE", "CORESET", "GENERATE", "EVALUATE",
           "parse_stages", "stages_to_run", "stage_keys", "check_settings", "discard_from", "compute"]
