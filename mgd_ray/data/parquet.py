"""Parquet files with an encoded-image column (PNG/JPEG bytes) and a label column.

Where the files of a split are found (local or any fsspec URL):
1. ``data.root`` containing ``{split}``: that file or directory (``s3://b/fm/{split}.parquet``);
2. ``<root>/<split>/``: every ``*.parquet`` below it;
3. files in ``<root>`` or ``<root>/data`` named ``<split>.parquet`` / ``<split>-*.parquet`` /
   ``<split>_*.parquet`` (the Hugging Face layout).

Columns: ``data.image_column`` (binary, or a struct with a ``bytes`` field as Hugging Face
writes it), ``data.label_column`` (integer label, or the class name as a string), and an
optional ``class_name`` column. Labels follow ``data.class_list`` when given (a
``class_name`` column must then agree with it, which catches class-order mismatches); else
the ``class_name`` column names the integer labels; else string labels are sorted; else
labels are named "0".."K-1". ``id`` = row position across the split's files in path order.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np

from .base import _UNSET, BaseSource, cfg_get, check_split, file_stamp
from .classlists import ClassList, load_class_list
from .decode import decode_all, error_text, image_dataset, shown_path
from .errors import DataError
from .failures import FailureLog


class ParquetSource(BaseSource):
    kind = "parquet"

    def __init__(self, cfg: Any):
        super().__init__(cfg)
        if not self.root:
            raise DataError("source 'parquet' needs data.root: a directory, file pattern with {split}, "
                            "or s3:// URL of Parquet files (--set data.root=...)")
        self.image_column = cfg_get(cfg, "image_column", "image")
        self.label_column = cfg_get(cfg, "label_column", "label")
        self._log = FailureLog(self.max_failures, str(self.root))
        self._files: dict[str, tuple[Any, list[str]]] = {}
        self._meta: dict[str, tuple[np.ndarray, np.ndarray | None, list[str]]] = {}
        self._starts: dict[str, np.ndarray] = {}    # first row of each file in the split
        self._full: ClassList | None = None

    def _file_facts(self, split: str) -> list:
        fs, found = self.files(split)
        return [(f, info.get("size"), file_stamp(info)) for f in found for info in [fs.info(f)]]

    def _class_file_facts(self, split, pos, labels):
        """Each class: the facts of the files that hold its selected rows (a file holding rows of
        two classes is behind both)."""
        facts = self._file_facts(split)
        self._labels_raw(split)
        starts = self._starts[split]
        file = np.searchsorted(starts, np.asarray(pos, dtype=np.int64), side="right") - 1
        labels = np.asarray(labels, dtype=np.int64)
        return {k: [facts[f] for f in np.unique(file[labels == k]).tolist()] for k in range(len(self.classes))}

    # -- files and columns --------------------------------------------------------------
    def files(self, split: str) -> tuple[Any, list[str]]:
        check_split(split)
        if split in self._files:
            return self._files[split]
        import fsspec

        url = str(self.root)
        try:
            if "{split}" in url:
                fs, p = fsspec.core.url_to_fs(url.replace("{split}", split), **self.storage_options)
                found = sorted(f for f in fs.find(p) if f.endswith(".parquet")) if fs.isdir(p) else (
                    [p] if fs.isfile(p) else [])
            else:
                fs, base = fsspec.core.url_to_fs(url, **self.storage_options)
                base = base.rstrip("/")
                if fs.isdir(f"{base}/{split}"):
                    found = sorted(f for f in fs.find(f"{base}/{split}") if f.endswith(".parquet"))
                else:
                    pat = re.compile(rf"{split}([-_.].*)?\.parquet$")
                    found = []
                    for d in (base, f"{base}/data"):
                        if fs.isdir(d):
                            found += [f for f in fs.ls(d, detail=False) if pat.fullmatch(f.rsplit("/", 1)[-1])]
                    found = sorted(found)
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001
            raise DataError(f"cannot list Parquet files at {url}: {error_text(e)}. Check data.root and "
                            "data.storage_options.") from None
        if not found:
            raise DataError(f"no Parquet files for split {split!r} at {url}. Expected {url}/{split}/*.parquet, "
                            f"{url}/{split}[-*].parquet, or a data.root containing '{{split}}'.")
        self._files[split] = (fs, found)
        return self._files[split]

    def _read(self, split: str, columns: list[str]):
        import pyarrow.parquet as pq

        fs, found = self.files(split)
        tables = []
        for f in found:
            schema = pq.read_schema(f, filesystem=fs)
            missing = [c for c in columns if c not in schema.names and c != "class_name"]
            if missing:
                raise DataError(f"{shown_path(fs, f)} has no column {missing[0]!r} (columns: "
                                f"{', '.join(schema.names)}); set data.image_column / data.label_column")
            cols = [c for c in columns if c in schema.names]
            tables.append(pq.read_table(f, columns=cols, filesystem=fs))
        return tables, found

    def _labels_raw(self, split: str):
        """(raw label values, class_name values or None, row origin strings) of the split."""
        if split not in self._meta:
            cols = [self.label_column] + (["class_name"] if self.label_column != "class_name" else [])
            tables, found = self._read(split, cols)
            fs = self.files(split)[0]
            raw = np.concatenate([t.column(self.label_column).to_numpy(zero_copy_only=False) for t in tables])
            names = None
            if all("class_name" in t.column_names for t in tables) and self.label_column != "class_name":
                names = np.concatenate([t.column("class_name").to_numpy(zero_copy_only=False) for t in tables])
            origin = [f"{shown_path(fs, f)}#{i}" for f, t in zip(found, tables) for i in range(t.num_rows)]
            self._meta[split] = (raw, names, origin)
            self._starts[split] = np.cumsum([0] + [t.num_rows for t in tables])[:-1]
        return self._meta[split]

    # -- classes and rows ---------------------------------------------------------------
    def _full_classes(self) -> ClassList:
        if self._full is not None:
            return self._full
        cl = cfg_get(self.cfg, "class_list")
        raw, names, _ = self._labels_raw("train")
        if cl is not None:
            self._full = load_class_list(cl)
        elif raw.dtype.kind in "OUS":
            self._full = ClassList("parquet", "labels", tuple(sorted({str(x) for x in raw})),
                                   source=f"sorted labels of {self.root}")
        else:
            k = int(raw.max()) + 1 if len(raw) else 0
            table = [str(i) for i in range(k)]
            if names is not None:
                seen: dict[int, str] = {}
                for lab, n in zip(raw.tolist(), names.tolist()):
                    if seen.setdefault(int(lab), str(n)) != str(n):
                        raise DataError(f"{self.root}: label {lab} has two class names, {seen[int(lab)]!r} "
                                        f"and {n!r}")
                for lab, n in seen.items():
                    table[lab] = n
            self._full = ClassList("parquet", "labels", tuple(table), source=f"labels of {self.root}")
        return self._full

    def _index(self, split):
        raw, names, _ = self._labels_raw(split)
        full = self._full_classes()
        if raw.dtype.kind in "OUS":
            lookup = {v: full.index(v) for v in {str(x) for x in raw}}
            labels = np.array([lookup[str(x)] for x in raw], dtype=np.int64)
        else:
            labels = raw.astype(np.int64)
            if len(labels) and (labels.min() < 0 or labels.max() >= len(full)):
                raise DataError(f"{self.root} ({split}): labels range {labels.min()}..{labels.max()} but class "
                                f"list {full.name!r} has {len(full)} classes")
            if names is not None:
                for lab, n in sorted(set(zip(labels.tolist(), (str(x) for x in names.tolist())))):
                    if full._find(n) != lab:
                        raise DataError(
                            f"{self.root} ({split}): row with label {lab} has class_name {n!r}, but class list "
                            f"{full.name!r} puts {full.names[lab]!r} at label {lab}: the class order does not "
                            "match. Fix data.class_list or the file.")
        if split == "train":
            self._check_no_empty_class(labels, full, raw.dtype.kind not in "OUS")
        return np.arange(len(labels), dtype=np.int64), labels

    def _check_no_empty_class(self, labels: np.ndarray, full: ClassList, numeric: bool) -> None:
        """Every selected class must have train rows: an empty class has nothing to distil (and was
        found only after the whole encode). Integer labels with a gap (0, 1, 3) make one."""
        counts = np.bincount(labels, minlength=len(full))
        empty = [n for n in self.classes.names if counts[full.index(n)] == 0]
        if not empty:
            return
        shown = ", ".join(f"{n!r} (label {full.index(n)})" for n in empty[:10]) + (" ..." if len(empty) > 10 else "")
        present = [n for n in self.classes.names if n not in empty]
        keep = ("--set data.classes='[" + ", ".join(f'"{n}"' for n in present) + "]'" if len(present) <= 20
                else "data.classes (a list of the classes to keep)")
        if numeric and cfg_get(self.cfg, "class_list") is None:
            why = (f"With integer labels and no data.class_list the classes are the numbers 0..{len(full) - 1} "
                   f"(0..the largest label), so a label number that no row uses is an empty class. Renumber the "
                   f"labels 0..K-1 without gaps, or leave the empty classes out with {keep}, or name the classes "
                   f"with data.class_list (a class-list file)")
        else:
            why = f"Add their rows, or leave them out with {keep}"
        raise DataError(f"{self.root} (train): {len(empty)} selected class(es) have no rows: {shown}; a class "
                        f"without train images has nothing to distil. {why}.")

    def _file_rows(self, split: str, pos: np.ndarray) -> dict[str, np.ndarray]:
        """(file index, row in that file) of split positions ``pos``; checks the image column's type
        from the files' schemas (no data read)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._labels_raw(split)
        fs, found = self.files(split)
        for f in found:
            typ = pq.read_schema(f, filesystem=fs).field(self.image_column).type
            inner = typ.field("bytes").type if pa.types.is_struct(typ) and typ.get_field_index("bytes") >= 0 else typ
            if not (pa.types.is_binary(inner) or pa.types.is_large_binary(inner)):
                raise DataError(f"column {self.image_column!r} of {shown_path(fs, f)} has type {typ}; expected "
                                "encoded image bytes (binary) or a struct with a 'bytes' field")
        starts = self._starts[split]
        file = np.searchsorted(starts, pos, side="right") - 1
        return {"file": file.astype(np.int64), "row": (pos - starts[file]).astype(np.int64)}

    def _blobs(self, split: str, pos: np.ndarray) -> list[bytes | BaseException]:
        fs, found = self.files(split)
        return fetch_parquet_rows(self._file_rows(split, pos), found, fs, self.image_column)[0]

    def _load(self, split, pos):
        images, errors = decode_all(self._blobs(split, pos))
        origin = self._labels_raw(split)[2]
        good, bad = [], []
        for p, im, err in zip(pos.tolist(), images, errors):
            if err is None:
                good.append(im)
            else:
                bad.append(p)
                self._log.add(origin[p], split, err)
        self._log.check()
        return good, np.asarray(bad, dtype=np.int64)

    @property
    def failures(self) -> list[tuple[str, str, str]]:
        return self._log.rows

    def ray_dataset(self, split: str, limit_per_class: int | None = _UNSET, classes: Sequence[int] | None = None,
                    image_size: int | None = None, mode: str = "center-crop", rows_per_block: int = 512,
                    batch_size: int = 128, num_cpus: float = 0.25, failures_dir: str | None = None,
                    failures_storage_options: dict | None = None, **_):
        """Rows are chosen in the driver from the label columns; each Ray task reads its rows' image
        bytes (only the row groups that hold them) and decodes them (same columns as ``arrays``)."""
        pos, ids, labels = self.select(split, limit_per_class, classes)
        fs, found = self.files(split)
        index = {"id": ids, "label": labels, "class_name": np.asarray(self.classes.names, dtype=object)[labels],
                 **self._file_rows(split, pos)}
        return image_dataset(index, rows_per_block, fetch_parquet_rows,
                             dict(files=list(found), fs=fs, column=self.image_column), split, image_size, mode,
                             batch_size, num_cpus, failures_dir, failures_storage_options)


