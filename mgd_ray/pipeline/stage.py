"""The job's stages as objects: encode -> coreset -> generate -> evaluate.

A stage owns, in one place:

- its ``name`` and where its outputs live under ``output.dir`` (``dir``), plus the files derived
  from them (``derived``: discarded with it by ``--fresh``);
- its settings key (``key``): the job-wide settings that shape its bytes, including the keys of
  the stages it reads from, recorded as ``<dir>/_SETTINGS.json`` before its first output. The
  generation seeds and the classes are not in it: they are units. Each class has its own key
  (``class_keys``: name, label index, a fingerprint of its own rows and files); the encode stage
  records it per class (``latents/_CLASSES.json``), and every coreset part
  (``coreset/parts/c<label>-s<seed>.parquet``) and shard carries it in its footer beside the
  stage's hash. An added seed or class adds work and reuses the rest; a class whose index or
  files changed is redone; outputs of a seed or class the job no longer has stay on disk and are
  read by nothing;
- its completion marker (``<dir>/_COMPLETE.json`` where the stage has one) and ``done``;
- ``run(ctx)``: reuse what is committed under the same key, compute the rest, and return what the
  manifest records of it.

``STAGES`` is the one list: the driver is a loop over it, and ``--stages``, ``--fresh``, the
settings check, the status and the dry run all read it. The Ray wiring of each stage's work is in
``runner`` / ``generate``; this module decides what runs and what is reused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from ..config import JobConfig, JobError
from .settings import KEY_FORMAT, SettingsChanged, changed, committed_shards, cpu_threads, key_hash, section
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
    classes: list | None = None           # class_keys(source), computed on first use
    _units: list | None = None
    _committed: list | None = None        # committed_units, until a stage runs (footers read once)
    _trial_hash: dict | None = None       # protocol name -> trial hash

    @property
    def labels(self) -> list[int]:
        return list(range(len(self.source.classes)))

    @property
    def class_keys(self) -> list[dict]:
        """Each class's own key (label order): what its latents, coreset parts and shards depend on
        beyond the stage keys."""
        if self.classes is None:
            self.classes = class_keys(self.source)
        return self.classes

    @property
    def class_hashes(self) -> list[str]:
        return [key_hash(k) for k in self.class_keys]

    @property
    def units(self):
        """The generate stage's work units (every seed x class x slice of IPC), in shard order,
        each carrying its class's hash (``unit_class_hash``: the class key and its generator
        label)."""
        if self._units is None:
            from .labels import generator_labels
            from .units import make_units
            j = self.job
            units = make_units(j.generate.seeds, self.labels, self.source.classes.names, j.generate.ipc,
                               j.generate.targets_per_unit, generator_labels(self.source.classes, self.info))
            hashes = self.class_hashes
            for u in units:
                u.key = unit_class_hash(hashes[u.label], u.gen_label)
            self._units = units
        return self._units

    def shard_names(self) -> dict[int, list[str]]:
        """Generation seed -> the shard names of the job's units of that seed."""
        out: dict[int, list[str]] = {}
        for u in self.units:
            out.setdefault(u.gen_seed, []).append(u.shard)
        return out

    def trial_hash(self, protocol: str | None = None) -> str:
        """What every trial of evaluation protocol ``protocol`` (its name; default the first) is made
        under: the evaluate stage's shared key, that protocol's own key, every class's unit hash (a
        trial trains on a whole distilled set: all classes of one seed) and the real test split it is
        scored on (``fingerprint('test')``: its rows, so ``data.test_limit_per_class``, and its files).
        Another protocol's settings are in none of it: adding or dropping one reuses the others."""
        name = protocol or self.job.evaluate.first.label
        if self._trial_hash is None:
            self._trial_hash = {}
        if name not in self._trial_hash:
            per_class = {u.label: u.key for u in self.units}
            key = self.keys["evaluate"]
            shared = {k: v for k, v in key.items() if k != "protocols"}
            self._trial_hash[name] = key_hash({"settings": key_hash(shared), "protocol": key["protocols"][name],
                                               "classes": [per_class[k] for k in self.labels],
                                               "test": self.source.fingerprint("test")})
        return self._trial_hash[name]

    def committed_units(self) -> list:
        """Units whose shard is committed with this job's settings and its class's hash (the
        footer's); the footers are read once and again only after a stage ran (``changed``)."""
        if self._committed is None:
            on_disk = set(self.store.ls("shards", suffix=".parquet"))
            mine = {u.shard: u.key for u in self.units if u.shard in on_disk}
            have = committed_shards(self.store, list(mine), key_hash(self.keys["generate"]), mine)
            self._committed = [u for u in self.units if u.shard in have]
        return self._committed

    def changed(self):
        """A stage ran: what is committed must be read again."""
        self._committed = None


