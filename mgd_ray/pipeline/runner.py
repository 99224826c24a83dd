"""Ray wiring of the encode (Ray Data actor pool), coreset (Ray tasks) and evaluate (Ray Train
``TorchTrainer``) stages, and ``init_ray``; the generate stage's is ``generate.py``. Which work
runs and what is reused is the stage objects' call (``stage.py``); these functions do the work.

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
from .progress import Progress, polled
from .workers import Encoder
from .nodes import record_node
from .settings import cpu_threads
from .store import Store, job_store

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
        # one node never drains: Ray Train's PreemptionWatcher has nothing to watch, and creating it
        # (actor handles as constructor args, max_restarts -1) logs an alarming core_worker.cc ERROR
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        n = job.ray.num_cpus or max(4, os.cpu_count() or 1)
        # Ray Train's PlacementGroupCleaner asks the State API (served by the dashboard) every
        # second whether the Train controller lives; without a dashboard each ask logs a warning
        dash = job.ray.include_dashboard or job.evaluate.enabled
        kw = dict(num_cpus=n, include_dashboard=dash, log_to_driver=True)
        if dash:
            port = _free_port()
            # workers that ask the State API with no address (Train's PlacementGroupCleaner) would
            # otherwise look for "the" local Ray and fail when another one runs on this machine
            kw.update(dashboard_host="127.0.0.1", dashboard_port=port,
                      runtime_env={"env_vars": {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}})
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
def run_encode(job: JobConfig, store: Store, source, image_size: int, labels: list[int] | None = None,
               keep_failures: bool = False) -> dict:
    """Encode the train split, or only the classes ``labels``, into ``latents/label=<k>/`` (Ray
    Data: read -> encoder actor pool -> Parquet, appended beside the partitions already there);
    -> the run's record (seconds, images/s). What to reuse is the stage's call
    (``stage.EncodeStage``: it removes the partitions about to be written first); this only does
    the work. ``keep_failures``: the unreadable images listed by an earlier run stay listed."""
    import ray
    import ray.data

    t0 = time.time()
    n = source.num_rows("train", classes=labels)
    e = job.encode
    size = job.encode.image_size or image_size
    store.rm("failures_parts")
    ds = source.ray_dataset("train", classes=labels, image_size=size,
                            mode=e.preprocess if e.preprocess != "none" else "center-crop",
                            failures_dir=store.uri("failures_parts"),
                            failures_storage_options=store.storage_options or None)
    counter = ray.remote(RowCounter).options(num_cpus=0).remote()
    ds = ds.map_batches(CountingEncoder, fn_constructor_kwargs={"job": job_dict(job), "counter": counter,
                                                                "threads": cpu_threads(e.num_cpus)},
                        compute=ray.data.ActorPoolStrategy(min_size=e.min_actors, max_size=e.max_actors),
                        num_cpus=e.num_cpus, num_gpus=e.num_gpus or None, batch_size=e.batch_size,
                        batch_format="numpy")
    store.check_fence()   # Ray Data writes the latents itself; the stage's record after it is a fenced commit
    try:
        with polled(Progress("encode", n, "images"), lambda: ray.get(counter.get.remote(), timeout=30)):
            ds.write_parquet(store.path("latents"), filesystem=store.arrow_fs(), partition_cols=["label"],
                             min_rows_per_file=min(n, 20000))
    finally:
        ray.kill(counter)
    el = time.time() - t0
    collect_failures(store, source, job.data.max_failures, keep_old=keep_failures)
    rec = {"seconds": round(el, 2), "images_per_s": round(n / max(el, 1e-9), 1)}
    _say(f"encode: {n} images -> latents in {el:.1f}s ({rec['images_per_s']:.0f} img/s)")
    return rec


def partition_rows(store: Store, label: int) -> int:
    """Rows of one class's committed latents (Parquet footers only). Listed afresh: Ray Data's
    workers wrote them, and an object store's client caches listings."""
    import pyarrow.dataset as pads
    if f"label={label}" not in store.ls("latents"):
        return 0
    p = store.path("latents", f"label={label}")
    store.fs.invalidate_cache(p)
    return int(pads.dataset(p, filesystem=store.arrow_fs(), format="parquet").count_rows())


