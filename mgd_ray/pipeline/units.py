"""Work units, names and the rows they produce (pure; no Ray, no torch).

A work unit is (generation seed, class, a slice of that class's targets). Its shard name is a
pure function of those three, so a rerun finds exactly the shards already committed.
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


def png_bytes(img: np.ndarray) -> bytes:
    """uint8 (H, W) or (H, W, C) -> PNG bytes (deterministic: fixed compression, no metadata)."""
    from PIL import Image
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> uint8 (H, W, C)."""
    from PIL import Image
    a = np.asarray(Image.open(io.BytesIO(data)))
    return a[:, :, None] if a.ndim == 2 else a


def to_uint8(x) -> np.ndarray:
    """float images (B, C, H, W) in [-1, 1] -> uint8 (B, H, W, C)."""
    x = np.asarray(x, dtype=np.float32)
    return np.clip(np.rint((x + 1.0) * 127.5), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


SHARD_SCHEMA_DOC = {
    "sample_id": "string, unique: s<gen_seed>-c<label>-i<index>",
    "label": "int64 class id (the generator's label id)",
    "class_name": "string (wnid or class name)",
    "target_id": "string: the coreset target (or real source id) this image was made for",
    "seed": "int64 per-image noise seed",
    "gen_seed": "int64 generation seed (one distilled set per gen_seed)",
    "method": "string",
    "image": "binary PNG bytes",
    "height/width/channels": "int32",
}


def shard_table(rows: list[dict]):
    import pyarrow as pa
    schema = pa.schema([
        ("sample_id", pa.string()), ("label", pa.int64()), ("class_name", pa.string()),
        ("target_id", pa.string()), ("seed", pa.int64()), ("gen_seed", pa.int64()),
        ("method", pa.string()), ("image", pa.binary()),
        ("height", pa.int32()), ("width", pa.int32()), ("channels", pa.int32()),
    ])
    cols = {f.name: [r[f.name] for r in rows] for f in schema}
    return pa.table(cols, schema=schema)
