"""Data sources and ``open_source(cfg)``.

Every source yields rows ``id`` (int64, stable), ``label`` (int, index in ``source.classes``),
``class_name`` (str) and ``image`` (uint8 H x W x C, C = 1 or 3) for the splits ``train`` and
``test``; see ``base.BaseSource`` for the shared API (``arrays``, ``ray_dataset``,
``num_rows``, ``describe``, ``failures``).

- ``sklearn-digits``: scikit-learn's embedded 8x8 digits (1797 images), no download.
  Values 0..16 become uint8 round(v * 255 / 16). Split: per class, a permutation by
  ``numpy.random.default_rng(DIGITS_SEED)`` (classes in order 0..9) puts round(25 %) of the
  class in test, the rest in train; each split keeps the original order, and ``id`` is the
  position within the split.
- ``fashion-mnist``: the original IDX files in ``data.root`` (default
  ``/usr/share/datasets/fashion-mnist``, Debian's ``dataset-fashion-mnist``); ``id`` = row
  in the file. ``data.download=true`` fetches the canonical files when they are missing.
- ``imagefolder`` (``imagefolder.py``) and ``parquet`` (``parquet.py``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .base import BaseSource, cfg_get
from .classlists import ClassList, fixed_list
from .errors import DataError
from .idx import FASHION_FILES, download_fashion_mnist, find_idx, read_idx

DIGITS_SEED = 0
DIGITS_TEST_FRACTION = 0.25
FASHION_DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_CACHE = "~/.cache/mgd_ray/fashion-mnist"
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def _no_class_list(cfg: Any, kind: str) -> None:
    cl = cfg_get(cfg, "class_list")
    if cl is not None and cl != kind:
        raise DataError(f"data.class_list={cl!r} does not apply to source {kind!r}, whose classes are fixed; "
                        "leave data.class_list empty and choose classes with data.classes")


class InMemorySource(BaseSource):
    """Sources whose split fits in memory as (images uint8 NHWC, full labels)."""

    def _split_arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _index(self, split):
        images, labels = self._split_arrays(split)
        return np.arange(len(labels), dtype=np.int64), labels.astype(np.int64)

    def _load(self, split, pos):
        images, _ = self._split_arrays(split)
        return images[pos], np.zeros(0, np.int64)


class DigitsSource(InMemorySource):
    kind = "sklearn-digits"

    def __init__(self, cfg: Any):
        super().__init__(cfg)
        _no_class_list(cfg, self.kind)
        self._splits: dict[str, tuple[np.ndarray, np.ndarray]] | None = None

    def _full_classes(self) -> ClassList:
        return fixed_list("sklearn-digits", [str(i) for i in range(10)], "sklearn.datasets.load_digits")

    def _split_arrays(self, split):
        if self._splits is None:
            from sklearn.datasets import load_digits

            d = load_digits()
            images = np.rint(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[..., None]
            y = d.target.astype(np.int64)
            test_idx = digits_test_indices(y)
            is_test = np.zeros(len(y), dtype=bool)
            is_test[test_idx] = True
            self._splits = {"train": (images[~is_test], y[~is_test]), "test": (images[is_test], y[is_test])}
        return self._splits[split]


def digits_test_indices(y: np.ndarray, seed: int = DIGITS_SEED, fraction: float = DIGITS_TEST_FRACTION) -> np.ndarray:
    """Stratified test indices (sorted): round(fraction * n_c) per class from one seeded generator."""
    rng = np.random.default_rng(seed)
    out = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        out.append(rng.permutation(idx)[: int(round(fraction * len(idx)))])
    return np.sort(np.concatenate(out))


class FashionMNISTSource(InMemorySource):
    kind = "fashion-mnist"

    def __init__(self, cfg: Any):
        super().__init__(cfg)
        _no_class_list(cfg, self.kind)
        self.download = bool(cfg_get(cfg, "download", False))
        self.dir = self._locate()
        self._data: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def _locate(self) -> Path:
        root = Path(self.root or FASHION_DEFAULT_ROOT).expanduser()
        if str(root).startswith("s3:") or "://" in str(root):
            raise DataError(f"fashion-mnist reads a local directory; got {root}. Copy the IDX files locally.")
        missing = [stem for stem in FASHION_FILES.values() if find_idx(root, stem) is None]
        if not missing:
            return root
        if self.download:
            target = root if self.root else Path(FASHION_CACHE).expanduser()
            if target != root and all(find_idx(target, s) for s in FASHION_FILES.values()):
                return target
            return download_fashion_mnist(target)
        what = "does not exist" if not root.exists() else f"lacks {', '.join(m + '[.gz]' for m in missing)}"
        raise DataError(
            f"Fashion-MNIST not found: {root} {what}. Get it in one of three ways: "
            f"`apt-get install dataset-fashion-mnist` (installs it in {FASHION_DEFAULT_ROOT}); "
            "or point to a directory with the four IDX files: --set data.root=DIR; "
            f"or fetch the canonical files: --set data.download=true (into data.root, else {FASHION_CACHE}).")

    def _full_classes(self) -> ClassList:
        return fixed_list("fashion-mnist", FASHION_CLASSES, "Zalando Research fashion-mnist")

    def _split_arrays(self, split):
        if split not in self._data:
            img_path = find_idx(self.dir, FASHION_FILES[(split, "images")])
            lab_path = find_idx(self.dir, FASHION_FILES[(split, "labels")])
            images, labels = read_idx(img_path), read_idx(lab_path)
            if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
                raise DataError(f"{img_path} {images.shape} and {lab_path} {labels.shape} do not match: "
                                "expected (N, 28, 28) images and (N,) labels")
            if labels.size and (labels.min() < 0 or labels.max() >= len(FASHION_CLASSES)):
                raise DataError(f"{lab_path} has labels outside 0..9")
            self._data[split] = (images.astype(np.uint8)[..., None], labels.astype(np.int64))
        return self._data[split]

    def _file_facts(self, split: str) -> list:
        # name and size: the canonical IDX files are fixed, so a reinstall (new mtime) is the same data
        return [(p.name, p.stat().st_size) for kind in ("images", "labels")
                for p in [find_idx(self.dir, FASHION_FILES[(split, kind)])]]

    def describe(self) -> dict:
        d = super().describe()
        d["root"] = str(self.dir)
        return d


def _imagefolder(cfg):
    from .imagefolder import ImageFolderSource
    return ImageFolderSource(cfg)


def _parquet(cfg):
    from .parquet import ParquetSource
    return ParquetSource(cfg)


SOURCES = {
    "sklearn-digits": DigitsSource,
    "fashion-mnist": FashionMNISTSource,
    "imagefolder": _imagefolder,
    "parquet": _parquet,
}


def open_source(cfg: Any) -> BaseSource:
    """Build the source named by ``cfg.source`` (a ``DataConfig``, any object with attributes, or a dict)."""
    kind = cfg_get(cfg, "source", "sklearn-digits")
    if kind not in SOURCES:
        raise DataError(f"unknown data source {kind!r}; valid choices: {', '.join(SOURCES)} (data.source)")
    return SOURCES[kind](cfg)
