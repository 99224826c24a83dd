"""``<root>/<split>/<class dir>/**/<image>`` on local disk or any fsspec URL (``s3://``).

- Class dirs are wnids or class names (a dir also matches a class by one of its WordNet
  synonyms, case-insensitively: ``tench/`` for ``n01440764``).
- Labels follow the class list: ``data.class_list`` (built-in name or txt file), else the
  list named by ``data.classes`` (or, for a list of names, those names in the order given),
  else the sorted directory names of the train split.
  Dirs outside the list are ignored (logged); a class in the list without a dir is an error.
- ``id`` = position of the file in the sorted listing of every image under ``<root>/<split>``
  (all class dirs, chosen or not), so ids do not move when the class selection changes.
- Images are decoded with PIL and converted to RGB. Unreadable ones are skipped and
  recorded in ``failures``; more than ``data.max_failures`` raises ``DataError``.
- ``ray_dataset`` lists files in the driver and decodes in ``map_batches`` tasks with a
  fractional ``num_cpus`` (a 2-core box deadlocks with whole-CPU tasks, see field notes).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .base import _UNSET, SPLITS, BaseSource, cfg_get, check_split, file_stamp, log
from .classlists import ClassList, imagenet1k, is_class_list_name, load_class_list
from .decode import decode_many, error_text, fetch_paths, image_dataset, shown_path
from .errors import DataError
from .failures import FailureLog

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")


def _with_descriptions(names: Sequence[str], name: str, version: str, source: str) -> ClassList:
    ref = imagenet1k()
    desc = tuple(ref.descriptions[ref.names.index(n)] if n in ref.names else "" for n in names)
    return ClassList(name=name, version=version, names=tuple(names), descriptions=desc, source=source)


class ImageFolderSource(BaseSource):
    kind = "imagefolder"

    def __init__(self, cfg: Any):
        super().__init__(cfg)
        if not self.root:
            raise DataError("source 'imagefolder' needs data.root: a directory or s3:// URL holding "
                            "train/<class>/* and test/<class>/* (--set data.root=DIR)")
        import fsspec

        try:
            self.fs, self.base = fsspec.core.url_to_fs(str(self.root), **self.storage_options)
        except Exception as e:  # noqa: BLE001
            raise DataError(f"cannot open data.root={self.root}: {error_text(e)}") from None
        self.base = self.base.rstrip("/")
        self.batch_files = 256
        self._log = FailureLog(self.max_failures, str(self.root))
        self._listing: dict[str, tuple[list[str], list[str]]] = {}
        self._full: ClassList | None = None
        self._paths: dict[str, np.ndarray] = {}
        self._facts: dict[str, list] = {}

    def _file_facts(self, split: str) -> list:
        self._list(split)
        return self._facts[split]

    def _class_file_facts(self, split, pos, labels):
        """Each class: the facts (path, size, stamp) of exactly the files of its selected rows."""
        rel = self._list(split)[0]
        by_path = {f[0]: f for f in self._facts[split]}
        out: dict[int, list] = {}
        for p, k in zip(np.asarray(pos).tolist(), np.asarray(labels).tolist()):
            out.setdefault(int(k), []).append(by_path[rel[p]])
        return out

    # -- listing ------------------------------------------------------------------------
    def _list(self, split: str) -> tuple[list[str], list[str]]:
        """(relative paths, class dirs) of every image file of the split, sorted by path."""
        check_split(split)
        if split not in self._listing:
            top = f"{self.base}/{split}"
            try:
                self.fs.invalidate_cache()
                found = self.fs.find(top, withdirs=False, detail=True) if self.fs.isdir(top) else None
            except Exception as e:  # noqa: BLE001
                raise DataError(f"cannot list {self.root}/{split}: {error_text(e)}. Check data.root and "
                                "data.storage_options (endpoint, credentials).") from None
            if found is None:
                raise DataError(f"imagefolder split directory not found: {self.root}/{split}. Expected "
                                f"<root>/{{{','.join(SPLITS)}}}/<class dir>/<images>; fix data.root.")
            rel, dirs, skipped = [], [], 0
            self._facts[split] = [(p[len(top) + 1:], found[p].get("size"), file_stamp(found[p])) for p in sorted(found)]
            for p in sorted(found):
                r = p[len(top) + 1:] if p.startswith(top + "/") else p
                parts = r.split("/")
                if len(parts) < 2 or any(x.startswith(".") for x in parts):
                    continue
                if not r.lower().endswith(IMG_EXTENSIONS):
                    skipped += 1
                    continue
                rel.append(r)
                dirs.append(parts[0])
            if skipped:
                log.info("imagefolder %s/%s: ignored %d files without an image extension", self.root, split,
                         skipped)
            self._listing[split] = (rel, dirs)
        return self._listing[split]

    def _full_classes(self) -> ClassList:
        if self._full is None:
            cl = cfg_get(self.cfg, "class_list")
            classes = cfg_get(self.cfg, "classes")
            if cl is not None:
                self._full = load_class_list(cl)
            elif isinstance(classes, str) and (is_class_list_name(classes) or classes.endswith(".txt")):
                self._full = load_class_list(classes)
            elif isinstance(classes, (list, tuple)):
                self._full = self._selection_list([str(c) for c in classes])
            else:
                dirs = sorted(set(self._list("train")[1]))
                if not dirs:
                    raise DataError(f"no class directories with images under {self.root}/train")
                self._full = _with_descriptions(dirs, "imagefolder", "dirs", f"sorted dirs of {self.root}/train")
        return self._full

    def _selection_list(self, names: list[str]) -> ClassList:
        """``data.classes`` as a list, no class list: wnids / ImageNet names -> a subset of ImageNet-1K
        (so ``parent_labels`` are DiT labels); other names must be dir names, in the order given."""
        ref = imagenet1k()
        if all(n in ref.names for n in names):  # wnids: labels relative to ImageNet-1K (parent_labels = DiT)
            return ref
        dirs = sorted(set(self._list("train")[1]))
        if all(n in dirs for n in names):
            return _with_descriptions(names, "imagefolder", "selection", f"data.classes of {self.root}")
        try:
            ref.subset(names)  # human names of ImageNet classes ("tench")
            return ref
        except DataError:
            pass
        return _with_descriptions(dirs, "imagefolder", "dirs", f"sorted dirs of {self.root}/train").subset(names)

    def _dir_map(self, split: str) -> dict[str, int]:
        """class dir -> label in the full class list, for the dirs that belong to it."""
        full = self._full_classes()
        dirs = sorted(set(self._list(split)[1]))
        mapping, ignored = {}, []
        for d in dirs:
            try:
                i = full._find(d)
            except DataError:
                i = None
            if i is None:
                ignored.append(d)
            elif i in mapping.values():
                other = next(k for k, v in mapping.items() if v == i)
                raise DataError(f"two directories in {self.root}/{split} map to class {full.names[i]!r}: "
                                f"{other!r} and {d!r}; keep one")
            else:
                mapping[d] = i
        if ignored:
            log.info("imagefolder %s/%s: ignored %d dirs not in class list %r: %s", self.root, split,
                     len(ignored), full.name, ", ".join(ignored[:10]) + (" ..." if len(ignored) > 10 else ""))
        wanted = {full.index(n) for n in self.classes.names}
        missing = [full.names[i] for i in sorted(wanted - set(mapping.values()))]
        if missing:
            raise DataError(f"{len(missing)} classes of class list {self.classes.name!r} have no directory in "
                            f"{self.root}/{split}: {', '.join(missing[:20])}{' ...' if len(missing) > 20 else ''}. "
                            "Add the directories, or leave those classes out with data.classes.")
        return mapping

    def _index(self, split):
        rel, dirs = self._list(split)
        mapping = self._dir_map(split)
        labels = np.array([mapping.get(d, -1) for d in dirs], dtype=np.int64)
        self._paths[split] = np.array([f"{self.base}/{split}/{r}" for r in rel], dtype=object)
        return np.arange(len(rel), dtype=np.int64), labels

    # -- loading ------------------------------------------------------------------------
    def paths(self, split: str, pos: np.ndarray) -> list[str]:
        self._rows(split)
        return list(self._paths[split][pos])

    def _load(self, split, pos):
        paths = self.paths(split, pos)
        images: list[np.ndarray] = []
        bad: list[int] = []
        for s in range(0, len(paths), self.batch_files):
            imgs, errs = decode_many(self.fs, paths[s:s + self.batch_files])
            for k, (im, err) in enumerate(zip(imgs, errs)):
                if err is None:
                    images.append(im)
                else:
                    bad.append(int(pos[s + k]))
                    self._log.add(shown_path(self.fs, paths[s + k]), split, err)
                    log.warning("unreadable image %s: %s", shown_path(self.fs, paths[s + k]), err)
        self._log.check()
        return images, np.asarray(bad, dtype=np.int64)

    @property
    def failures(self) -> list[tuple[str, str, str]]:
        return self._log.rows

    def ray_dataset(self, split: str, limit_per_class: int | None = _UNSET, classes: Sequence[int] | None = None,
                    image_size: int | None = None, mode: str = "center-crop", rows_per_block: int = 256,
                    batch_size: int = 64, num_cpus: float = 0.25, failures_dir: str | None = None,
                    failures_storage_options: dict | None = None, **_):
        """Decode in Ray tasks. Columns id, label, class_name, image (uint8, image_size square if given).

        Unreadable images are dropped; with ``failures_dir`` each batch writes its failures there
        (``failures.read_failures`` collects them; ``failures.check_failure_limit`` applies the limit).
        """
        pos, ids, labels = self.select(split, limit_per_class, classes)
        index = {"id": ids, "label": labels, "class_name": np.asarray(self.classes.names, dtype=object)[labels],
                 "path": np.asarray(self.paths(split, pos), dtype=object)}
        return image_dataset(index, rows_per_block, fetch_paths, dict(fs=self.fs), split, image_size, mode,
                             batch_size, num_cpus, failures_dir, failures_storage_options)

    def describe(self) -> dict:
        d = super().describe()
        d["max_failures"] = self._log.max_failures
        d["failures"] = len(self.failures)
        return d
