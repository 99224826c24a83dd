"""Work units, names and the rows they produce (pure; no Ray, no torch).

A work unit is (generation seed, class, a slice of that class's targets). Its shard name is a
pure function of those three, so a rerun finds exactly the shards already committed; its ``key``
(the hash of its class's key, ``stage.class_keys``) goes in the shard's footer, so a shard made
for another class at that index, or for the same class's older files, is not taken for it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Unit:
    gen_seed: int
    label: int
    class_name: str
    start: int               # first target index in the class
    count: int               # number of targets in this unit
    target_ids: list = field(default_factory=list)  # list[str] ids of its targets (``attach_targets``); the
    #                                                 vectors stay in coreset/targets.parquet, read by the actor
    gen_label: int = -1      # the generator's class id (e.g. ImageNet index of a wnid); -1 = label
    key: str = ""            # the unit's class hash (footer ``settings.CLASS_KEY``); "" = not checked

    @property
    def model_label(self) -> int:
        return self.gen_label if self.gen_label >= 0 else self.label

    @property
    def name(self) -> str:
        return f"s{self.gen_seed:03d}-c{self.label:05d}-t{self.start:05d}"

    @property
    def shard(self) -> str:
        return f"{self.name}.parquet"


def sample_id(gen_seed: int, label: int, index: int) -> str:
    return f"s{gen_seed}-c{label}-i{index}"


def target_id(gen_seed: int, label: int, index: int) -> str:
    """Id of target ``index`` of class ``label`` under generation seed ``gen_seed`` (targets.parquet)."""
    return f"s{gen_seed}-c{label}-j{index}"


def make_units(gen_seeds, labels, class_names, ipc: int, per_unit: int, gen_labels=None) -> list[Unit]:
    units = []
    gen_labels = list(labels) if gen_labels is None else list(gen_labels)
    for s in gen_seeds:
        for lab, name, glab in zip(labels, class_names, gen_labels):
            for start in range(0, ipc, per_unit):
                units.append(Unit(int(s), int(lab), name, start, min(per_unit, ipc - start), gen_label=int(glab)))
    return units


def shard_names(gen_seeds, n_classes: int, ipc: int, per_unit: int) -> dict[int, list[str]]:
    """Generation seed -> the shard names of a job's units of that seed (its classes are labels
    ``0..n_classes-1``). What readers of ``shards/`` read: shards of a seed or a class the job no
    longer has stay on disk, outside the job."""
    out: dict[int, list[str]] = {}
    for u in make_units(gen_seeds, range(n_classes), [""] * n_classes, ipc, per_unit):
        out.setdefault(u.gen_seed, []).append(u.shard)
    return out


def manifest_shard_names(m: dict) -> dict[int, list[str]] | None:
    """``shard_names`` of the job a ``manifest.json`` describes; None when it does not say."""
    g = (m.get("config") or {}).get("generate") or {}
    classes = m.get("classes")
    if not classes or not g.get("seeds") or not g.get("ipc"):
        return None
    return shard_names(g["seeds"], len(classes), int(g["ipc"]), int(g.get("targets_per_unit") or g["ipc"]))


def group_units(units: list[Unit], batch_size: int) -> list[list[Unit]]:
    """How generation batches work, decided here for both the runner and the plan: the units,
    ordered class by class (label, then generation seed, then slice), are packed into one group
    while their targets fit one DiT batch of ``batch_size`` images (so a group holds several
    classes); a unit with more targets than that is a group of its own. Class by class, not seed
    by seed: a worker reads a class's latents (its neighbourhoods) once for every seed, not once
    per seed. The runner sends one group per actor call; the actor runs the group's targets in
    the DiT batches of :func:`dit_batches`. Per-image seeds: the order changes no image."""
    groups: list[list[Unit]] = []
    n = 0
    for u in sorted(units, key=lambda u: (u.label, u.gen_seed, u.start)):
        if not groups or n + u.count > batch_size:
            groups.append([])
            n = 0
        groups[-1].append(u)
        n += u.count
    return groups


def dit_batches(n_images: int, batch_size: int) -> list[slice]:
    """The DiT calls over one group's ``n_images`` targets: consecutive slices of ``batch_size``."""
    return [slice(k, min(k + batch_size, n_images)) for k in range(0, n_images, batch_size)]