def fetch_parquet_rows(batch: dict, files: Sequence[str], fs, column: str) -> tuple[list, list[str]]:
    """A ``fetch`` for ``image_dataset``: the encoded image of each row (``file`` index, ``row`` in
    that file), reading only the row groups that hold the rows, or the exception that reading raised;
    and each row's origin ``<file>#<row>``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    file, row = np.asarray(batch["file"], dtype=np.int64), np.asarray(batch["row"], dtype=np.int64)
    blobs: list[bytes | BaseException] = [ValueError("not read")] * len(row)
    for f in np.unique(file).tolist():
        sel = np.flatnonzero(file == f)
        try:
            with fs.open(files[f], "rb") as fh:
                pf = pq.ParquetFile(fh)
                sizes = [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)]
                starts = np.cumsum([0] + sizes)[:-1]
                group = np.searchsorted(starts, row[sel], side="right") - 1
                wanted = sorted(set(group.tolist()))
                col = pf.read_row_groups(wanted, columns=[column]).column(column).combine_chunks()
            if pa.types.is_struct(col.type):
                col = col.field("bytes")
            offset = dict(zip(wanted, np.cumsum([0] + [sizes[g] for g in wanted])[:-1].tolist()))
            for k, g, r in zip(sel.tolist(), group.tolist(), row[sel].tolist()):
                v = col[offset[g] + r - int(starts[g])].as_py()
                blobs[k] = v if v is not None else ValueError("empty image cell")
        except Exception as e:  # noqa: BLE001 - an unreadable file fails its rows, as unreadable images do
            for k in sel.tolist():
                blobs[k] = e
    return blobs, [f"{shown_path(fs, files[f])}#{r}" for f, r in zip(file.tolist(), row.tolist())]