def unit_class_hash(class_hash: str, gen_label: int) -> str:
    """A shard's class hash: its class's key and the generator label it was made with."""
    return key_hash({"class": class_hash, "gen_label": int(gen_label)})


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

    def diff(self, old: dict, new: dict) -> list[str]:
        """What differs between the recorded key ``old`` and this job's ``new`` (empty: the outputs
        are this job's)."""
        return changed(old, new) if old != new else []

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
    """Source images -> VAE latents, ``latents/label=<k>/*.parquet`` (Ray Data + encoder actors),
    class by class: ``latents/_CLASSES.json`` records, per label, the class key its partition was
    encoded under; a rerun encodes only the classes not recorded with their current key (new,
    moved, or whose files changed) and keeps every other partition."""
    name, dir, derived, feeds = "encode", "latents", ("failures.parquet",), ("coreset",)
    CLASSES = "_CLASSES.json"

    def key(self, job, info, upstream):
        # the latents depend on the train rows and the VAE only: not on the DiT, the test split, or
        # a dtype that a CPU run does not use (``compute`` is what actually ran). Which classes, and
        # their files, are each class's own key (``class_keys``), not this one
        data = {k: v for k, v in section(job, "data").items() if k not in ("test_limit_per_class", "classes")}
        model = {k: v for k, v in section(job, "model").items() if k != "dtype"}
        model.update(vae_sha256=info.vae_sha256, vae_config=model_config_hash(info, "vae_config"))
        return {"key_format": KEY_FORMAT, "data": data, "model": model, "encode": section(job, "encode"),
                "compute": compute(job, job.encode.num_gpus, job.encode.num_cpus)}

    def class_records(self, store: Store) -> dict[int, dict]:
        """label -> {"settings": stage hash, "class": class hash, "name", "rows"} of every committed
        partition (including those of classes the job no longer has: they stay, unread)."""
        if not store.exists(self.dir, self.CLASSES):
            return {}
        return {int(k): v for k, v in store.read_json(self.dir, self.CLASSES).get("classes", {}).items()}

    def _write_records(self, store: Store, recs: dict[int, dict]):
        store.write_json({"classes": {str(k): recs[k] for k in sorted(recs)}}, self.dir, self.CLASSES)

    def kept(self, ctx) -> list[int]:
        """The job's labels whose partition is committed under this job's stage key and class key."""
        want, recs = key_hash(ctx.keys[self.name]), self.class_records(ctx.store)
        return [k for k, h in zip(ctx.labels, ctx.class_hashes)
                if recs.get(k, {}).get("settings") == want and recs[k].get("class") == h]

    def done(self, ctx):
        return super().done(ctx) and len(self.kept(ctx)) == len(ctx.labels)

    def run(self, ctx):
        from . import runner
        store = ctx.store
        kept = set(self.kept(ctx))
        todo = [k for k in ctx.labels if k not in kept]
        classes = key_hash(ctx.class_hashes)          # the record below describes these classes
        prev = store.read_json(self.dir, self.COMPLETE) if store.exists(self.dir, self.COMPLETE) else None
        if not todo and prev is not None and prev.get("classes") == classes:
            log.info(f"encode: reusing cached latents ({prev['rows']} rows) from {store.uri(self.dir)}")
            return {**{k: v for k, v in prev.items() if k not in ("key", "classes")},   # this run encoded none
                    "classes_encoded": 0, "classes_kept": len(ctx.labels)}
        self.record_key(store, ctx.keys[self.name])
        recs = self.class_records(store)
        if todo:
            # forget, then remove, the partitions about to be written (Ray Data's write does not
            # resume: a half-written partition must never count as committed); the rest stay
            for k in todo:
                recs.pop(k, None)
            self._write_records(store, recs)
            store.rm(self.dir, self.COMPLETE)
            for k in todo:
                store.rm(self.dir, f"label={k}")
            for name in store.ls(self.dir, suffix=".npy"):     # metrics' real-feature caches of the old rows
                store.rm(self.dir, name)
            names = ctx.source.classes.names
            log.info(f"encode: {len(todo)} of {len(ctx.labels)} classes to encode ({len(kept)} kept): "
                     f"{', '.join(names[k] for k in todo[:8])}{' ...' if len(todo) > 8 else ''}")
            rec = runner.run_encode(ctx.job, store, ctx.source, ctx.job.encode.image_size or ctx.info.image_size,
                                    labels=todo if kept else None, keep_failures=bool(kept))
            want = key_hash(ctx.keys[self.name])
            hashes = ctx.class_hashes
            for k in todo:
                recs[k] = {"settings": want, "class": hashes[k], "name": str(names[k]),
                           "rows": runner.partition_rows(store, k)}
            self._write_records(store, recs)
        else:                                         # classes only removed: every partition is kept
            log.info(f"encode: reusing the latents of all {len(ctx.labels)} classes from {store.uri(self.dir)}")
            rec = {"seconds": 0.0, "images_per_s": 0.0}
        rec = {**rec, "rows": sum(int(recs[k]["rows"]) for k in ctx.labels), "classes_encoded": len(todo),
               "classes_kept": len(kept)}
        store.write_json({**rec, "classes": classes}, self.dir, self.COMPLETE)
        return rec

    def placement(self, job, **facts):
        e = job.encode
        return f"{e.min_actors}-{e.max_actors} actors x ({e.num_cpus} CPU, {e.num_gpus} GPU), batch {e.batch_size}"


