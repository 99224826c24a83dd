"""What every source shares: config access, class selection, per-class limits, arrays and Ray.

A concrete source implements three things:

- ``_full_classes()``  the class list that defines the labels before ``data.classes``
- ``_index(split)``    ``(ids, full_labels)`` of every row of the split, in id order; the id
                       is the row's stable position in the split's deterministic order
- ``_load(split, pos)`` the images of rows ``pos`` (positions into ``_index``) as uint8 HWC
                       arrays, plus the positions that could not be read (reported, skipped)

Everything else (class filter, ``limit_per_class``, ``arrays``, ``ray_dataset``) is here.
"""
from __future__ import annotations

import logging
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from .classlists import ClassList, is_class_list_name, load_class_list
from .errors import DataError
from .preprocess import fit_batch

log = logging.getLogger("mgd_ray.data")

SPLITS = ("train", "test")
_UNSET: Any = object()


def cfg_get(cfg: Any, key: str, default: Any = None) -> Any:
    """Read ``key`` from a dict or an object with attributes (pydantic ``DataConfig``)."""
    if cfg is None:
        return default
    if isinstance(cfg, dict):
        v = cfg.get(key, default)
    else:
        v = getattr(cfg, key, default)
    return default if v is None else v


def file_stamp(info: dict) -> str:
    """What says a file changed, from an fsspec ``info``: the ETag on object stores, else the
    modification time (local ``mtime``, S3 ``LastModified``)."""
    for k in ("ETag", "etag", "mtime", "LastModified", "last_modified", "created"):
        if info.get(k) is not None:
            return str(info[k])
    return ""


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; valid choices: {', '.join(SPLITS)}")
    return split


def resolve_selection(full: ClassList, classes: Any) -> ClassList:
    """Apply ``data.classes`` to the full class list.

    None -> all classes. A list -> those classes, in the order given (that order defines the
    labels). A string -> a built-in class-list name or a class-list file (its order defines
    the labels), else a single class name.
    """
    if classes is None:
        return full
    if isinstance(classes, str):
        if is_class_list_name(classes) or classes.endswith(".txt"):
            chosen = load_class_list(classes)
            if chosen.names == full.names:
                return full
            return full.subset(chosen.names, name=chosen.name)
        return full.subset([classes])
    if isinstance(classes, (list, tuple)):
        return full.subset([str(c) for c in classes])
    raise DataError(f"data.classes must be null, a list of class names or a class-list name; got {classes!r}")


def _limit_key(split: str) -> str:
    return "limit_per_class" if split == "train" else "test_limit_per_class"


@runtime_checkable
class Source(Protocol):
    """What the pipeline relies on (``BaseSource`` implements it)."""

    classes: ClassList
    max_failures: int

    def num_rows(self, split: str) -> int: ...
    def arrays(self, split: str, limit_per_class: int | None = ..., classes: Sequence[int] | None = None,
               image_size: int | None = None, mode: str = "center-crop") -> dict[str, np.ndarray]: ...
    def arrays_at(self, split: str, index: np.ndarray, image_size: int | None = None,
                  mode: str = "center-crop") -> dict[str, np.ndarray]: ...

    def ray_dataset(self, split: str, **kwargs): ...
    def failures_table(self): ...
    def describe(self) -> dict: ...


