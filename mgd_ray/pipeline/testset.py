"""The real test split for evaluation: decoded once per job, in parallel, cached under ``output.dir``.

``prepare_testset`` (the driver, before the Train workers start) builds a Ray Data pipeline over the
source's test split (decode + resize / centre crop to ``evaluate.image_size`` in ``map_batches``
tasks of ``ROWS_PER_TASK`` images, the same geometry as ``data.fit_batch(..., "center-crop")``), and
the same tasks write it as Parquet to
``eval/_testset/test-<hash>/`` (``id``, ``label``, ``h``, ``w``, ``c``, ``pixels``: the uint8 HWC bytes
of each image), then commits ``_COMPLETE.json`` there. ``<hash>`` is that of ``testset_key``: what
shapes the pixels (the test split's fingerprint, the image size, ``data.test_limit_per_class``, the
classes), so a job with another image size never reads this one's cache. A rerun (or a resumed
evaluation with more students) finds the marker and reads nothing else; ``--fresh evaluate``
discards it with ``eval/``. Other keys' caches are removed once a new one is committed.

``read_testset`` (a Ray task of the runner) turns the cache back into ``(uint8 NHWC, labels)``
ordered by id; the Train workers map that from the object store.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time

import numpy as np

from ..config import JobConfig
from ..data.errors import DataError
from .store import Store, job_store

log = logging.getLogger("mgd_ray")

DIR = ("eval", "_testset")
COMPLETE = "_COMPLETE.json"
FORMAT = "1"            # the cache's layout; a change makes a new key
MODE = "center-crop"    # the evaluation geometry (as the one-task loader's fit_batch)
# Tasks follow the data: one per ROWS_PER_TASK images (one Parquet file each), a whole CPU each.
# Measured on the 2-core box (benchmarks/eval_data.py, 6,000 PNGs): 256-row blocks of 0.25 CPU start a
# worker process per block and took 20.9 s against one task's 2.7 s; these tasks took 2.6 s. Nothing
# else holds CPUs while it runs (the Train workers start after it), so whole CPUs cannot starve an
# actor pool here.
NUM_CPUS = 1.0
ROWS_PER_TASK = 2000
BATCH = 256             # images decoded at a time inside a task (full-size images in memory)


def testset_key(job: JobConfig, source) -> dict:
    """What the cached pixels depend on (and nothing else)."""
    fp = source.fingerprint("test") if hasattr(source, "fingerprint") else None
    return {"format": FORMAT, "source": job.data.source, "fingerprint": fp, "image_size": job.evaluate.image_size,
            "mode": MODE, "test_limit_per_class": job.data.test_limit_per_class,
            "classes": list(source.classes.names)}


def testset_name(key: dict) -> str:
    return "test-" + hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---- the Ray Data pipeline ------------------------------------------------------------------
def _fit(batch: dict, size: int) -> dict:
    """map_batches: images of a driver-built dataset (in-memory sources) -> ``size`` (centre crop)."""
    from ..data import fit_batch
    return {**batch, "image": fit_batch(list(batch["image"]) if batch["image"].dtype == object else batch["image"],
                                        size, MODE)}


def _to_rows(batch: dict):
    """map_batches: decoded images -> the cache's columns (plain Parquet, readable without Ray)."""
    import pyarrow as pa

    imgs = batch["image"]
    if imgs.dtype == object:
        shapes = {np.asarray(im).shape for im in imgs}
        if len(shapes) > 1:
            raise DataError(f"test images have different sizes ({', '.join(map(str, sorted(shapes)[:3]))}); "
                            "set evaluate.image_size to bring them to one size")
        imgs = np.stack([np.asarray(im) for im in imgs]) if len(imgs) else np.zeros((0, 1, 1, 1), np.uint8)
    imgs = np.asarray(imgs, dtype=np.uint8)
    if imgs.ndim == 3:
        imgs = imgs[..., None]
    n = len(imgs)
    h, w, c = imgs.shape[1:] if n else (0, 0, 0)
    flat = np.ascontiguousarray(imgs).reshape(n, -1)
    offsets = np.arange(n + 1, dtype=np.int32) * flat.shape[1]
    pixels = pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(flat)])
    full = lambda v: pa.array(np.full(n, v, dtype=np.int32))  # noqa: E731
    return pa.table({"id": pa.array(np.asarray(batch["id"], dtype=np.int64)),
                     "label": pa.array(np.asarray(batch["label"], dtype=np.int64)),
                     "h": full(h), "w": full(w), "c": full(c), "pixels": pixels})


def testset_dataset(source, image_size: int | None, failures_dir: str | None = None,
                    failures_storage_options: dict | None = None):
    """The test split as a Ray Dataset of the cache's columns: files decoded and fitted in parallel
    ``map_batches`` tasks (imagefolder, parquet); an in-memory source's arrays are fitted in tasks."""
    from ..data.base import BaseSource
    if type(source).ray_dataset is BaseSource.ray_dataset:      # built from arrays in the driver
        ds = source.ray_dataset("test", rows_per_block=ROWS_PER_TASK)
        if image_size is not None:
            ds = ds.map_batches(_fit, fn_kwargs={"size": int(image_size)}, batch_format="numpy",
                                batch_size=BATCH, num_cpus=NUM_CPUS)
    else:
        ds = source.ray_dataset("test", image_size=image_size, mode=MODE, rows_per_block=ROWS_PER_TASK,
                                batch_size=BATCH, num_cpus=NUM_CPUS, failures_dir=failures_dir,
                                failures_storage_options=failures_storage_options)
    return ds.map_batches(_to_rows, batch_format="numpy", batch_size=None, num_cpus=NUM_CPUS)