class CoresetStage(Stage):
    """Latents -> targets, one part per (class, generation seed), ``coreset/parts/c<label>-s<seed>.parquet``
    (Ray tasks), each carrying the stage's hash and its class's hash in its footer; the job's parts
    are merged into ``coreset/targets.parquet``. A rerun builds only the parts not committed (an
    added seed or class, a class whose latents changed, an interrupted run) and merges again; the
    parts stay (an added seed reuses every other one)."""
    name, dir, feeds = "coreset", "coreset", ("generate",)

    def key(self, job, info, upstream):
        key = {**upstream, "method": job.method, "method_version": job.spec.version,
               "generate": section(job, "generate", ("ipc",))}
        if job.coreset_method is not None:        # plain DiT has no coreset: only its seeds are "targets"
            key["coreset"] = {k: v for k, v in section(job, "coreset").items() if k != "neighbourhood_max"}
            # the coreset tasks never ask for a GPU (runner.run_coreset): a CPU engine, whose BLAS threads count
            key["compute"] = dict(upstream["compute"], coreset={"device": "cpu",
                                                                "threads": cpu_threads(job.coreset.num_cpus)})
        return key

    def parts(self, ctx) -> dict[str, tuple[int, int, str]]:
        """Part name -> (label, seed, class hash) of every part the job needs."""
        from .workers import part_name
        hashes = ctx.class_hashes
        return {part_name(k, s): (k, int(s), hashes[k]) for k in ctx.labels for s in ctx.job.generate.seeds}

    def merged(self, ctx) -> str:
        """What targets.parquet must have been merged from: the stage key and the job's parts."""
        return key_hash({"settings": key_hash(ctx.keys[self.name]),
                         "parts": sorted([n, h] for n, (_, _, h) in self.parts(ctx).items())})

    def done(self, ctx):
        return (super().done(ctx) and ctx.store.exists(self.dir, "targets.parquet")
                and ctx.store.read_json(self.dir, self.COMPLETE).get("merged") == self.merged(ctx))

    def run(self, ctx):
        from . import runner
        from .workers import TARGET_INDEX_COLUMNS
        store = ctx.store
        if self.done(ctx):
            ctx.targets = store.read_table(self.dir, "targets.parquet", columns=TARGET_INDEX_COLUMNS)
            log.info(f"coreset: reusing {ctx.targets.num_rows} targets from {store.uri(self.dir, 'targets.parquet')}")
        else:
            self.record_key(store, ctx.keys[self.name])    # parts already here share this key
            store.rm(self.dir, self.COMPLETE)                # targets.parquet is merged again
            want, settings = self.parts(ctx), key_hash(ctx.keys[self.name])
            on_disk = set(store.ls(self.dir, "parts", suffix=".parquet"))
            have = committed_shards(store, [n for n in want if n in on_disk], settings,
                                    {n: h for n, (_, _, h) in want.items()}, where=f"{self.dir}/parts")
            todo: dict[int, list[int]] = {}
            for n, (k, seed, _) in want.items():
                if n not in have:
                    todo.setdefault(k, []).append(seed)
            rec = runner.run_coreset(ctx.job, store, ctx.labels, list(ctx.job.generate.seeds), todo, settings,
                                     dict(zip(ctx.labels, ctx.class_hashes)))
            store.write_json({**rec, "merged": self.merged(ctx)}, self.dir, self.COMPLETE)
            ctx.targets = store.read_table(self.dir, "targets.parquet", columns=TARGET_INDEX_COLUMNS)
        return {k: v for k, v in store.read_json(self.dir, self.COMPLETE).items() if k not in ("key", "merged")}

    def placement(self, job, **facts):
        c = job.coreset
        return (f"Ray tasks of {c.num_cpus:g} CPU, one per {c.latents_per_task:,} latents (whole classes); "
                f"a task granted no GPU runs the numpy engine")


