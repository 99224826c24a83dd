"""The generate stage's workers: a thin Ray actor around the pure ``GenerationPipeline``, and the
real-image path (random-real, herding, kcenter) that needs no model.

``GeneratorWorker`` only reads inputs (targets, class latents) and commits shards; the images
come from ``generation.GenerationPipeline``. It is built for two calls in flight
(``max_concurrency=2``): while one group runs on the GPU (one at a time, ``_gpu`` lock), the next
reads its targets and class latents and builds its neighbourhoods, and the previous one writes
its shards. Everything it needs comes in through the constructor (the job, the settings hash,
the class names, the crop, the driver's weight hashes): it reads no manifest.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import fields

import numpy as np

from ..config import JobConfig
from ..models import ModelError
from .accel import hide_ungranted_gpus
from .generation import Crop, GenerationPipeline
from .nodes import record_node
from .settings import shard_committed, unit_footer
from .workers import load_models, pick_device, read_class_latents, read_targets, set_threads
from .store import Store, job_store
from .units import Unit, dit_batches, png_bytes, sample_id, shard_table, target_id

log = logging.getLogger("mgd_ray")


class WeightsMismatch(ModelError):
    """A worker loaded other weights than the driver checked (its node holds other files)."""


def node_name() -> str:
    import socket
    try:
        import ray
        nid = ray.get_runtime_context().get_node_id() if ray.is_initialized() else "(no Ray)"
    except Exception:  # noqa: BLE001
        nid = "(unknown)"
    return f"node {nid} (host {socket.gethostname()})"


def weights_mismatch(expected: dict | None, info, where: str) -> str | None:
    """The refusal message when the loaded weights' file hashes (``models.describe``, the same
    hash the driver's preflight recorded) differ from the driver's; None when they agree."""
    if not expected:
        return None
    found = {"transformer": info.transformer_sha256, "vae": info.vae_sha256}
    bad = [k for k in ("transformer", "vae") if expected.get(k) and expected[k] != found[k]]
    if not bad:
        return None
    what = "; ".join(f"{k}: expected sha256 {expected[k]}, found {found[k]}" for k in bad)
    return (f"{where} loaded other model weights than the driver checked ({what}; loaded from {info.path}). "
            f"Every node must hold the same files for model.generator/model.vae: sync the model directory "
            f"(or the Hugging Face cache) on that node, or point the job at shared storage")


class ClassLatents:
    """The class latents a worker holds: a class is read once while the groups in flight need it,
    and the ``keep`` classes used last stay for the next group (units are ordered class by class,
    see ``units.group_units``). Thread-safe; ``reads`` counts reads per class."""

    def __init__(self, read, keep: int = 4):
        self._read, self._keep = read, int(keep)
        self._data: OrderedDict = OrderedDict()
        self._users: Counter = Counter()
        self._lock = threading.Lock()
        self.reads: Counter = Counter()

    def acquire(self, labels) -> tuple[dict, list]:
        """-> ({label: (ids, Z)}, the labels read now); pair it with a ``release`` of the same labels."""
        out, read = {}, []
        with self._lock:
            for lab in sorted(set(labels)):
                self._users[lab] += 1
                if lab not in self._data:
                    self._data[lab] = self._read(lab)
                    self.reads[lab] += 1
                    read.append(lab)
                self._data.move_to_end(lab)
                out[lab] = self._data[lab]
        return out, read

    def release(self, labels):
        with self._lock:
            for lab in set(labels):
                self._users[lab] -= 1
            idle = [lab for lab in self._data if self._users[lab] <= 0]          # least recently used first
            for lab in idle[:max(0, len(idle) - self._keep)]:
                del self._data[lab]


def target_of(row: dict):
    """A ``targets.parquet`` row -> the coreset ``Target`` it was written from."""
    from ..method import Target
    return Target(**{f.name: row[f.name] for f in fields(Target)})


def shard_row(unit: Unit, t: dict, img: np.ndarray, method: str) -> dict:
    img = img if img.ndim == 3 else img[:, :, None]
    return dict(sample_id=sample_id(unit.gen_seed, unit.label, int(t["index"])), label=unit.label,
                class_name=unit.class_name, target_id=target_id(unit.gen_seed, unit.label, int(t["index"])),
                seed=int(t["seed"]), gen_seed=unit.gen_seed, method=method, image=png_bytes(img),
                height=img.shape[0], width=img.shape[1], channels=img.shape[2])


def commit_unit(store: Store, unit: Unit, rows: list[dict], class_names, settings_hash: str):
    """One unit -> one shard (atomic, deterministic name), its footer carrying the settings hash
    and the unit's class hash (``Unit.key``)."""
    store.write_table(shard_table(rows, class_names), "shards", unit.shard,
                      metadata=unit_footer(settings_hash, unit.key))


