"""Image geometry and scaling shared by the encoder and the Ray read path.

Two steps, kept apart so the Ray read path can ship compact uint8 images:

- ``fit_size(img, size, mode)``: uint8 HWC -> uint8 (size, size, C)
    - ``center-crop``: ADM/DiT style. Halve with a box filter while the short side is at
      least twice ``size``, resize so the short side equals ``size`` (bicubic), crop the centre.
    - ``pad``: centre the image on a black canvas (uint8 0, i.e. -1 after scaling);
      28x28 -> 32x32 for Fashion-MNIST. An image larger than ``size`` is an error.
    - ``resize``: bicubic resize to size x size (aspect ratio not kept).
    - ``none``: no change (``size`` must be None or equal the image size).
- ``to_model_input(uint8 NHWC) -> float32 NCHW`` in [-1, 1] (x / 127.5 - 1).

``preprocess`` does both, plus the channel conversion (1 <-> 3).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .errors import DataError

MODES = ("center-crop", "pad", "resize", "none")


def _pil(img: np.ndarray):
    from PIL import Image
    return Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)


def _back(pil, channels: int) -> np.ndarray:
    a = np.asarray(pil, dtype=np.uint8)
    return a[..., None] if a.ndim == 2 else a


def center_crop(img: np.ndarray, size: int) -> np.ndarray:
    """ADM centre crop of one uint8 HWC image -> (size, size, C)."""
    from PIL import Image
    h, w, c = img.shape
    pil = _pil(img)
    while min(pil.size) >= 2 * size:
        pil = pil.resize((pil.size[0] // 2, pil.size[1] // 2), resample=Image.BOX)
    scale = size / min(pil.size)
    pil = pil.resize((round(pil.size[0] * scale), round(pil.size[1] * scale)), resample=Image.BICUBIC)
    a = _back(pil, c)
    top, left = (a.shape[0] - size) // 2, (a.shape[1] - size) // 2
    return a[top:top + size, left:left + size]


def pad(img: np.ndarray, size: int) -> np.ndarray:
    """Centre ``img`` on a (size, size, C) canvas of zeros (-1 after scaling)."""
    h, w, c = img.shape
    if h > size or w > size:
        raise DataError(f"image {h}x{w} is larger than image_size {size} in 'pad' mode; "
                        "use mode 'center-crop' or a larger image_size")
    out = np.zeros((size, size, c), dtype=np.uint8)
    top, left = (size - h) // 2, (size - w) // 2
    out[top:top + h, left:left + w] = img
    return out


def resize(img: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image
    return _back(_pil(img).resize((size, size), resample=Image.BICUBIC), img.shape[-1])


def fit_size(img: np.ndarray, size: int | None, mode: str = "center-crop") -> np.ndarray:
    """One uint8 HWC image to (size, size, C) uint8 by ``mode`` (see module docstring)."""
    if mode not in MODES:
        raise DataError(f"unknown preprocess mode {mode!r}; valid choices: {', '.join(MODES)}")
    img = np.asarray(img)
    if img.ndim == 2:
        img = img[..., None]
    if img.dtype != np.uint8:
        raise DataError(f"expected uint8 images, got {img.dtype}")
    if size is None or (img.shape[0] == size and img.shape[1] == size):
        return img
    if mode == "none":
        raise DataError(f"image {img.shape[0]}x{img.shape[1]} does not match image_size {size} "
                        "and the preprocess mode is 'none'")
    return {"center-crop": center_crop, "pad": pad, "resize": resize}[mode](img, int(size))


def convert_channels(images: np.ndarray, channels: int | None) -> np.ndarray:
    """NHWC uint8 with C in {1, 3} -> C = ``channels`` (grey->RGB repeats; RGB->grey uses ITU-R 601-2 luma)."""
    c = images.shape[-1]
    if channels is None or channels == c:
        return images
    if c == 1 and channels == 3:
        return np.repeat(images, 3, axis=-1)
    if c == 3 and channels == 1:
        luma = images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        return np.clip(np.rint(luma), 0, 255).astype(np.uint8)[..., None]
    raise DataError(f"cannot convert {c}-channel images to {channels} channels")


def fit_batch(images: np.ndarray | Sequence[np.ndarray], size: int | None, mode: str = "center-crop",
              channels: int | None = None) -> np.ndarray:
    """A batch (NHWC array or list of HWC arrays of any sizes) -> uint8 (N, size, size, C)."""
    if isinstance(images, np.ndarray) and images.ndim == 4 and images.dtype == np.uint8 and (
            size is None or images.shape[1:3] == (size, size)):
        return convert_channels(images, channels)
    fitted = [fit_size(im, size, mode) for im in images]
    if not fitted:
        c = channels or 3
        return np.zeros((0, size or 0, size or 0, c), dtype=np.uint8)
    shapes = {f.shape for f in fitted}
    if len(shapes) > 1:
        raise DataError(f"images have different sizes ({', '.join(map(str, sorted(shapes)[:3]))}); "
                        "give an image_size to bring them to one size")
    return convert_channels(np.stack(fitted), channels)


def to_model_input(images: np.ndarray) -> np.ndarray:
    """uint8 NHWC -> float32 NCHW in [-1, 1]."""
    x = np.asarray(images, dtype=np.float32).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x / 127.5 - 1.0)


def preprocess(images: np.ndarray | Sequence[np.ndarray], size: int | None, channels: int | None = None,
               mode: str = "center-crop") -> np.ndarray:
    """uint8 NHWC (or a list of HWC) -> float32 NCHW in [-1, 1] at ``size`` with ``channels`` channels.

    ``mode="center-crop"`` for natural images (ADM/DiT), ``"pad"`` for small grey images
    (28 -> 32 with -1 around), ``"resize"``, or ``"none"``.
    """
    return to_model_input(fit_batch(images, size, mode, channels))