class GenerateStage(Stage):
    """Targets -> distilled images, one Parquet shard per work unit (a pool of generator actors);
    every shard's footer carries the stage's settings hash and its class's hash (``Unit.key``).
    Committed shards of the job's units are kept; when the job's class list changed (a class added
    or removed), kept shards are rewritten with the new list in their ClassLabel metadata, rows
    unchanged (``generate.relabel_shards``), since every shard names every class."""
    name, dir, derived = "generate", "shards", ("preview", "failed_units.json")

    def key(self, job, info, upstream):
        gen = {k: v for k, v in section(job, "generate").items() if k != "seeds"}   # seeds: part of each unit
        key = {**upstream, "generate": gen}
        for name in job.spec.reads:               # only the sections this method's images depend on
            key[name] = section(job, name)
        if job.generative:                        # the DiT, and the device / dtype / threads it runs in
            key["model"] = dict(upstream["model"], transformer_sha256=info.transformer_sha256,
                                transformer_config=model_config_hash(info, "transformer_config"))
            key["compute"] = dict(upstream["compute"],
                                  generate=compute(job, job.generate.num_gpus, job.generate.num_cpus))
        return key

    def done(self, ctx):
        return len(ctx.committed_units()) == len(ctx.units)

    def run(self, ctx):
        from .generate import attach_targets, relabel_shards, run_generate
        store = ctx.store
        attach_targets(ctx.units, ctx.targets)
        self.record_key(store, ctx.keys[self.name])        # before the first shard
        names = [str(c) for c in ctx.source.classes.names]
        relabelled = relabel_shards(store, [u.shard for u in ctx.committed_units()], names)
        rec = run_generate(ctx.job, store, ctx.units, key_hash(ctx.keys[self.name]), source=ctx.source, info=ctx.info)
        if relabelled:
            rec["relabelled"] = relabelled
        if not rec.get("failed") and ctx.job.output.preview:
            from .preview import class_grids
            seed = ctx.job.generate.seeds[0]
            for name, png in class_grids(store, names, seed, names=ctx.shard_names()[seed]):
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
    """Shards (+ the random-real baselines) -> trained students scored on the real test set, per
    evaluation protocol (``evaluate`` and ``evaluate.also``): ``eval/<protocol>/<trial>.json`` per
    trial (Ray Train, one TorchTrainer per protocol) -> ``results.json`` (every protocol apart,
    with its name and version). A trial is a unit (protocol, kind, generation seed, student,
    training seed) made under ``Context.trial_hash(protocol)``: the stage's shared key, its
    protocol's own key, and every class's hash, since it trains on all classes of its seed. An added
    protocol, seed, student or training seed adds trials and keeps the others; a protocol the job
    no longer lists keeps its trials on disk, read by nothing; ``eval/_COMPLETE.json`` says which
    trials ``results.json`` was made from."""
    name, dir, derived = "evaluate", "eval", ("results.json",)
    # what a protocol's trials depend on beyond its kind: its students and training seeds only add
    # trials (each trial is a unit named by them), its name only says where they are kept
    NOT_KEYED = ("students", "train_seeds", "name")

    def protocol_key(self, p) -> dict:
        return {k: v for k, v in p.model_dump(mode="json").items() if k not in self.NOT_KEYED}

    def key(self, job, info, upstream):
        # each protocol's settings are keyed apart (``protocols``), so a protocol added to a finished
        # job reuses the others' trials (``diff``). The FID classifier and ``metrics`` shape
        # results.json's distribution block, not a trial (``_made_from``). The students train on a GPU
        # or on CPU threads (their sums depend on the count): that is in ``compute``
        e = job.evaluate
        where = ({"device": "cuda"} if e.gpus_per_worker > 0 else
                 {"device": "cpu", "threads": cpu_threads(e.cpus_per_worker)})
        return {**upstream, "protocols": {p.label: self.protocol_key(p) for p in e.protocols},
                "compute": dict(upstream["compute"], evaluate=where)}

    def diff(self, old, new):
        """Protocols are units: one the job adds, or no longer lists, is no change; one listed in
        both must have the same settings (else its finished trials would be silently redone)."""
        if not isinstance(old.get("protocols"), dict):
            return super().diff(old, new)            # recorded before protocols were keyed apart
        common = set(old["protocols"]) & set(new["protocols"])
        return super().diff({**old, "protocols": {k: old["protocols"][k] for k in sorted(common)}},
                            {**new, "protocols": {k: new["protocols"][k] for k in sorted(common)}})

    def record_key(self, store, key):
        """Record this job's key, keeping the protocols recorded before that it no longer lists (their
        trials stay on disk: listed again, they are checked against the settings that made them)."""
        old = self.recorded_key(store)
        if old is not None and isinstance(old.get("protocols"), dict):
            key = {**key, "protocols": {**old["protocols"], **key["protocols"]}}
        super().record_key(store, key)

    def _made_from(self, ctx) -> dict:
        from .evaluate import make_trials
        ev = ctx.job.evaluate
        return {"protocols": {name: {"settings": ctx.trial_hash(name), "trials": sorted(t["name"] for t in make_trials(view))}
                              for name, view in ctx.job.evaluations()},
                "metrics": ev.metrics, "classifier": ev.classifier, "features": ev.features}

    def done(self, ctx):
        if not ctx.job.evaluate.enabled:     # nothing to evaluate: done once there is a full set to evaluate
            return GENERATE.done(ctx)
        return (ctx.store.exists("results.json") and ctx.store.exists(self.dir, self.COMPLETE)
                and ctx.store.read_json(self.dir, self.COMPLETE) == self._made_from(ctx))

    def run(self, ctx):
        from . import runner
        from .evaluate import results_document, summarise
        job, store = ctx.job, ctx.store
        self.record_key(store, ctx.keys[self.name])        # before the first trial
        store.rm(self.dir, self.COMPLETE)                  # results.json is made again below
        shards = ctx.shard_names()
        summaries, trials = [], 0
        for name, view in job.evaluations():
            records = runner.run_evaluate(view, store, ctx.source, ctx.trial_hash(name), shards=shards)
            summaries.append(summarise(view, records))
            trials += len(records)
        results = results_document(job, summaries)
        if job.evaluate.metrics:      # a Ray task: the features need torch, the driver never imports it
            results["distribution"] = runner.run_distribution(job, ctx.info, shards)
        store.write_json(results, "results.json")
        store.write_json(self._made_from(ctx), self.dir, self.COMPLETE)
        return {"trials": trials, "protocols": [n for n, _ in job.evaluations()]}

    def placement(self, job, trials: int = 0, **facts):
        e = job.evaluate
        per = (f" ({len(e.protocols)} protocols, one after another)" if len(e.protocols) > 1 else "")
        return (f"1 TorchTrainer per protocol{per}, {e.num_workers} workers x ({e.cpus_per_worker} CPU, "
                f"{e.gpus_per_worker} GPU), {trials} trials")


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