# ---- build / reuse ----------------------------------------------------------------------------
def prepare_testset(job: JobConfig, store: Store, source) -> dict:
    """Build the cache of the job's test split unless it is committed; -> its marker record
    (``name``, ``rows``, ``shape``, ``seconds``, ``failures``) plus ``reused``."""
    key = testset_key(job, source)
    name = testset_name(key)
    if store.exists(*DIR, name, COMPLETE):
        rec = store.read_json(*DIR, name, COMPLETE)
        if rec.get("key") == key:
            log.info(f"evaluate: reusing the decoded test split ({rec['rows']} images {tuple(rec['shape'])}) "
                     f"from {store.uri(*DIR, name)}")
            return {**rec, "reused": True}
    t0 = time.time()
    fails = f"{name}.tmp-failures"
    store.rm(*DIR, name)                       # a half-written cache: Ray Data's write does not resume
    store.rm(*DIR, fails)
    ds = testset_dataset(source, job.evaluate.image_size, failures_dir=store.uri(*DIR, fails),
                         failures_storage_options=store.storage_options or None)
    store.check_fence()        # Ray Data writes the parts itself; the marker after them is a fenced commit
    ds.write_parquet(store.path(*DIR, name), filesystem=store.arrow_fs())     # fused into the decode tasks
    from ..data import check_failure_limit, read_failures
    ft = read_failures(store.uri(*DIR, fails), store.storage_options or None)
    failures = sorted(zip(*[ft.column(k).to_pylist() for k in ("path", "split", "error")])) if ft.num_rows else []
    store.rm(*DIR, fails)
    check_failure_limit(failures, job.data.max_failures, "the test split")
    ids, shape = _index(store, name)
    if len(np.unique(ids)) != len(ids):
        raise DataError(f"the test split of {job.data.source} has repeated ids; cannot cache it")
    rec = {"key": key, "name": name, "rows": int(len(ids)), "shape": list(shape),
           "bytes": int(len(ids) * int(np.prod(shape))), "seconds": round(time.time() - t0, 2),
           "failures": len(failures), "failed": [list(f) for f in failures[:1000]]}
    store.write_json(rec, *DIR, name, COMPLETE)
    for other in store.ls(*DIR):
        if other != name and other.startswith("test-"):
            store.rm(*DIR, other)              # another image size / split: never read again
    log.info(f"evaluate: decoded the test split ({rec['rows']} images {tuple(shape)}) in parallel in "
             f"{rec['seconds']:.1f}s -> {store.uri(*DIR, name)}"
             + (f"; {len(failures)} unreadable image(s) skipped" if failures else ""))
    return {**rec, "reused": False}


def _files(store: Store, name: str) -> list[str]:
    return store.ls(*DIR, name, suffix=".parquet")


def _index(store: Store, name: str) -> tuple[np.ndarray, tuple[int, int, int]]:
    """(ids, (h, w, c)) of a written cache (no pixels read); one image shape or DataError."""
    ids, shapes = [], set()
    for f in _files(store, name):
        t = store.read_table(*DIR, name, f, columns=["id", "h", "w", "c"])
        ids.append(t.column("id").to_numpy())
        shapes |= set(zip(*[t.column(k).to_numpy().tolist() for k in "hwc"]))
    if not ids or not sum(len(i) for i in ids):
        raise DataError("the test split has no readable images: nothing to evaluate on")
    if len(shapes) != 1:
        raise DataError(f"test images have different sizes ({', '.join(map(str, sorted(shapes)[:3]))}); "
                        "set evaluate.image_size to bring them to one size")
    return np.concatenate(ids), next(iter(shapes))


def read_testset(store: Store, name: str) -> tuple[np.ndarray, np.ndarray]:
    """The committed cache ``name`` -> (images uint8 (N, H, W, C), labels int64 (N,)), by id; each
    image is copied once, from the Parquet buffers into its place in the output."""
    import pyarrow as pa

    if not store.exists(*DIR, name, COMPLETE):
        raise FileNotFoundError(f"no committed test-split cache {store.uri(*DIR, name)}")
    rec = store.read_json(*DIR, name, COMPLETE)
    h, w, c = rec["shape"]
    tables = [store.read_table(*DIR, name, f) for f in _files(store, name)]
    ids = np.concatenate([t.column("id").to_numpy() for t in tables])
    labels = np.concatenate([t.column("label").to_numpy() for t in tables]).astype(np.int64)
    if len(ids) != rec["rows"]:
        raise DataError(f"{store.uri(*DIR, name)} holds {len(ids)} rows, its marker says {rec['rows']}: "
                        "rerun with --fresh evaluate")
    order = np.argsort(ids, kind="stable")
    place = np.empty(len(ids), dtype=np.int64)
    place[order] = np.arange(len(ids))
    out = np.empty((len(ids), h * w * c), dtype=np.uint8)
    row = 0
    for t in tables:
        for chunk in t.column("pixels").chunks:
            k = len(chunk)
            if not k:
                continue
            off_type = np.int64 if pa.types.is_large_binary(chunk.type) else np.int32
            offsets = np.frombuffer(chunk.buffers()[1], dtype=off_type)[chunk.offset:chunk.offset + k + 1]
            data = np.frombuffer(chunk.buffers()[2], dtype=np.uint8)
            if offsets[-1] - offsets[0] != k * h * w * c:
                raise DataError(f"{store.uri(*DIR, name)}: pixel bytes do not match the shape {(h, w, c)}")
            out[place[row:row + k]] = data[offsets[0]:offsets[-1]].reshape(k, -1)
            row += k
    return out.reshape(len(ids), h, w, c), labels[order]


def load_testset(jd: dict, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A Ray task: the cached test split into the object store (the Train workers map it)."""
    return read_testset(job_store(JobConfig.model_validate(jd)), name)
