"""The one module that wires Ray: encode (Ray Data actor pool) -> coreset (Ray tasks) ->
generate (a fixed pool of generator actors) -> evaluate (Ray Train ``TorchTrainer``).

Resource rules that keep a 2-core laptop from deadlocking (see the field notes): encoder
actors are an ``ActorPoolStrategy(min, max)`` with fractional CPUs, Train workers ask for a
fraction of a CPU, and a locally started Ray gets at least 4 logical CPUs.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np

from ..config import JobConfig
from .store import Store
from .units import Unit

log = logging.getLogger("mgd_ray")


def _say(msg: str):
    log.info(msg)


def init_ray(job: JobConfig):
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")   # local Ray listens on loopback only
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    if ray.is_initialized():
        return ray
    address = job.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        _say(f"attached to Ray cluster at {address}: {ray.cluster_resources().get('CPU', 0):.0f} CPUs, "
             f"{ray.cluster_resources().get('GPU', 0):.0f} GPUs")
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private, loopback-only cluster
        n = job.ray.num_cpus or max(4, os.cpu_count() or 1)
        # Ray Train's PlacementGroupCleaner asks the State API (served by the dashboard) every
        # second whether the Train controller lives; without a dashboard each ask logs a warning
        dash = job.ray.include_dashboard or job.evaluate.enabled
        kw = dict(num_cpus=n, include_dashboard=dash, log_to_driver=True)
        if dash:
            kw.update(dashboard_host="127.0.0.1", dashboard_port=_free_port())
        if job.ray.object_store_memory:
            kw["object_store_memory"] = job.ray.object_store_memory
        ray.init(**kw)
        _say(f"started a local Ray with {n} logical CPUs (machine has {os.cpu_count()})")
    import ray.data
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    return ray


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def job_dict(job: JobConfig) -> dict:
    return job.model_dump(mode="json")


# ---- encode ---------------------------------------------------------------------------------
def run_encode(job: JobConfig, store: Store, source, cache_key: dict, image_size: int) -> dict:
    import ray.data

    from .stages import Encoder
    if store.exists("latents", "_COMPLETE.json"):
        prev = store.read_json("latents", "_COMPLETE.json")
        if prev.get("key") == cache_key:
            _say(f"encode: reusing cached latents ({prev['rows']} rows) from {store.uri('latents')}")
            return prev
        _say("encode: cached latents were made with other data/model settings; re-encoding")
    store.rm("latents")
    t0 = time.time()
    n = source.num_rows("train")
    e = job.encode
    size = job.encode.image_size or image_size
    store.rm("failures_parts")
    ds = source.ray_dataset("train", image_size=size, mode=e.preprocess if e.preprocess != "none" else "center-crop",
                            failures_dir=store.uri("failures_parts"),
                            failures_storage_options=store.storage_options or None)
    ds = ds.map_batches(Encoder, fn_constructor_kwargs={"job": job_dict(job), "threads": max(1, int(e.num_cpus))},
                        compute=ray.data.ActorPoolStrategy(min_size=e.min_actors, max_size=e.max_actors),
                        num_cpus=e.num_cpus, num_gpus=e.num_gpus or None, batch_size=e.batch_size,
                        batch_format="numpy")
    ds.write_parquet(store.path("latents"), filesystem=store.arrow_fs(), partition_cols=["label"],
                     min_rows_per_file=min(n, 20000))
    el = time.time() - t0
    collect_failures(store, source, job.data.max_failures)
    rec = {"key": cache_key, "rows": n, "seconds": round(el, 2), "images_per_s": round(n / max(el, 1e-9), 1)}
    store.write_json(rec, "latents", "_COMPLETE.json")
    _say(f"encode: {n} images -> latents in {el:.1f}s ({rec['images_per_s']:.0f} img/s)")
    return rec


def collect_failures(store: Store, source, max_failures: int):
    """Unreadable images -> failures.parquet (beside the outputs); over the limit -> DataError."""
    from ..data import check_failure_limit, failures_to_table, read_failures
    t = read_failures(store.uri("failures_parts"), store.storage_options or None)
    rows = set(zip(*[t.column(c).to_pylist() for c in ("path", "split", "error")])) if t.num_rows else set()
    rows |= set(getattr(source, "failures", []) or [])
    if rows:
        store.write_table(failures_to_table(rows), "failures.parquet")
        _say(f"encode: {len(rows)} unreadable image(s) skipped, listed in {store.uri('failures.parquet')}")
    check_failure_limit(len(rows), max_failures, "the train split")


# ---- coreset --------------------------------------------------------------------------------
def run_coreset(job: JobConfig, store: Store, labels: list[int], cache_key: dict) -> list[dict]:
    import ray

    from .stages import build_class_targets, targets_table
    if store.exists("coreset", "targets.parquet") and store.exists("coreset", "_COMPLETE.json"):
        if store.read_json("coreset", "_COMPLETE.json").get("key") == cache_key:
            t = store.read_table("coreset", "targets.parquet").to_pylist()
            _say(f"coreset: reusing {len(t)} targets from {store.uri('coreset', 'targets.parquet')}")
            return t
    t0 = time.time()

    @ray.remote(num_cpus=1)
    def coreset_task(jd, chunk, seeds):
        j = JobConfig.model_validate(jd)
        s = Store(j.output.dir, j.output.storage_options)
        return [r for lab in chunk for g in seeds for r in build_class_targets(j, s, lab, g, threads=1)]

    # a task per ~20k latents (small data: one task; each task pays a worker start-up)
    n_rows = int(store.read_json("latents", "_COMPLETE.json").get("rows", 0))
    n_tasks = max(1, min(len(labels), int(ray.cluster_resources().get("CPU", 1)), n_rows // 20000))
    chunks = [labels[i::n_tasks] for i in range(n_tasks)]
    jd = ray.put(job_dict(job))
    refs = [coreset_task.remote(jd, c, list(job.generate.seeds)) for c in chunks if c]
    rows = [r for part in ray.get(refs) for r in part]
    table = targets_table(rows)
    store.write_table(table, "coreset", "targets.parquet")
    store.write_json({"key": cache_key, "targets": len(rows)}, "coreset", "_COMPLETE.json")
    _say(f"coreset: {len(rows)} targets for {len(labels)} classes x {len(job.generate.seeds)} seeds "
         f"({job.coreset_method}) in {time.time() - t0:.1f}s")
    return table.to_pylist()


# ---- generate -------------------------------------------------------------------------------
def attach_targets(units: list[Unit], targets: list[dict]):
    by = {}
    for t in targets:
        by.setdefault((int(t["gen_seed"]), int(t["label"])), []).append(t)
    for u in units:
        rows = sorted(by.get((u.gen_seed, u.label), []), key=lambda r: r["index"])
        u.targets = [r for r in rows if u.start <= r["index"] < u.start + u.count]
        if len(u.targets) != u.count:
            raise RuntimeError(f"unit {u.name}: expected {u.count} targets, found {len(u.targets)}")


def run_generate(job: JobConfig, store: Store, units: list[Unit], settings_hash: str = "") -> dict:
    """Generate every uncommitted unit on a pool of generator actors; never raises for a unit.

    Work goes only to live actors. An actor that died after its Ray restarts is killed for good
    and replaced by a fresh one (up to ``num_actors * (max_retries + 1)`` replacements); the groups
    it held are recorded as failed. Only when no actor can run are the remaining groups failed
    too. Failed units are listed in ``failed_units.json``; a rerun runs only the missing units.
    """
    from collections import deque

    import ray
    from ray.exceptions import RayActorError

    from .stages import GeneratorWorker
    g = job.generate
    done = set(store.ls("shards", suffix=".parquet"))
    todo = [u for u in units if u.shard not in done]
    _say(f"generate: {len(units)} units, {len(units) - len(todo)} already committed, {len(todo)} to run "
         f"on {g.num_actors} actor(s)")
    if not todo:
        store.rm("failed_units.json")
        return {"units": len(units), "ran": 0, "images": 0, "seconds": 0.0, "failed": 0}
    Actor = ray.remote(GeneratorWorker).options(
        num_cpus=g.num_cpus, num_gpus=g.num_gpus or None, max_restarts=g.max_retries,
        max_task_retries=g.max_retries)
    threads = max(1, int(g.num_cpus))
    slots = min(g.num_actors, len(todo))
    live = [Actor.remote(job_dict(job), threads, settings_hash) for _ in range(slots)]
    spare = slots * (g.max_retries + 1)   # fresh actors allowed once an actor's restarts are used up
    # group units so one DiT batch can hold generate.batch_size images across classes
    group = max(1, g.batch_size // max(1, g.targets_per_unit))
    pending = deque(todo[i:i + group] for i in range(0, len(todo), group))
    in_flight = {}
    t0 = time.time()
    images, finished, failed, replaced = 0, 0, [], 0
    per_actor = 2

    def fail(grp, error: str):
        failed.extend({"unit": u.name, "error": error} for u in grp)
        log.error("generate: units %s failed: %s", [u.name for u in grp], error)

    def feed():
        for a in live:
            while pending and sum(x is a for x, _ in in_flight.values()) < per_actor:
                grp = pending.popleft()
                in_flight[a.run_units.remote(grp)] = (a, grp)

    feed()
    last_log = 0.0
    while in_flight:
        ready, _ = ray.wait(list(in_flight), num_returns=1)
        a, grp = in_flight.pop(ready[0])
        try:
            res = ray.get(ready[0])
            images += res["images"]
            finished += len(grp)
        except RayActorError as e:  # the actor is gone for good (Ray already used its restarts)
            fail(grp, f"generator actor died: {str(e).splitlines()[0][:300]}")
            if any(x is a for x in live):
                live[:] = [x for x in live if x is not a]
                ray.kill(a, no_restart=True)
                if spare > 0:
                    spare -= 1
                    replaced += 1
                    live.append(Actor.remote(job_dict(job), threads, settings_hash))
                    log.warning("generate: a generator actor died after %d restart(s); started a replacement",
                                g.max_retries)
        except Exception as e:  # the unit's own error, after its task retries; the actor lives on
            fail(grp, str(e).splitlines()[0][:500])
        if not live:
            while pending:
                fail(pending.popleft(), "no generator actor could run (every actor and replacement died)")
        feed()
        now = time.time()
        if now - last_log > 5 or not in_flight:
            el = now - t0
            rate = images / max(el, 1e-9)
            left = sum(u.count for grp_ in pending for u in grp_) + sum(u.count for _, grp_ in in_flight.values()
                                                                        for u in grp_)
            eta = left / rate if rate > 0 else float("nan")
            classes_done = len({u.label for u in todo}) if not pending and not in_flight else "-"
            _say(f"generate: {finished}/{len(todo)} units, {images} images, {rate:.2f} img/s, ETA {eta:.0f}s"
                 + (f", {classes_done} classes done" if classes_done != "-" else ""))
            last_log = now
    for a in live:
        ray.kill(a)
    if failed:
        store.write_json(failed, "failed_units.json")
    else:
        store.rm("failed_units.json")
    el = time.time() - t0
    return {"units": len(units), "ran": len(todo), "images": images, "seconds": round(el, 2),
            "images_per_s": round(images / max(el, 1e-9), 3), "failed": len(failed), "actors_replaced": replaced}


# ---- evaluate -------------------------------------------------------------------------------
def run_evaluate(job: JobConfig, store: Store, source, tmp_dir: str) -> list[dict]:
    """All trials in ONE TorchTrainer: worker r trains trials r, r+W, ... (no DDP).

    Why not a Trainer per trial: on these small students a ``fit()`` costs ~15 s of set-up
    (controller, worker group, gloo) against seconds of training, so one worker group that
    shares out the trials is several times faster; trials are independent, so there is
    nothing to all-reduce. Each finished trial is committed to ``eval/`` (resumable).
    """
    import ray.train
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from .evaluate import make_trials, run_trials
    trials = make_trials(job)
    todo = [t for t in trials if not store.exists("eval", f"{t['name']}.json")]
    _say(f"evaluate: {len(trials)} trials ({len(todo)} to run): {', '.join(t['name'] for t in trials[:6])}"
         f"{' ...' if len(trials) > 6 else ''}")
    if todo:
        size = job.evaluate.image_size
        test = source.arrays("test", image_size=size, mode="center-crop")
        baseline_sets = {}
        if "random-real" in job.evaluate.baselines and job.method != "random-real":
            # only the baseline's rows are read: IPC random real images per class, one subset per seed
            from .evaluate import random_real_subset
            _, _, labels_all = source.select("train")
            for s in job.generate.seeds:
                sub = source.arrays_at("train", random_real_subset(labels_all, job.generate.ipc, s),
                                       image_size=size, mode="center-crop")
                baseline_sets[str(s)] = (sub["image"], sub["label"])
        ev = job.evaluate
        W = max(1, min(ev.num_workers, len(todo)))
        cfg = {"job": job_dict(job), "trials": todo, "test_images": test["image"], "test_labels": test["label"],
               "baseline_sets": baseline_sets,
               "num_classes": len(source.classes), "threads": max(1, int(ev.cpus_per_worker))}

        def loop(config):
            ctx = ray.train.get_context()
            recs = run_trials(config, ctx.get_world_rank(), ctx.get_world_size())
            ray.train.report({"trials_done": len(recs)})

        trainer = TorchTrainer(
            loop, train_loop_config=cfg,
            scaling_config=ScalingConfig(num_workers=W, use_gpu=ev.gpus_per_worker > 0,
                                         resources_per_worker={"CPU": ev.cpus_per_worker,
                                                               **({"GPU": ev.gpus_per_worker}
                                                                  if ev.gpus_per_worker else {})}),
            run_config=RunConfig(name=f"eval-{job.name}", storage_path=os.path.abspath(tmp_dir)))
        t0 = time.time()
        trainer.fit()
        _say(f"evaluate: {len(todo)} trials on {W} Train worker(s) in {time.time() - t0:.1f}s")
    return [store.read_json("eval", f"{t['name']}.json") for t in trials]