def compute(job: JobConfig, gpus: float, cpus: float) -> dict:
    """Where a stage's model runs, in which dtype and, on a CPU, on how many threads, as its
    workers will resolve it: on a GPU when ``model.device`` is cuda, or auto with GPUs granted;
    the job's dtype only on a GPU (a CPU runs float32). On a CPU the thread count its workers set
    (``settings.cpu_threads`` of the CPUs they ask for, as Ray sets ``OMP_NUM_THREADS``) changes the
    bytes (a reduction split over threads sums in another order), so it is part of the key; on a
    GPU it is not. fp32-CPU and bf16-GPU bytes never share a key."""
    dev = job.model.device
    gpu = dev == "cuda" or (dev == "auto" and gpus > 0)
    if gpu:
        return {"device": "cuda", "dtype": job.model.dtype}
    return {"device": "cpu", "dtype": "float32", "threads": cpu_threads(cpus)}


def class_keys(source) -> list[dict]:
    """Each selected class's own key, in label order: its name, its label index (in the latents'
    partitions, the target ids, the shards), and the fingerprint of its own rows and files
    (``BaseSource.class_fingerprints``). Recorded per class by the encode stage and carried by
    every coreset part and shard of the class."""
    fps = source.class_fingerprints("train")
    return [{"name": str(n), "index": k, "fingerprint": fp} for k, (n, fp) in enumerate(zip(source.classes.names, fps))]