def parse_fault(spec: str | None) -> dict | None:
    """``generate.fault_inject`` -> {"unit": name or None, "after_commits": n, "at": "start"|"commit"}.
    The spec is ``key=value`` pairs joined by ``:`` (``unit=s000-c00002-t00000:after_commits=2``)."""
    if not spec:
        return None
    out = {"unit": None, "after_commits": 0, "at": "start"}
    for part in spec.split(":"):
        k, _, v = part.partition("=")
        if k not in out or not v:
            raise ValueError(f"generate.fault_inject: unknown part {part!r} (unit=<name>, after_commits=<n>, "
                             f"at=start|commit)")
        out[k] = int(v) if k == "after_commits" else v
    if out["at"] not in ("start", "commit"):
        raise ValueError(f"generate.fault_inject: at={out['at']!r} (start or commit)")
    return out


def _claim(store: Store, marker: tuple[str, str], data: bytes) -> bool:
    """Write the fault marker unless one exists; True for the one process that wrote it (a local
    store: exclusive create, so two actors reaching the fault together do not both die)."""
    if store.ls("_faults"):
        return False
    if store.is_local:
        store.makedirs(marker[0])
        try:
            fd = os.open(store.path(*marker), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True
    store.write_bytes(data, *marker)
    return True


def maybe_fault(job: JobConfig, store: Store, unit: Unit, committed: list | None = None, at: str = "start"):
    """Testing only (``generate.fault_inject``, see ``parse_fault``): kill this process once per
    output dir, in the unit named by ``unit=`` (any unit without it), at its start (before its
    images are made) or, with ``at=commit``, mid-unit (images made, shard not yet committed), and
    only in a process that has already committed ``after_commits`` shards itself (``committed``:
    the shards it committed). The marker ``_faults/<unit>.txt`` records, as JSON, the unit, the
    pid and the shards this process had committed before it died."""
    f = parse_fault(job.generate.fault_inject)
    if f is None or f["at"] != at or f["unit"] not in (None, unit.name):
        return
    done = list(committed or [])
    if len(done) < f["after_commits"]:
        return
    rec = {"unit": unit.name, "pid": os.getpid(), "at": at, "committed_before": done}
    if _claim(store, ("_faults", f"{unit.name}.txt"), json.dumps(rec).encode()):
        log.warning("fault injection: killing this worker in unit %s (%s; %d shard(s) committed by it)",
                    unit.name, at, len(done))
        os._exit(17)


# ---------------------------------------------------------------------------------------------
class GeneratorWorker:
    """Holds the frozen DiT + VAE (loaded in ``__init__``); ``run_units`` turns a group of work
    units into committed shards. ``ready()`` answers once the models are loaded (the driver gives
    work only to actors that answered) and says whether this worker refuses to run."""

    def __init__(self, job: dict, threads: int = 1, settings_hash: str = "", *, class_names, crop: Crop | None = None,
                 weights: dict | None = None, latents_keep: int = 4):
        self.gpus = hide_ungranted_gpus()          # before torch can open a GPU it was not granted
        set_threads(threads)
        self.job = JobConfig.model_validate(job)
        self.store = job_store(self.job)
        self.settings_hash = settings_hash
        self.class_names = list(class_names)
        self.device = pick_device(self.job.model.device)
        self.where = node_name()
        dit, vae, info = load_models(self.job, self.device)
        self.refusal = weights_mismatch(weights, info, self.where)
        if self.refusal:
            log.error("generator refuses to run: %s", self.refusal)
        self.pipeline = GenerationPipeline.from_job(self.job, dit, vae, info, device=self.device, crop=crop)
        self.latents = ClassLatents(lambda lab: read_class_latents(self.store, lab), keep=latents_keep)
        self._gpu = threading.Lock()
        self.committed: list[str] = []             # shards this process committed (fault injection reads it)

    def ready(self) -> dict:
        return {"where": self.where, "pid": os.getpid(), "device": self.device, "gpus": [str(g) for g in self.gpus],
                "refusal": self.refusal}

    def run_unit(self, unit: Unit) -> dict:
        return self.run_units([unit])

    def run_units(self, units: list[Unit]) -> dict:
        """Generate a group of units together (DiT batches mix classes), then commit one shard per
        unit; units whose shard carries this job's settings hash are skipped. Per-image seeds make
        the images independent of how units are grouped."""
        if self.refusal:
            raise WeightsMismatch(self.refusal)
        t0 = time.time()
        record_node(self.store, "generate")
        todo = [u for u in units if not shard_committed(self.store, u.shard, self.settings_hash, u.key)]
        for u in todo:
            maybe_fault(self.job, self.store, u, self.committed)
        out = {"units": [u.name for u in units], "skipped": len(units) - len(todo), "images": 0, "dit_batches": [],
               "latent_reads": [], "pid": os.getpid()}
        if todo:
            pipe = self.pipeline
            targets = read_targets(self.store, {u.label for u in todo}, [i for u in todo for i in u.target_ids])
            items = [(u, targets[i]) for u in todo for i in u.target_ids]
            labels = {u.label for u in todo} if pipe.needs_neighbourhoods else set()
            lat, out["latent_reads"] = self.latents.acquire(labels)
            try:
                nbrs = None
                if pipe.needs_neighbourhoods:
                    from ..method import neighbourhood_for_target
                    nbrs = [neighbourhood_for_target(lat[u.label][1], lat[u.label][0], target_of(t),  # Z, ids
                                                     self.job.coreset.neighbourhood_max, pipe.min_neighbours)
                            for u, t in items]
                c = [t["target"] for _, t in items] if pipe.guidance is not None else None
                with self._gpu:                       # the inputs above were read while another group ran
                    imgs = pipe([u.model_label for u, _ in items], [int(t["seed"]) for _, t in items], c, nbrs)
            finally:
                self.latents.release(labels)
            out["dit_batches"] = [s.stop - s.start for s in dit_batches(len(items), pipe.batch_size)]
            k = 0
            for u in todo:
                rows = [shard_row(u, t, img, self.job.method) for (_, t), img in zip(items[k:k + u.count],
                                                                                       imgs[k:k + u.count])]
                maybe_fault(self.job, self.store, u, self.committed, at="commit")
                commit_unit(self.store, u, rows, self.class_names, self.settings_hash)
                self.committed.append(u.shard)
                k += u.count
                out["images"] += len(rows)
        out["seconds"] = time.time() - t0
        return out


# ---------------------------------------------------------------------------------------------
def real_images(source, ids) -> np.ndarray:
    """The train images of ``ids`` (uint8, native size), reading only those rows
    (``arrays_at``), in the order of ``ids``."""
    from ..data import DataError
    ids = np.asarray(ids, dtype=np.int64)
    _, all_ids, _ = source.select("train")
    order = np.argsort(all_ids, kind="stable")
    k = np.searchsorted(all_ids, ids, sorter=order)
    k = order[np.minimum(k, len(order) - 1)]
    if len(ids) and not np.array_equal(all_ids[k], ids):
        raise DataError(f"source ids {sorted(set(ids.tolist()) - set(all_ids.tolist()))[:5]} are not in the "
                        f"train split any more (the data changed since the coreset stage)")
    a = source.arrays_at("train", k)
    if not np.array_equal(np.asarray(a["id"], np.int64), ids):
        raise DataError(f"{len(ids) - len(a['id'])} chosen real image(s) could not be read")
    return a["image"]


def write_real_units(job: JobConfig, store: Store, units: list[Unit], class_names, settings_hash: str,
                     source=None) -> dict:
    """Real-image methods (random-real, herding, kcenter): each unit's chosen real images (the
    targets' ``source_id``) -> one shard per unit. No model; only the chosen rows are decoded."""
    from ..data import open_source
    t0 = time.time()
    todo = [u for u in units if not shard_committed(store, u.shard, settings_hash, u.key)]
    for u in todo:
        maybe_fault(job, store, u)
    n = 0
    if todo:
        source = source or open_source(job.data)
        targets = read_targets(store, {u.label for u in todo}, [i for u in todo for i in u.target_ids])
        ts = [targets[i] for u in todo for i in u.target_ids]
        imgs = real_images(source, [int(t["source_id"]) for t in ts])
        k = 0
        for u in todo:
            rows = [shard_row(u, t, img, job.method) for t, img in zip(ts[k:k + u.count], imgs[k:k + u.count])]
            commit_unit(store, u, rows, class_names, settings_hash)
            k += u.count
            n += len(rows)
    return {"units": [u.name for u in units], "skipped": len(units) - len(todo), "images": n, "dit_batches": [],
            "latent_reads": [], "seconds": time.time() - t0, "pid": os.getpid()}
