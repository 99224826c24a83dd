"""Unreadable images: collected, written as a table, and bounded by ``data.max_failures``.

A corrupt image is reported, not fatal: the row is skipped and ``(path, split, error)`` is
recorded. When more than ``max_failures`` images fail, ``DataError`` stops the job.
The Ray read path writes its failures as small Parquet parts into a folder
(``failures_dir``), one per batch with a deterministic name; ``read_failures`` gathers them.
"""
from __future__ import annotations

from typing import Iterable

from .errors import DataError

COLUMNS = ("path", "split", "error")


def failures_to_table(rows: Iterable[tuple[str, str, str]]):
    """(path, split, error) tuples -> pyarrow Table with string columns path, split, error (sorted by path)."""
    import pyarrow as pa

    rows = sorted(rows)
    return pa.table({c: pa.array([r[i] for r in rows], pa.string()) for i, c in enumerate(COLUMNS)})


def check_failure_limit(failures: list[tuple[str, str, str]] | int, max_failures: int, where: str = "") -> None:
    """Raise DataError when the number of failures exceeds ``max_failures``."""
    n = failures if isinstance(failures, int) else len(failures)
    if n <= max_failures:
        return
    first = ""
    if not isinstance(failures, int) and failures:
        p, s, e = sorted(failures)[0]
        first = f" First: {p} ({s}): {e}."
    raise DataError(f"{n} images could not be read{' in ' + where if where else ''}, more than the limit "
                    f"data.max_failures={max_failures}.{first} Fix or remove the files, or raise the limit "
                    f"with --set data.max_failures=N.")


class FailureLog:
    """Failures of one source, deduplicated by (split, path)."""

    def __init__(self, max_failures: int, where: str):
        self.max_failures = int(max_failures)
        self.where = where
        self._rows: dict[tuple[str, str], str] = {}

    def add(self, path: str, split: str, error: str) -> None:
        self._rows[(split, path)] = error

    @property
    def rows(self) -> list[tuple[str, str, str]]:
        return sorted((p, s, e) for (s, p), e in self._rows.items())

    def check(self) -> None:
        check_failure_limit(self.rows, self.max_failures, self.where)


def write_failure_part(rows: list[tuple[str, str, str]], failures_dir: str, name: str,
                       storage_options: dict | None = None) -> None:
    """Write one part (used inside Ray tasks; the name must be deterministic, e.g. the batch's first id)."""
    import fsspec
    import pyarrow.parquet as pq

    fs, base = fsspec.core.url_to_fs(failures_dir, **(storage_options or {}))
    fs.makedirs(base, exist_ok=True)
    pq.write_table(failures_to_table(rows), f"{base.rstrip('/')}/{name}.parquet", filesystem=fs)


def read_failures(failures_dir: str, storage_options: dict | None = None):
    """All parts written by the Ray read path -> one Table (path, split, error); empty if none."""
    import fsspec
    import pyarrow.parquet as pq

    fs, base = fsspec.core.url_to_fs(failures_dir, **(storage_options or {}))
    rows: set[tuple[str, str, str]] = set()  # parts of reruns with other batch sizes may overlap
    if fs.exists(base):
        for f in sorted(fs.find(base)):
            if f.endswith(".parquet"):
                t = pq.read_table(f, filesystem=fs).to_pydict()
                rows.update(zip(t["path"], t["split"], t["error"]))
    return failures_to_table(rows)