class RowCounter:
    """A zero-CPU actor the encoder actors report their rows to (the driver polls it)."""

    def __init__(self):
        self.n = 0

    def add(self, k: int):
        self.n += int(k)

    def get(self) -> int:
        return self.n


class CountingEncoder(Encoder):
    """The encode stage, reporting each batch's rows to a ``RowCounter``. The report is awaited
    (one small round trip per batch), so when the write returns the counter holds every row."""

    def __init__(self, job: dict, threads: int, counter):
        super().__init__(job, threads)
        self.counter = counter

    def __call__(self, batch):
        out = super().__call__(batch)
        import ray
        ray.get(self.counter.add.remote(len(out["id"])))
        return out


def collect_failures(store: Store, source, max_failures: int, keep_old: bool = False):
    """Unreadable images -> failures.parquet (beside the outputs); over the limit -> DataError.
    ``keep_old``: only some classes were encoded, so the rows already listed stay listed."""
    from ..data import check_failure_limit, failures_to_table, read_failures
    t = read_failures(store.uri("failures_parts"), store.storage_options or None)
    rows = set(zip(*[t.column(c).to_pylist() for c in ("path", "split", "error")])) if t.num_rows else set()
    rows |= set(getattr(source, "failures", []) or [])
    if keep_old and store.exists("failures.parquet"):
        old = store.read_table("failures.parquet")
        rows |= set(zip(*[old.column(c).to_pylist() for c in ("path", "split", "error")]))
    if rows:
        store.write_table(failures_to_table(rows), "failures.parquet")
        _say(f"encode: {len(rows)} unreadable image(s) skipped, listed in {store.uri('failures.parquet')}")
    check_failure_limit(len(rows), max_failures, "the train split")