class BaseSource:
    """Common machinery; see the module docstring for what a subclass provides."""

    kind = "base"

    def __init__(self, cfg: Any):
        self.cfg = cfg
        self.root = cfg_get(cfg, "root")
        self.storage_options = dict(cfg_get(cfg, "storage_options", {}) or {})
        self.max_failures = int(cfg_get(cfg, "max_failures", 100))
        self._classes: ClassList | None = None
        self._cache: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    # -- to implement -------------------------------------------------------------------
    def _full_classes(self) -> ClassList:
        raise NotImplementedError

    def _index(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _load(self, split: str, pos: np.ndarray) -> tuple[list[np.ndarray] | np.ndarray, np.ndarray]:
        raise NotImplementedError

    # -- classes and rows ---------------------------------------------------------------
    @property
    def classes(self) -> ClassList:
        if self._classes is None:
            self._classes = resolve_selection(self._full_classes(), cfg_get(self.cfg, "classes"))
        return self._classes

    def _rows(self, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(positions into _index, ids, labels) of the rows of the selected classes, in id order."""
        check_split(split)
        if split not in self._cache:
            ids, full_labels = self._index(split)
            full = self._full_classes()
            remap = np.full(len(full) + 1, -1, dtype=np.int64)  # full label -1 (no class) -> -1
            for j, name in enumerate(self.classes.names):
                remap[full.index(name)] = j
            labels = remap[np.asarray(full_labels, dtype=np.int64)]
            pos = np.flatnonzero(labels >= 0)
            self._cache[split] = (pos, np.asarray(ids, np.int64)[pos], labels[pos])
        return self._cache[split]

    def select(self, split: str, limit_per_class: int | None = _UNSET,
               classes: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(positions, ids, labels) after the class filter and the per-class limit (first N by id).

        ``limit_per_class`` defaults to ``data.limit_per_class`` for train and
        ``data.test_limit_per_class`` for test; pass None for no limit.
        ``classes``: labels (of ``self.classes``) to keep.
        """
        pos, ids, labels = self._rows(split)
        if limit_per_class is _UNSET:
            limit_per_class = cfg_get(self.cfg, _limit_key(split))
        if classes is not None:
            bad = [c for c in classes if not 0 <= int(c) < len(self.classes)]
            if bad:
                raise DataError(f"labels {bad} out of range for class list {self.classes.name!r} "
                                f"({len(self.classes)} classes)")
            keep = np.isin(labels, np.asarray(list(classes), dtype=np.int64))
            pos, ids, labels = pos[keep], ids[keep], labels[keep]
        if limit_per_class is not None:
            if int(limit_per_class) <= 0:
                raise DataError(f"limit_per_class must be > 0, got {limit_per_class}")
            keep = np.zeros(len(labels), dtype=bool)
            for c in np.unique(labels):
                keep[np.flatnonzero(labels == c)[: int(limit_per_class)]] = True
            pos, ids, labels = pos[keep], ids[keep], labels[keep]
        return pos, ids, labels

    def num_rows(self, split: str, limit_per_class: int | None = _UNSET,
                 classes: Sequence[int] | None = None) -> int:
        """Rows ``arrays(split)`` would return with the same arguments (before unreadable images)."""
        return int(len(self.select(split, limit_per_class, classes)[0]))

    def class_counts(self, split: str, limit_per_class: int | None = _UNSET) -> dict[str, int]:
        _, _, labels = self.select(split, limit_per_class)
        counts = np.bincount(labels, minlength=len(self.classes))
        return {n: int(c) for n, c in zip(self.classes.names, counts)}

    # -- outputs ------------------------------------------------------------------------
    def arrays(self, split: str, limit_per_class: int | None = _UNSET, classes: Sequence[int] | None = None,
               image_size: int | None = None, mode: str = "center-crop") -> dict[str, np.ndarray]:
        """``id`` int64 (N,), ``label`` int64 (N,), ``class_name`` str (N,), ``image`` uint8 (N,H,W,C).

        Native image size unless ``image_size`` is given (then ``mode`` as in ``preprocess``).
        Rows whose image cannot be read are left out and reported (see ``failures``).
        """
        pos, ids, labels = self.select(split, limit_per_class, classes)
        images, bad = self._load(split, pos)
        if len(bad):
            ok = ~np.isin(pos, bad)
            ids, labels = ids[ok], labels[ok]
        images = fit_batch(images, image_size, mode)
        names = np.asarray(self.classes.names, dtype=object)
        return {"id": ids, "label": labels, "class_name": names[labels] if len(labels) else names[:0],
                "image": images}

    def arrays_at(self, split: str, index: np.ndarray, image_size: int | None = None,
                  mode: str = "center-crop") -> dict[str, np.ndarray]:
        """Like ``arrays`` but only the rows ``index`` (positions in ``select(split)`` order): reads
        just those images (e.g. a random-real baseline out of 1.28 M ImageNet images)."""
        pos, ids, labels = self.select(split)
        index = np.asarray(index, dtype=np.int64)
        pos, ids, labels = pos[index], ids[index], labels[index]
        images, bad = self._load(split, pos)
        if len(bad):
            ok = ~np.isin(pos, bad)
            ids, labels = ids[ok], labels[ok]
        return {"id": ids, "label": labels, "image": fit_batch(images, image_size, mode)}

    def ray_dataset(self, split: str, limit_per_class: int | None = _UNSET, classes: Sequence[int] | None = None,
                    image_size: int | None = None, mode: str = "center-crop", rows_per_block: int = 2048, **_):
        """A ``ray.data.Dataset`` with columns id, label, class_name, image (uint8 HWC).

        In-memory sources build it from ``arrays`` in the driver (small data: digits, Fashion-MNIST).
        """
        import ray.data

        a = self.arrays(split, limit_per_class, classes, image_size, mode)
        n = len(a["id"])
        step = max(1, int(rows_per_block))
        tables = [_block(a, s, min(n, s + step)) for s in range(0, max(n, 1), step)]
        return ray.data.from_arrow(tables)

    @property
    def failures(self) -> list[tuple[str, str, str]]:
        """(path, split, error) of every image that could not be read so far."""
        return []

    def failures_table(self):
        from .failures import failures_to_table
        return failures_to_table(self.failures)

    def fingerprint(self, split: str = "train") -> str:
        """A cheap hash of what the split's selected rows are, reading no pixels: the source kind,
        the class names in label order, the ids and labels of the selected rows, and the files
        behind the split (path, size, modification time or ETag, where the source has files). A
        file added, removed or rewritten changes it, and so does a class list file's content."""
        import hashlib
        import json
        h = hashlib.sha256(json.dumps([self.kind, list(self.classes.names)]).encode())
        _, ids, labels = self.select(split)
        h.update(np.ascontiguousarray(ids, dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
        for fact in self._file_facts(split):
            h.update(json.dumps(fact, default=str).encode())
        return h.hexdigest()[:16]

    def _file_facts(self, split: str) -> list:
        """(path, size, mtime/etag) of the files behind a split; none for in-memory sources."""
        return []

    def class_fingerprints(self, split: str = "train") -> list[str]:
        """One hash per selected class (label order), of what that class's rows are, reading no
        pixels: the source kind, the class's label and name, the ids of its selected rows, and the
        files its rows come from (``_class_file_facts``). A file added, removed or rewritten under
        one class changes that class's fingerprint; so does anything that moves its ids (an
        imagefolder's ids are positions in the whole sorted listing, so a file added before them
        moves them too). Classes whose fingerprint is unchanged keep their work (per-class keys,
        ``pipeline.stage.class_keys``)."""
        import hashlib
        import json
        pos, ids, labels = self.select(split)
        facts = self._class_file_facts(split, pos, labels)
        out = []
        for k, name in enumerate(self.classes.names):
            h = hashlib.sha256(json.dumps([self.kind, k, name]).encode())
            h.update(np.ascontiguousarray(ids[labels == k], dtype=np.int64).tobytes())
            for fact in facts.get(k, []):
                h.update(json.dumps(fact, default=str).encode())
            out.append(h.hexdigest()[:16])
        return out

    def _class_file_facts(self, split: str, pos: np.ndarray, labels: np.ndarray) -> dict[int, list]:
        """label -> the file facts behind that class's selected rows. By default every file of the
        split for every class (a file may hold rows of any class: conservative); sources that know
        which file holds a row narrow it."""
        facts = self._file_facts(split)
        return {k: facts for k in range(len(self.classes))}

    def describe(self) -> dict:
        """A JSON-able summary: source, where, class list, rows per split. Never credentials."""
        d = {"source": self.kind, "root": self.root, "class_list": self.classes.to_dict(),
             "limit_per_class": cfg_get(self.cfg, "limit_per_class"),
             "test_limit_per_class": cfg_get(self.cfg, "test_limit_per_class"),
             "rows": {s: self.num_rows(s) for s in SPLITS}}
        if self.storage_options:
            d["storage_options_keys"] = sorted(self.storage_options)  # names only, no values
        return d


def _block(a: dict[str, np.ndarray], start: int, stop: int):
    """Rows [start, stop) of ``arrays`` output as a pyarrow table with a Ray tensor image column."""
    import pyarrow as pa
    from ray.data.extensions import ArrowTensorArray

    return pa.table({
        "id": pa.array(a["id"][start:stop], pa.int64()),
        "label": pa.array(a["label"][start:stop], pa.int64()),
        "class_name": pa.array(list(a["class_name"][start:stop]), pa.string()),
        "image": ArrowTensorArray.from_numpy(np.ascontiguousarray(a["image"][start:stop])),
    })
