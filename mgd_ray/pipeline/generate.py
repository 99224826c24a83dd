"""The generate stage's Ray wiring: work units -> committed shards.

Generative methods run on a pool of generator actors (``generator.GeneratorWorker``, each holding
the frozen DiT + VAE); real-image methods (random-real, herding, kcenter) are Ray tasks over
their chosen ids, with no actor and no model. Placement cannot hang: work goes only to actors
that have started (answered ``ready()``), late starters join while the stage runs, and when no
actor starts within ``generate.start_timeout_s`` the stage fails naming what it asked for and
what the cluster has.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque

from ..config import JobConfig
from .generation import Crop, pad_crop
from .progress import Progress
from .settings import committed_shards, shard_committed
from .store import Store, job_store
from .units import Unit, group_units

log = logging.getLogger("mgd_ray")
PER_ACTOR = 2   # groups in flight per actor: one on the GPU, the next reading its inputs (max_concurrency)


class PlacementError(RuntimeError):
    """No generator actor could start: the cluster cannot give what one actor asks for."""


def _say(msg: str):
    log.info(msg)


def job_dict(job: JobConfig) -> dict:
    return job.model_dump(mode="json")


def output_crop(job: JobConfig, source, info) -> Crop | None:
    """The one place the crop that undoes the encoder's padding is derived: ``encode.preprocess``
    ``pad`` at the model's size, and the native size of the train images (read from the first one;
    a source whose images differ in size is not padded to a common native size)."""
    if job.encode.preprocess != "pad":
        return None
    size = job.encode.image_size or info.image_size
    first = source.arrays_at("train", [0])["image"]
    return pad_crop("pad", size, first.shape[1:3]) if len(first) else None


def generation_inputs(job: JobConfig, source, info) -> dict:
    """What every generate worker gets from the driver (constructor arguments): the class names
    (every shard's ClassLabel names them all), the crop, and the weight hashes the driver checked."""
    return {"class_names": [str(c) for c in source.classes.names], "crop": output_crop(job, source, info),
            "weights": {"transformer": info.transformer_sha256, "vae": info.vae_sha256}}


def attach_targets(units: list[Unit], index):
    """Give every unit the ids of its targets; ``index`` is the targets' index table (or any
    table with columns gen_seed, label, index). Checks each unit's targets exist."""
    from .units import target_id
    have = set(zip(*(index.column(c).to_numpy().tolist() for c in ("gen_seed", "label", "index"))))
    for u in units:
        idx = range(u.start, u.start + u.count)
        missing = [j for j in idx if (u.gen_seed, u.label, j) not in have]
        if missing:
            raise RuntimeError(f"unit {u.name}: expected {u.count} targets, {len(missing)} missing "
                               f"(indices {missing[:5]}) in coreset/targets.parquet")
        u.target_ids = [target_id(u.gen_seed, u.label, j) for j in idx]


def run_generate(job: JobConfig, store: Store, units: list[Unit], settings_hash: str = "", *, source,
                 info) -> dict:
    """Generate every unit whose shard is not committed under ``settings_hash``; never raises for
    a unit (failed units go to ``failed_units.json``; a rerun runs only the missing ones).
    ``source`` and ``info`` (the opened data source, the driver's ``ModelInfo``) give the workers
    the class names, the crop and the weight hashes to check. Raises ``PlacementError`` when no
    generator actor starts within ``generate.start_timeout_s`` and ``WeightsMismatch`` when a
    worker loaded other weights than the driver."""
    g = job.generate
    have = committed_shards(store, store.ls("shards", suffix=".parquet"), settings_hash)
    todo = [u for u in units if u.shard not in have]
    how = f"on {g.num_actors} actor(s)" if job.generative else "as Ray tasks (real images: no model)"
    _say(f"generate: {len(units)} units, {len(units) - len(todo)} already committed, {len(todo)} to run {how}")
    if not todo:
        store.rm("failed_units.json")
        return {"units": len(units), "ran": 0, "images": 0, "dit_calls": 0, "seconds": 0.0, "failed": 0}
    inputs = generation_inputs(job, source, info)
    t0 = time.time()
    run = _run_actors if job.generative else _run_tasks
    res = run(job, store, todo, settings_hash, inputs)
    failed = res.pop("failed_units")
    if failed:
        store.write_json(failed, "failed_units.json")
    else:
        store.rm("failed_units.json")
    el = time.time() - t0
    return {"units": len(units), "ran": len(todo), **res, "seconds": round(el, 2),
            "images_per_s": round(res["images"] / max(el, 1e-9), 3), "failed": len(failed)}


class _Tally:
    """Results of finished groups, failures, and the progress line."""

    def __init__(self, todo: list[Unit]):
        self.images = self.finished = self.settled = self.dit_calls = 0
        self.reads: Counter = Counter()
        self.failed: list[dict] = []
        self.n_units = len(todo)
        self.progress = Progress("generate", sum(u.count for u in todo), "images")

    def done(self, grp, res: dict):
        self.images += res["images"]
        self.dit_calls += len(res["dit_batches"])
        self.reads.update(res.get("latent_reads", []))
        self.finished += len(grp)
        self.settled += sum(u.count for u in grp)

    def fail(self, grp, error: str):
        if not grp:
            return
        self.failed.extend({"unit": u.name, "error": error} for u in grp)
        self.settled += sum(u.count for u in grp)
        log.error("generate: units %s failed: %s", [u.name for u in grp], error)

    def update(self):
        self.progress.update(self.settled, f"; {self.finished}/{self.n_units} units"
                             + (f", {len(self.failed)} failed" if self.failed else ""))


def _why(e: BaseException, n: int = 500) -> str:
    """A worker's error in one line: the original exception (not Ray's task header)."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, BaseException):
        e = cause
    lines = [x for x in str(e).splitlines() if x.strip() and not x.startswith(("\x1b[36mray::", "ray::"))]
    return f"{type(e).__name__}: {lines[-1] if lines else ''}"[:n]


def _asked(g) -> str:
    return f"{g.num_cpus:g} CPU" + (f" + {g.num_gpus:g} GPU" if g.num_gpus else "")


def _placement_error(g, waited: float) -> PlacementError:
    import ray
    total = {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}
    free = {k: v for k, v in ray.available_resources().items() if k in ("CPU", "GPU")}
    return PlacementError(
        f"no generator actor started within {waited:.0f}s (generate.start_timeout_s): each of the "
        f"{g.num_actors} asked for {_asked(g)} (generate.num_cpus / num_gpus) and loads the models; the cluster "
        f"has {total or 'nothing'} in total, {free or 'nothing'} free now. Give it nodes with that much (an "
        f"autoscaling cluster: a worker type that has it), lower generate.num_gpus / num_cpus, or raise "
        f"generate.start_timeout_s if nodes take longer to start")


def _run_actors(job: JobConfig, store: Store, todo: list[Unit], settings_hash: str, inputs: dict) -> dict:
    """The actor pool. An actor gets work only once it has answered ``ready()`` (models loaded);
    the pool runs on the actors that started and takes late starters as they come. An actor that
    died after its Ray restarts (or whose node was lost) is killed for good and replaced (up to
    ``slots * (max_retries + 1)`` replacements); the groups it held go back in the queue, each at
    most ``max_retries`` times. With no live actor for ``start_timeout_s`` the remaining groups
    fail (or, when none ever started, ``PlacementError``)."""
    import ray
    from ray.exceptions import RayActorError

    from .generator import GeneratorWorker, WeightsMismatch
    g = job.generate
    Actor = ray.remote(GeneratorWorker).options(
        num_cpus=g.num_cpus, num_gpus=g.num_gpus or None, max_restarts=g.max_retries,
        max_task_retries=g.max_retries, max_concurrency=PER_ACTOR)
    jd, threads = job_dict(job), max(1, int(g.num_cpus))
    pending = deque(group_units(todo, g.batch_size))   # class by class; a DiT batch holds several classes' units
    slots = min(g.num_actors, len(pending))
    starting: dict = {}            # ready() ref -> actor not started yet
    live: list = []
    in_flight: dict = {}           # run_units ref -> (actor, group)
    lost: dict[tuple, int] = {}    # unit group -> times it was lost with its actor
    tally = _Tally(todo)
    spare, replaced, started, started_in_bound = slots * (g.max_retries + 1), 0, 0, None
    t0 = time.time()
    no_live_since = t0             # the start bound runs while no actor is live

    def start():
        a = Actor.remote(jd, threads, settings_hash, **inputs)
        starting[a.ready.remote()] = a

    def retire(a, why: str):
        nonlocal spare, replaced, no_live_since
        live[:] = [x for x in live if x is not a]
        ray.kill(a, no_restart=True)
        if not live and no_live_since is None:
            no_live_since = time.time()
        if spare > 0 and pending:
            spare -= 1
            replaced += 1
            start()
            log.warning("generate: a generator actor is gone (%s); started a replacement", why)

    def feed():
        for a in live:
            while pending and sum(x is a for x, _ in in_flight.values()) < PER_ACTOR:
                grp = pending.popleft()
                in_flight[a.run_units.remote(grp)] = (a, grp)

    def stop_all():
        for a in [*live, *starting.values()]:
            ray.kill(a, no_restart=True)

    for _ in range(slots):
        start()
    _say(f"generate: asked for {slots} generator actor(s) of {_asked(g)}; work starts on each as it starts")
    try:
        while pending or in_flight:
            if not live and not starting and not in_flight:
                while pending:
                    tally.fail(pending.popleft(), "no generator actor could run (every actor and replacement died)")
                break
            bound = (no_live_since if not live else t0) + g.start_timeout_s
            timeout = None if (live and started_in_bound is not None) else max(0.0, bound - time.time())
            ready, _ = ray.wait([*in_flight, *starting], num_returns=1, timeout=timeout)
            if not ready:                                       # the start bound passed
                if live:
                    started_in_bound = len(live)
                    if len(live) < slots:
                        log.warning("generate: %d of %d generator actor(s) started within %.0fs (each asks for %s); "
                                    "running on those, the others join if they start", len(live), slots,
                                    g.start_timeout_s, _asked(g))
                    continue
                if not started:
                    raise _placement_error(g, time.time() - no_live_since)
                for a in starting.values():
                    ray.kill(a, no_restart=True)
                starting.clear()
                while pending:
                    tally.fail(pending.popleft(), f"no generator actor (re)started within {g.start_timeout_s:.0f}s "
                                                  f"after the last one was lost")
                continue
            ref = ready[0]
            if ref in starting:
                a = starting.pop(ref)
                try:
                    rec = ray.get(ref)
                except RayActorError as e:                     # died while starting (its restarts used)
                    ray.kill(a, no_restart=True)
                    why = str(e).splitlines()[0][:300]
                    log.warning("generate: a generator actor died while starting: %s", why)
                    if spare > 0 and pending:
                        spare -= 1
                        replaced += 1
                        start()
                    continue
                if rec["refusal"]:
                    raise WeightsMismatch(rec["refusal"])
                live.append(a)
                started += 1
                no_live_since = None
                if started_in_bound is None and len(live) == slots:
                    started_in_bound = slots
                log.info("generate: a generator actor started on %s (%s); %d/%d live", rec["where"], rec["device"],
                         len(live), slots)
                feed()
                continue
            a, grp = in_flight.pop(ref)
            try:
                tally.done(grp, ray.get(ref))
            except RayActorError as e:   # the actor is gone for good (its restarts used, or its node lost)
                why = str(e).splitlines()[0][:300]
                key = tuple(u.name for u in grp)
                lost[key] = lost.get(key, 0) + 1
                if lost[key] <= g.max_retries:   # back in the queue (units it committed are skipped)
                    log.warning("generate: units %s lost with their actor (%s); queued again (%d/%d)",
                                list(key), why, lost[key], g.max_retries)
                    pending.append(grp)
                else:   # what it committed before it died is done (two groups run at once on an actor)
                    ok = [u for u in grp if shard_committed(store, u.shard, settings_hash)]
                    tally.done(ok, {"images": sum(u.count for u in ok), "dit_batches": []})
                    tally.fail([u for u in grp if u not in ok],
                               f"generator actor died {lost[key]} time(s) running these units: {why}")
                if any(x is a for x in live):
                    retire(a, why)
            except WeightsMismatch:
                raise
            except Exception as e:  # the unit's own error, after its task retries; the actor lives on
                tally.fail(grp, _why(e))
            feed()
            tally.update()
    finally:
        stop_all()
    return {"images": tally.images, "dit_calls": tally.dit_calls, "failed_units": tally.failed,
            "actors_replaced": replaced,
            "actors": {"asked": slots, "started": started, "started_within_bound": started_in_bound
                       if started_in_bound is not None else len(live), "start_timeout_s": g.start_timeout_s},
            "latent_reads": sum(tally.reads.values()), "classes_read": len(tally.reads)}


def _run_tasks(job: JobConfig, store: Store, todo: list[Unit], settings_hash: str, inputs: dict) -> dict:
    """Real-image methods: Ray tasks over the chosen ids (no actor, no model), class by class in
    chunks so that each task opens the source once for many units."""
    import ray

    g = job.generate
    units = [u for grp in group_units(todo, g.batch_size) for u in grp]
    per = max(1, -(-len(units) // (4 * g.num_actors)))
    chunks = [units[i:i + per] for i in range(0, len(units), per)]
    task = ray.remote(_real_units_task).options(num_cpus=g.num_cpus, max_retries=g.max_retries)
    jd = ray.put(job_dict(job))
    refs = {task.remote(jd, c, inputs["class_names"], settings_hash): c for c in chunks}
    tally = _Tally(todo)
    while refs:
        ready, _ = ray.wait(list(refs), num_returns=1)
        grp = refs.pop(ready[0])
        try:
            tally.done(grp, ray.get(ready[0]))
        except Exception as e:  # noqa: BLE001 - after its retries: these units fail, the rest go on
            tally.fail(grp, _why(e))
        tally.update()
    return {"images": tally.images, "dit_calls": 0, "failed_units": tally.failed, "tasks": len(chunks)}


def _real_units_task(jd: dict, units: list[Unit], class_names: list[str], settings_hash: str) -> dict:
    from .generator import write_real_units
    from .nodes import record_node
    job = JobConfig.model_validate(jd)
    store = job_store(job)
    record_node(store, "generate")
    return write_real_units(job, store, units, class_names, settings_hash)