def model_config_hash(info, which: str) -> str:
    from ..models import config_sha256
    cfg = getattr(info, which, None)
    return config_sha256(cfg) if cfg else "unknown"


def stage_keys(job: JobConfig, info, source=None) -> dict[str, dict]:
    """Stage name -> its settings key (each stage's key holds the keys of the stages before it).
    The keys are job-wide: the data's classes and files are in each class's key (``class_keys``),
    so ``source`` is not read here (accepted for the callers that pass it)."""
    keys, up = {}, {}
    for s in STAGES:
        up = keys[s.name] = s.key(job, info, up)
    return keys


# ---- the settings check -----------------------------------------------------------------------
def check_settings(store: Store, keys: dict[str, dict], before: str | None = None):
    """Refuse (SettingsChanged) when a stage's recorded key differs from this job's. ``before``:
    check only the stages before that one (``--fresh STAGE`` checks them before discarding)."""
    names = STAGE_NAMES[:STAGE_NAMES.index(before)] if before else STAGE_NAMES
    diffs, older = {}, []
    for s in STAGES:
        if s.name in names:
            old = s.recorded_key(store)
            if old is not None and old.get("key_format") != keys[s.name].get("key_format"):
                older.append(s.name)
            elif old is not None and s.diff(old, keys[s.name]):
                diffs[s.name] = s.diff(old, keys[s.name])
    if older:
        # keys of the earlier form held the seeds and the data's fingerprint of all classes: what
        # these outputs were made from cannot be told class by class or seed by seed
        raise SettingsChanged(
            f"{store.uri()} holds outputs whose settings were recorded by an earlier mgd_ray, per stage "
            f"({', '.join(older)}: generation seeds and all classes in one key); this version keys each "
            f"class and seed as its own unit and cannot tell which of those outputs match this job.\n"
            f"Nothing was run{' and nothing was discarded' if before else ''}. Either write to a new output.dir, "
            f"or rerun with --fresh {older[0]} to discard the {older[0]} stage and every later one and run "
            f"them again.")
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
           "parse_stages", "stages_to_run", "stage_keys", "class_keys", "unit_class_hash", "check_settings",
           "discard_from", "compute"]