def dit_batch_sizes(units: list[Unit], batch_size: int) -> list[int]:
    """Images in each DiT call the generator makes for ``units`` (the same at every sampling step)."""
    out = []
    for grp in group_units(units, batch_size):
        out += [s.stop - s.start for s in dit_batches(sum(u.count for u in grp), batch_size)]
    return out


def png_bytes(img: np.ndarray) -> bytes:
    """uint8 (H, W) or (H, W, C) -> PNG bytes (deterministic: fixed compression, no metadata)."""
    from PIL import Image
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def image_png(cell) -> bytes:
    """The PNG bytes of a shard's ``image`` cell: ``{"bytes", "path"}`` (bare bytes in shards
    written before the Hugging Face schema, which readers still accept)."""
    return cell["bytes"] if isinstance(cell, dict) else cell


def decode_png(data) -> np.ndarray:
    """PNG bytes, or a shard's ``image`` cell, -> uint8 (H, W, C)."""
    from PIL import Image
    a = np.asarray(Image.open(io.BytesIO(image_png(data))))
    return a[:, :, None] if a.ndim == 2 else a


def to_uint8(x) -> np.ndarray:
    """float images (B, C, H, W) in [-1, 1] -> uint8 (B, H, W, C)."""
    x = np.asarray(x, dtype=np.float32)
    return np.clip(np.rint((x + 1.0) * 127.5), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


# Shard columns, in order: (name, Arrow type, meaning). The table's schema
# metadata carries the features under the ``huggingface`` key (the key ``datasets`` writes and
# reads), so ``datasets.load_dataset("parquet", ...)`` yields PIL images and named labels, while
# pandas / pyarrow / DuckDB see plain columns (``image`` is the struct ``{bytes, path}`` that
# ``datasets.Image`` stores: PNG bytes, path null).
SHARD_COLUMNS = (
    ("sample_id", "string", "unique id: s<gen_seed>-c<label>-i<index>"),
    ("label", "int64", "class id: the position of the class in the job's class selection "
                       "(ClassLabel: names = the selection's class names, in order)"),
    ("class_name", "string", "the class's name (wnid or class name)"),
    ("target_id", "string", "the coreset target (or real source id) this image was made for"),
    ("seed", "int64", "per-image noise seed"),
    ("gen_seed", "int64", "generation seed (one distilled set per gen_seed)"),
    ("method", "string", "the distillation method"),
    ("image", "struct<bytes: binary, path: string>", "PNG bytes in bytes, path null (datasets.Image)"),
    ("height", "int32", "image height"),
    ("width", "int32", "image width"),
    ("channels", "int32", "1 (grey) or 3 (RGB)"),
)


def hf_features(class_names) -> dict:
    """The shards' columns as a ``datasets.Features`` dict (``Features.from_dict`` reads it)."""
    out = {}
    for name, typ, _ in SHARD_COLUMNS:
        if name == "label":
            out[name] = {"names": [str(c) for c in class_names], "_type": "ClassLabel"}
        elif name == "image":
            out[name] = {"_type": "Image"}
        else:
            out[name] = {"dtype": typ, "_type": "Value"}
    return out


def shard_schema(class_names):
    import json

    import pyarrow as pa
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    types = {"string": pa.string(), "int64": pa.int64(), "int32": pa.int32()}
    fields = [(name, image if name == "image" else types[typ]) for name, typ, _ in SHARD_COLUMNS]
    meta = {"huggingface": json.dumps({"info": {"features": hf_features(class_names)}})}
    return pa.schema(fields, metadata=meta)


def shard_table(rows: list[dict], class_names):
    """Rows (``image`` = PNG bytes) -> the shard's Arrow table; ``class_names``: the job's class
    selection in label order (every shard carries all of them, so any subset of shards loads)."""
    import pyarrow as pa
    schema = shard_schema(class_names)
    cols = {f.name: [r[f.name] for r in rows] for f in schema}
    cols["image"] = [{"bytes": b, "path": None} for b in cols["image"]]
    return pa.table(cols, schema=schema)