# ---- coreset --------------------------------------------------------------------------------
def run_coreset(job: JobConfig, store: Store, labels: list[int], seeds: list[int], todo: dict[int, list[int]],
                settings: str = "", class_hashes: dict[int, str] | None = None) -> dict:
    """Coreset parts as Ray tasks, then the job's parts merged into ``coreset/targets.parquet``;
    -> the stage's record.

    ``todo``: label -> the generation seeds whose part (``coreset/parts/c<label>-s<seed>.parquet``)
    is to be built; the stage (``stage.CoresetStage``) found the others committed under this
    ``settings`` hash and each class's hash (``class_hashes``), which every part built here carries
    in its footer. Fan-out follows the data, not the cluster's CPUs at this instant: one task per
    ``coreset.latents_per_task`` latents (whole classes, at least one class per task), each
    asking for ``coreset.num_cpus``, so on an autoscaling cluster (a 0-CPU head) the pending
    tasks make the autoscaler add workers.
    """
    import ray

    t0 = time.time()
    c = job.coreset
    classes = [lab for lab in labels if todo.get(lab)]
    n_rows = int(store.read_json("latents", "_COMPLETE.json").get("rows", 0))
    per_task = max(1, c.latents_per_task * len(labels) // max(1, n_rows))            # classes per task
    groups = [classes[i:i + per_task] for i in range(0, len(classes), per_task)]
    task = ray.remote(_coreset_task).options(num_cpus=c.num_cpus)
    jd = ray.put(job_dict(job))
    hashes = class_hashes or {}
    n_parts = sum(len(todo[lab]) for lab in classes)
    _say(f"coreset: {n_parts} of {len(labels) * len(seeds)} parts (class x seed) to build "
         f"({len(labels) * len(seeds) - n_parts} kept), {len(classes)} class(es) in {len(groups)} task(s) of "
         f"<= {per_task} class(es), {c.num_cpus:g} CPU each")
    done = ray.get([task.remote(jd, g, seeds, cpu_threads(c.num_cpus), settings,
                                {lab: hashes.get(lab, "") for lab in g}, {lab: todo[lab] for lab in g})
                    for g in groups])
    n = ray.get(ray.remote(_merge_task).options(num_cpus=min(1.0, c.num_cpus)).remote(jd, list(labels), list(seeds)))
    rec = {"targets": n, "tasks": len(groups), "classes_per_task": per_task, "classes_built": len(classes),
           "parts_built": sum(d["parts"] for d in done), "targets_built": sum(d["targets"] for d in done),
           "engine": sorted({d["engine"] for d in done}) or None}
    _say(f"coreset: {n} targets for {len(labels)} classes x {len(seeds)} seeds "
         f"({job.coreset_method}) in {time.time() - t0:.1f}s")
    return rec


def _coreset_task(jd: dict, labels: list[int], seeds: list[int], threads: int, settings: str = "",
                  class_hashes: dict | None = None, todo: dict | None = None) -> dict:
    """One coreset task; its engine follows the GPUs Ray granted it, not those its node has (no
    grant: numpy, and the node's GPUs hidden before faiss or torch can open them). ``todo``:
    label -> seeds to build (default: every seed of every label)."""
    from .accel import gpus_as_granted
    from .workers import write_class_targets
    j = JobConfig.model_validate(jd)
    store = job_store(j)
    record_node(store, "coreset")
    with gpus_as_granted() as gpus:
        return write_class_targets(j, store, labels, seeds, threads=threads, gpus=len(gpus), settings=settings,
                                   class_hashes=class_hashes, todo=todo)


def _merge_task(jd: dict, labels: list[int], seeds: list[int]) -> int:
    from .workers import merge_target_parts
    j = JobConfig.model_validate(jd)
    return merge_target_parts(job_store(j), labels, seeds)


# ---- evaluate -------------------------------------------------------------------------------
def run_evaluate(job: JobConfig, store: Store, source, settings: str = "",
                 shards: dict[int, list[str]] | None = None) -> list[dict]:
    """All trials of ``job``'s evaluation protocol (``job.evaluate`` is one protocol: the stage calls
    this once per protocol, ``JobConfig.evaluations``) in ONE TorchTrainer: worker r trains trials
    r, r+W, ... (no DDP). ``shards``:
    generation seed -> the job's shard names of that seed (what a trial of the seed trains on;
    default: every shard of the seed under ``shards/``).

    Why not a Trainer per trial: on these small students a ``fit()`` costs ~15 s of set-up
    (controller, worker group, gloo) against seconds of training, so one worker group that
    shares out the trials is several times faster; trials are independent, so there is
    nothing to all-reduce. Each finished trial is committed to ``eval/<protocol>/`` (resumable).

    The TorchTrainer is built and fitted in a Ray task (``_fit_task``, 0 CPUs), not here:
    ``ray.train.torch`` imports torch, and the driver never does (``mgd_ray.isolated``).
    """
    from .evaluate import committed_trial, make_trials, trial_path, trials_progress
    trials = make_trials(job)
    todo = [t for t in trials if committed_trial(store, t, settings) is None]
    proto = job.evaluate.label
    _say(f"evaluate [{proto}]: {len(trials)} trials ({len(todo)} to run): "
         f"{', '.join(t['name'] for t in trials[:6])}{' ...' if len(trials) > 6 else ''}")
    if todo:
        import ray
        size = job.evaluate.image_size
        ev = job.evaluate
        jd = job_dict(job)
        # the evaluation images go by reference, uint8: the real test split decoded once per job in
        # parallel (Ray Data) into a cache under output.dir (testset.py), read back by a task into the
        # object store; Train workers map them zero-copy (one copy per node), float per batch
        from .testset import load_testset, prepare_testset
        ts = prepare_testset(job, store, source)
        test = ray.remote(load_testset).options(num_cpus=min(1.0, ev.cpus_per_worker)).remote(jd, ts["name"])
        load = ray.remote(_load_eval_set).options(num_cpus=min(1.0, ev.cpus_per_worker))
        baseline_sets = {}
        if "random-real" in ev.baselines and job.method != "random-real":
            # only the baseline's rows are read: IPC random real images per class, one subset per seed
            from .evaluate import random_real_subset
            _, _, labels_all = source.select("train")
            for s in job.generate.seeds:
                baseline_sets[str(s)] = load.remote(jd, "train", random_real_subset(labels_all, job.generate.ipc, s),
                                                    size)
        W = max(1, min(ev.num_workers, len(todo)))
        cfg = {"job": jd, "trials": todo, "test": test, "baseline_sets": baseline_sets, "settings": settings,
               "num_classes": len(source.classes), "class_names": list(source.classes.names),
               "threads": cpu_threads(ev.cpus_per_worker),
               "shards": {str(k): v for k, v in (shards or {}).items()}}

        t0 = time.time()
        fit = ray.remote(_fit_task).options(num_cpus=0, name=f"evaluate-fit-{job.name}-{proto}")
        # the Train workers commit eval/<protocol>/<trial>.json and, while training, its progress file
        with polled(Progress(f"evaluate [{proto}]", len(todo), "trials", every=10.0),
                    lambda: trials_progress(store, todo), poll=5.0):
            ray.get(fit.remote(cfg, W, f"eval-{job.name}-{proto}"))
        store.rm("eval", "_progress")
        _say(f"evaluate [{proto}]: {len(todo)} trials on {W} Train worker(s) in {time.time() - t0:.1f}s")
    return [store.read_json(*trial_path(t)) for t in trials]


def run_distribution(job: JobConfig, info, shards: dict[int, list[str]] | None = None) -> dict:
    """The distribution metrics (``metrics.compute_distribution``: FID-style features of the
    distilled and real images) in a Ray task, where torch is: not in the driver."""
    import ray

    from ..inception import uses_inception
    ev = job.evaluate
    # Inception-v3 over ~10,000 real + IPC x classes distilled images at 299 px: on a GPU where the job has them
    gpus = min(1.0, ev.gpus_per_worker) if uses_inception(job) else 0
    task = ray.remote(_distribution_task).options(num_cpus=min(1.0, ev.cpus_per_worker), num_gpus=gpus)
    return ray.get(task.remote(job_dict(job), info, shards))


def _distribution_task(jd: dict, info, shards) -> dict:
    from ..data import open_source
    from .metrics import compute_distribution
    j = JobConfig.model_validate(jd)
    return compute_distribution(j, job_store(j), open_source(j.data), info, shards=shards)


def _train_loop(config: dict):
    """One Train worker: its share of the trials (``evaluate.run_trials``)."""
    import ray.train

    from .evaluate import run_trials
    out = config["job"]["output"]
    record_node(Store(out["dir"], out["storage_options"], fence=out.get("lease_epoch")), "evaluate")
    ctx = ray.train.get_context()
    recs = run_trials(config, ctx.get_world_rank(), ctx.get_world_size())
    ray.train.report({"trials_done": len(recs)})


def _fit_task(cfg: dict, workers: int, name: str) -> None:
    """Build and fit the evaluation's TorchTrainer (a Ray task: torch is imported here, not in the
    driver); Train's run directory is a temporary directory of this task's node."""
    import tempfile

    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    ev = JobConfig.model_validate(cfg["job"]).evaluate
    with tempfile.TemporaryDirectory(prefix="mgd-train-") as tmp:
        TorchTrainer(
            _train_loop, train_loop_config=cfg,
            torch_config=TorchConfig(backend="gloo"),  # trials never all-reduce; nccl would need CUDA
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=ev.gpus_per_worker > 0,
                                         resources_per_worker={"CPU": ev.cpus_per_worker,
                                                               **({"GPU": ev.gpus_per_worker}
                                                                  if ev.gpus_per_worker else {})}),
            run_config=RunConfig(name=name, storage_path=tmp)).fit()


def _load_eval_set(jd: dict, split: str, index, size: int | None):
    """(images uint8 (N, H, W, C) at ``size``, labels int64 (N,)) of a split, or of its rows
    ``index``; runs as a Ray task so the pixels land in the object store, not in the driver."""
    from ..data import open_source
    from .evaluate import fit
    src = open_source(JobConfig.model_validate(jd).data)
    a = (src.arrays(split, image_size=size, mode="center-crop") if index is None
         else src.arrays_at(split, index, image_size=size, mode="center-crop"))
    return np.ascontiguousarray(fit(a["image"], size)), np.asarray(a["label"], dtype=np.int64)
