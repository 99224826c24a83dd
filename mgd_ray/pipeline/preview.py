"""Preview grids of the distilled images (PNG), readable without Ray."""

from __future__ import annotations

import io

import numpy as np

from .units import decode_png


def grid(images: list[np.ndarray], rows: int, cols: int, pad: int = 1, scale: int = 1) -> np.ndarray:
    """images: list of uint8 (H, W, C), row-major; missing cells stay black. -> uint8 grid (H', W', C)."""
    H, W, C = images[0].shape
    out = np.zeros((rows * (H + pad) + pad, cols * (W + pad) + pad, C), dtype=np.uint8)
    for k, img in enumerate(images[: rows * cols]):
        r, c = divmod(k, cols)
        out[pad + r * (H + pad): pad + r * (H + pad) + H, pad + c * (W + pad): pad + c * (W + pad) + W] = img
    if scale > 1:
        out = out.repeat(scale, 0).repeat(scale, 1)
    return out


def to_png(arr: np.ndarray) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr).save(buf, format="PNG")
    return buf.getvalue()


def class_grids(store, class_names: list[str], gen_seed: int, max_per_class: int = 10, names: list[str] | None = None):
    """Yield (file name, PNG bytes): one grid of all classes when there are at most 20, else one per class.
    ``names``: the job's shards of the seed (default every shard of the seed under ``shards/``)."""
    by_class: dict[int, list] = {}
    on_disk = store.ls("shards", suffix=".parquet")         # a fresh listing (object stores cache them)
    for name in (on_disk if names is None else [n for n in names if n in set(on_disk)]):
        if not name.startswith(f"s{gen_seed:03d}-"):
            continue
        for r in store.read_table("shards", name, columns=["sample_id", "label", "image"]).to_pylist():
            if r["label"] < len(class_names):        # a class the job no longer has: not shown
                by_class.setdefault(r["label"], []).append(r)
    if not by_class:
        return
    for rows in by_class.values():
        rows.sort(key=lambda r: int(r["sample_id"].rsplit("-i", 1)[1]))
    first = decode_png(next(iter(by_class.values()))[0]["image"])
    scale = max(1, 64 // first.shape[0])
    if len(class_names) <= 20:
        cols = min(max_per_class, max(len(v) for v in by_class.values()))
        imgs = []
        for lab in range(len(class_names)):
            row = [decode_png(r["image"]) for r in by_class.get(lab, [])[:cols]]
            row += [np.zeros_like(first)] * (cols - len(row))
            imgs.extend(row)
        yield "all_classes.png", to_png(grid(imgs, len(class_names), cols, scale=scale))
    else:
        for lab, rows in sorted(by_class.items()):
            imgs = [decode_png(r["image"]) for r in rows[:max_per_class]]
            yield f"{lab:05d}_{class_names[lab].replace('/', '_')}.png", to_png(grid(imgs, 1, len(imgs), scale=scale))
