"""Encoded image bytes -> uint8 images, with failures recorded, not raised: the helpers every
source uses, and the one Ray Dataset builder both file sources (imagefolder, parquet) share.

``image_dataset`` turns the driver's row index (id, label, class_name, path: no image bytes) into a
Ray Dataset whose tasks get each row's bytes (``fetch``, on the workers), decode them, drop and
log the unreadable ones (``failures_dir`` collects them) and fit them to ``image_size``.
"""
from __future__ import annotations

import io
import re
from typing import Any, Callable, Sequence

import numpy as np

from .base import log
from .failures import write_failure_part
from .preprocess import fit_size


_16BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")   # PIL's modes of 16-bit grey (PNG, TIFF, PGM)
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def decode_image(data: bytes) -> np.ndarray:
    """Encoded bytes -> uint8 (H, W, 3) RGB. Raises on anything PIL cannot fully decode.

    - 16-bit grey (PIL mode ``I;16``, or ``I`` as older Pillow opens it) is scaled to 8 bits,
      ``round(v * 255 / 65535)``; PIL's ``convert("RGB")`` would clip every value above 255 to white.
      (16-bit RGB PNGs PIL already opens as 8-bit RGB, by their high byte.)
    - An image with transparency (an alpha channel, or a palette / grey / RGB image with a
      transparent colour) is composited on white: ``rgb * a + 255 * (1 - a)``, the image as a viewer
      shows it. ``convert("RGB")`` (torchvision's loader) drops alpha instead, which shows whatever
      colour happens to be stored under the transparent pixels (often black, sometimes noise).
    """
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return image_to_rgb(im)


def image_to_rgb(im) -> np.ndarray:
    """A loaded PIL image -> uint8 (H, W, 3) RGB by the rules of ``decode_image``."""
    if im.mode in _16BIT_MODES:
        v = np.asarray(im).astype(np.float64)
        g = np.rint(np.clip(v, 0, 65535) * (255.0 / 65535.0)).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=-1)
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float64)
        a = rgba[..., 3:] / 255.0
        return np.rint(rgba[..., :3] * a + 255.0 * (1.0 - a)).astype(np.uint8)
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def error_text(e: BaseException) -> str:
    """``Type: message`` without memory addresses, so failure tables are identical across runs."""
    msg = re.sub(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "(image bytes)", str(e))
    return f"{type(e).__name__}: {re.sub(r' at 0x[0-9a-fA-F]+', '', msg)}"


def is_local(fs) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,))


def shown_path(fs, path: str) -> str:
    """A path as users write it: plain for local files, with the protocol (s3://) otherwise."""
    return path if is_local(fs) else fs.unstrip_protocol(path)


def fetch_many(fs, paths: Sequence[str], threads: int = 16) -> list[bytes | BaseException]:
    """The bytes of each path, or the exception that reading it raised (remote reads run in threads)."""
    def one(p):
        try:
            return fs.cat_file(p)
        except Exception as e:  # noqa: BLE001
            return e

    if is_local(fs) or len(paths) <= 1:
        return [one(p) for p in paths]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(threads, len(paths))) as pool:
        return list(pool.map(one, paths))


def decode_all(blobs: Sequence[bytes | BaseException]) -> tuple[list[np.ndarray | None], list[str | None]]:
    """Decode each blob; per blob an image or an error text (an exception stands for a failed read)."""
    images, errors = [], []
    for data in blobs:
        if isinstance(data, BaseException):
            images.append(None)
            errors.append(error_text(data))
            continue
        try:
            images.append(decode_image(data))
            errors.append(None)
        except Exception as e:  # noqa: BLE001 - any decoder error is a per-image failure
            images.append(None)
            errors.append(error_text(e))
    return images, errors


def decode_many(fs, paths: Sequence[str]) -> tuple[list[np.ndarray | None], list[str | None]]:
    """Fetch and decode; per path an image or an error text."""
    return decode_all(fetch_many(fs, paths))


def fetch_paths(batch: dict[str, np.ndarray], fs) -> tuple[list, list[str]]:
    """A ``fetch`` for ``image_dataset``: each row's bytes read from its ``path`` through ``fs`` (or
    the exception that reading raised), and the paths as users write them."""
    paths = [str(p) for p in batch["path"]]
    return fetch_many(fs, paths), [shown_path(fs, p) for p in paths]


def image_dataset(index: dict[str, Any], rows_per_block: int, fetch: Callable, fetch_kwargs: dict, split: str,
                  image_size: int | None, mode: str, batch_size: int, num_cpus: float,
                  failures_dir: str | None = None, failures_storage_options: dict | None = None):
    """The shared builder: ``index`` = equal-length columns, at least id, label, class_name and what
    ``fetch(batch, **fetch_kwargs) -> (bytes or exception per row, shown path per row)`` needs
    (numbers, or strings);
    no image bytes (``fetch`` reads them in the Ray tasks). Columns out: id, label, class_name,
    image (uint8 HWC, ``image_size`` square if given)."""
    import pyarrow as pa
    import ray.data

    index = {k: np.asarray(v) for k, v in index.items()}
    n = len(index["id"])
    step = max(1, int(rows_per_block))
    tables = [pa.table({k: pa.array(v[s:s + step]) if v.dtype != object else pa.array(list(v[s:s + step]), pa.string())
                        for k, v in index.items()})
              for s in range(0, max(n, 1), step)]
    return ray.data.from_arrow(tables).map_batches(
        decode_batch, fn_kwargs=dict(fetch=fetch, fetch_kwargs=fetch_kwargs, split=split, image_size=image_size,
                                     mode=mode, failures_dir=failures_dir,
                                     failures_storage_options=failures_storage_options),
        batch_size=batch_size, batch_format="numpy", num_cpus=num_cpus)


def decode_batch(batch: dict[str, np.ndarray], fetch: Callable, fetch_kwargs: dict, split: str,
                 image_size: int | None, mode: str, failures_dir: str | None = None,
                 failures_storage_options: dict | None = None):
    """map_batches UDF: the rows' bytes (``fetch``) -> ``image`` uint8 HWC.

    Unreadable rows are dropped, logged, and written to ``failures_dir`` when given.
    """
    blobs, shown = fetch(batch, **fetch_kwargs)
    images, errors = decode_all(blobs)
    ok = np.array([e is None for e in errors], dtype=bool)
    if not ok.all():
        rows = [(p, split, e) for p, e in zip(shown, errors) if e is not None]
        for r in rows:
            log.warning("unreadable image %s: %s", r[0], r[2])
        if failures_dir:
            first = int(np.asarray(batch["id"])[~ok][0])
            write_failure_part(rows, failures_dir, f"{split}-{first:012d}", failures_storage_options)
    kept = [fit_size(im, image_size, mode) for im, good in zip(images, ok) if good]
    out = {k: np.asarray(batch[k])[ok] for k in ("id", "label", "class_name")}
    if kept and len({k.shape for k in kept}) == 1:
        out["image"] = np.stack(kept)
    elif kept:
        arr = np.empty(len(kept), dtype=object)
        arr[:] = kept
        out["image"] = arr
    else:
        s = image_size or 1
        out["image"] = np.zeros((0, s, s, 3), dtype=np.uint8)
    return out
