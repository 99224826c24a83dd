"""The encode and coreset stages' workers, as plain classes and functions (``runner.py`` places
them on Ray; the stage objects are in ``stage.py``). Their only Ray call is ``record_node``.

- ``Encoder``: ``__init__`` loads the frozen VAE once; ``__call__`` maps a batch
  ``{id, label, image}`` -> ``{id, label, latent}`` (z = s * posterior mean, flattened).
- ``build_class_targets``: one class's coreset for one generation seed (the method core) ->
  target rows; ``write_class_targets`` commits them per (class, seed) on a worker,
  ``merge_target_parts`` makes ``coreset/targets.parquet`` of the job's parts and
  ``read_targets`` gives an actor the rows of its units.
- The generator actor lives in ``generator.py``, the generate stage in ``generate.py``.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from ..config import JobConfig
from .nodes import record_node
from .store import Store, job_store
from .units import target_id

log = logging.getLogger("mgd_ray")


def set_threads(n: int | None):
    """Torch's and faiss's threads in this process (``settings.cpu_threads`` of the CPUs asked for:
    on a CPU, part of the settings key)."""
    import torch
    n = max(1, int(n or 1))
    torch.set_num_threads(n)
    try:
        import faiss
        faiss.omp_set_num_threads(n)
    except Exception:  # pragma: no cover
        pass


def pick_device(name: str) -> str:
    import torch
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def image_size_for(job: JobConfig, info) -> int:
    return job.encode.image_size or info.image_size


def load_models(job: JobConfig, device: str):
    from ..models import load_generator
    return load_generator(job.model.generator, job.model.vae, allow_download=job.model.allow_download,
                          dtype=job.model.dtype if device != "cpu" else "float32", device=device)


# ---------------------------------------------------------------------------------------------
class Encoder:
    """Batch ``{id, label, image}`` -> ``{id, label, latent (B, D) float32}``."""

    def __init__(self, job: dict, threads: int = 1):
        import torch
        set_threads(threads)
        self.job = JobConfig.model_validate(job)
        record_node(job_store(self.job), "encode")
        self.device = pick_device(self.job.model.device)
        from ..models import load_vae        # the VAE only: an encoder never needs the DiT
        m = self.job.model
        self.vae, self.info = load_vae(m.generator, m.vae, allow_download=m.allow_download,
                                       dtype=m.dtype if self.device != "cpu" else "float32", device=self.device)
        self.size = image_size_for(self.job, self.info)
        self.dtype = next(self.vae.parameters()).dtype
        self.torch = torch

    def __call__(self, batch: dict) -> dict:
        from ..data import preprocess
        from ..models import encode_latents
        torch = self.torch
        imgs = batch["image"]
        if isinstance(imgs, np.ndarray) and imgs.dtype == np.float32 and imgs.ndim == 4 and imgs.shape[1] <= 4:
            x = imgs  # already preprocessed (N, C, H, W) in [-1, 1]
        else:
            imgs = np.stack(list(imgs)) if not isinstance(imgs, np.ndarray) or imgs.dtype == object else imgs
            x = preprocess(imgs, self.size, channels=self.info.image_channels, mode=self.job.encode.preprocess)
        with torch.no_grad():
            z = encode_latents(self.vae, torch.from_numpy(x).to(self.device, self.dtype), self.info.scaling_factor)
        z = z.float().cpu().numpy().reshape(len(x), -1)
        return {"id": np.asarray(batch["id"], dtype=np.int64), "label": np.asarray(batch["label"], dtype=np.int64),
                "latent": z}


# ---------------------------------------------------------------------------------------------
def read_class_latents(store: Store, label: int) -> tuple[np.ndarray, np.ndarray]:
    """-> (ids (n,) int64, Z (n, D) float32) of one class from the latent cache (sorted by id)."""
    import pyarrow.dataset as pads
    d = store.path("latents", f"label={label}")
    ds = pads.dataset(d, filesystem=store.arrow_fs(), format="parquet")
    t = ds.to_table(columns=["id", "latent"])
    ids = t.column("id").to_numpy()
    lat = t.column("latent").combine_chunks()
    flat = np.asarray(lat.flatten() if hasattr(lat, "flatten") else lat.storage.flatten(), dtype=np.float32)
    Z = flat.reshape(len(ids), -1)
    order = np.argsort(ids, kind="stable")
    return ids[order].astype(np.int64), Z[order]


def build_class_targets(job: JobConfig, store: Store, label: int, gen_seed: int, threads: int = 1,
                        engine: str | None = None) -> list[dict]:
    """One class, one generation seed -> ipc target rows (see ``targets.parquet``); ``engine``:
    the 2-means engine to use (default: ``coreset.engine`` as this process resolves it)."""
    from ..method import build_coreset, image_seed
    set_threads(threads)
    ipc = job.generate.ipc
    if job.coreset_method is None:  # plain DiT: no targets, only seeds
        return [dict(label=label, index=j, depth=0, parent=-1, node=-1, size=0, member_ids=[], target=None,
                     seed=image_seed(gen_seed, label, j), source_id=-1, method="none", gen_seed=gen_seed)
                for j in range(ipc)]
    ids, Z = read_class_latents(store, label)
    targets = build_coreset(Z, ids, label, ipc, job.coreset_params, seed=gen_seed, global_seed=gen_seed,
                            **({"engine": engine} if engine else {}))
    rows = []
    for t in targets:
        r = t.to_row()
        r["member_ids"] = np.asarray(r["member_ids"], dtype=np.int64).tolist()
        r["target"] = np.asarray(r["target"], dtype=np.float32)
        r["gen_seed"] = gen_seed
        rows.append(r)
    return rows


TARGET_INDEX_COLUMNS = ["target_id", "gen_seed", "label", "index"]   # what the driver reads: no vectors


def targets_table(rows: list[dict]):
    """Target rows (``build_class_targets``) -> an Arrow table; vectors go in as one float32 buffer."""
    import pyarrow as pa
    vecs = [r["target"] for r in rows if r["target"] is not None]
    if vecs:
        flat = np.stack([np.asarray(v, np.float32).reshape(-1) for v in vecs])         # (n, D)
        target = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])
    else:                                                                             # plain DiT: seeds only
        target = pa.nulls(len(rows), pa.list_(pa.float32()))
    return pa.table({
        "target_id": [target_id(r["gen_seed"], r["label"], r["index"]) for r in rows],
        "gen_seed": pa.array([r["gen_seed"] for r in rows], pa.int64()),
        "label": pa.array([r["label"] for r in rows], pa.int64()),
        "index": pa.array([r["index"] for r in rows], pa.int32()),
        "depth": pa.array([r["depth"] for r in rows], pa.int32()),
        "parent": pa.array([r["parent"] for r in rows], pa.int64()),
        "node": pa.array([r["node"] for r in rows], pa.int64()),
        "size": pa.array([r["size"] for r in rows], pa.int64()),
        "member_ids": pa.array([r["member_ids"] for r in rows], pa.list_(pa.int64())),
        "target": target,
        "seed": pa.array([r["seed"] for r in rows], pa.int64()),
        "source_id": pa.array([r["source_id"] for r in rows], pa.int64()),
        "method": [r["method"] for r in rows],
    })


def part_name(label: int, gen_seed: int) -> str:
    """A coreset part: the targets of one class under one generation seed."""
    return f"c{int(label):05d}-s{int(gen_seed):03d}.parquet"


def write_class_targets(job: JobConfig, store: Store, labels: list[int], seeds: list[int], threads: int = 1,
                        gpus: int | None = None, settings: str = "", class_hashes: dict | None = None,
                        todo: dict | None = None) -> dict:
    """Build the targets of some classes and commit one part per (class, generation seed),
    ``coreset/parts/c<label>-s<seed>.parquet``, on the worker, its footer carrying ``settings``
    (the coreset stage's hash) and the class's hash (``class_hashes[label]``). ``todo``: label ->
    the seeds to build (default: every seed of every label); with a ``settings`` hash, a part
    already committed under it and its class's hash is kept. -> {"targets": written, "parts":
    written, "engine": the 2-means engine ``coreset.engine`` resolved to for this task}.
    ``gpus``: the GPUs the scheduler granted this task (``resolve_engine``)."""
    from ..method.coreset import resolve_engine
    from .settings import shard_committed, unit_footer
    engine = resolve_engine(job.coreset.engine, gpus)
    n = parts = 0
    hashes = {int(k): v for k, v in (class_hashes or {}).items()}
    want = {int(k): v for k, v in todo.items()} if todo is not None else None
    for lab in labels:
        for g in (want.get(int(lab), []) if want is not None else seeds):
            name, h = part_name(lab, g), hashes.get(int(lab), "")
            if settings and shard_committed(store, name, settings, h, where="coreset/parts"):
                continue
            rows = build_class_targets(job, store, lab, g, threads=threads, engine=engine)
            store.write_table(targets_table(rows), "coreset", "parts", name, metadata=unit_footer(settings, h))
            n += len(rows)
            parts += 1
    return {"targets": n, "parts": parts, "engine": engine}


def merge_target_parts(store: Store, labels: list[int], seeds: list[int]) -> int:
    """Concatenate the job's parts (its classes x its generation seeds) into
    ``coreset/targets.parquet``, one class at a time (one row group per class, its seeds in job
    order, so readers filtering on label skip the rest); -> rows written. Parts of other seeds or
    classes stay where they are, outside the merge."""
    import uuid

    import pyarrow as pa
    import pyarrow.parquet as pq
    dest = store.path("coreset", "targets.parquet")
    tmp = f"{dest}.tmp-{uuid.uuid4().hex[:8]}" if store.is_local else dest
    store.ls("coreset", "parts")  # a fresh listing: other tasks wrote the parts (object stores cache listings)
    store.check_fence()          # a streamed write, not a store commit: fenced by hand (before, and before the rename)
    writer, n = None, 0
    with store.fs.open(tmp, "wb") as f:
        for lab in labels:
            t = pa.concat_tables([store.read_table("coreset", "parts", part_name(lab, g)).replace_schema_metadata(None)
                                  for g in seeds])
            writer = writer or pq.ParquetWriter(f, t.schema, compression="zstd")
            writer.write_table(t)
            n += t.num_rows
        if writer is not None:
            writer.close()
    if store.is_local:
        store.check_fence()
        os.replace(tmp, dest)
    return n


def read_targets(store: Store, labels, target_ids: list[str]) -> dict[str, dict]:
    """The rows of some targets of classes ``labels``, read from ``coreset/targets.parquet`` (only
    those classes' row groups) -> {target_id: row}; row["target"] is a float32 (D,) array, or None
    (plain DiT)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as pads
    want = set(target_ids)
    ds = pads.dataset(store.path("coreset", "targets.parquet"), filesystem=store.arrow_fs(), format="parquet")
    t = ds.to_table(filter=pc.field("label").isin(sorted({int(x) for x in labels})))
    t = t.filter(pc.is_in(t.column("target_id"), value_set=pa.array(sorted(want), pa.string())))
    vec = t.column("target").combine_chunks()
    D = getattr(vec.type, "list_size", 0)
    Z = vec.flatten().to_numpy(zero_copy_only=False).reshape(len(t), D) if D else None
    rows = t.drop_columns(["target"]).to_pylist()
    for i, r in enumerate(rows):
        r["target"] = Z[i] if Z is not None else None
    out = {r["target_id"]: r for r in rows}
    if len(rows) != len(want) or set(out) != want:
        raise RuntimeError(f"{store.uri('coreset', 'targets.parquet')}: expected {len(want)} targets, found "
                           f"{len(rows)} ({len(want - set(out))} missing); rerun the coreset stage "
                           f"(delete {store.uri('coreset')})")
    return out


