"""The plan's data facts: list the source, or, when it cannot be reached and the classes are
ImageNet-1K wnids, the known ILSVRC-2012 split sizes; each number says where it came from."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ...config import JobConfig

log = logging.getLogger("mgd_ray")


@dataclass
class DataFacts:
    """What the plan needs from a data source, and where each number came from."""

    classes: Any                   # a ClassList (names, name, dit_label ...)
    train: int
    test: int
    train_exact: bool = True
    test_exact: bool = True
    train_min: int | None = None
    basis: str = ""
    fallback_reason: str | None = None

    def train_text(self) -> str:
        if self.train_exact:
            return f"{self.train:,}"
        return f"at most {self.train:,} (between {self.train_min:,} and {self.train:,})"


def source_facts(source) -> DataFacts:
    n_train, n_test = source.num_rows("train"), source.num_rows("test")
    where = getattr(source, "root", None) or getattr(source, "kind", "the source")
    return DataFacts(classes=source.classes, train=n_train, test=n_test,
                     basis=f"listed from {where}")


def _selected_classes(job: JobConfig):
    """The class selection resolved without touching the data, or None when that needs a listing.

    Unknown class names raise ``DataError`` here, exactly as the source would.
    """
    from ...data.base import resolve_selection
    from ...data.classlists import imagenet1k, is_class_list_name, load_class_list
    d = job.data
    if d.class_list is not None:
        full = load_class_list(d.class_list)
    elif isinstance(d.classes, str) and (is_class_list_name(d.classes) or d.classes.endswith(".txt")):
        full = load_class_list(d.classes)
    elif isinstance(d.classes, (list, tuple)) and all(str(c) in imagenet1k().names for c in d.classes):
        full = imagenet1k()
    else:
        return None
    return resolve_selection(full, d.classes)


def _root_reachable(job: JobConfig) -> bool:
    """True when ``<data.root>/train`` can be seen (then a data error is a real data problem)."""
    if not job.data.root:
        return False
    try:
        import fsspec
        fs, base = fsspec.core.url_to_fs(str(job.data.root), **dict(job.data.storage_options or {}))
        return bool(fs.isdir(base.rstrip("/") + "/train"))
    except Exception:  # noqa: BLE001 - unreachable, no credentials, no such bucket ...
        return False


def _known_data_facts(job: JobConfig, reason: str) -> DataFacts | None:
    from ... import known
    if job.data.source not in ("imagefolder", "parquet"):
        return None
    classes = _selected_classes(job)
    if classes is None:
        return None
    from ...data.classlists import imagenet1k
    ref = imagenet1k().names
    if not all(n in ref for n in classes.names):
        return None
    C = len(classes)
    f = known.imagenet_split_facts(C)
    train, train_min, train_exact = f.train, f.train_min, f.train_exact
    lim = job.data.limit_per_class
    if lim is not None:
        train = C * min(lim, known.IMAGENET_TRAIN_PER_CLASS_MAX)
        train_min = C * min(lim, known.IMAGENET_TRAIN_PER_CLASS_MIN)
        train_exact = lim <= known.IMAGENET_TRAIN_PER_CLASS_MIN
    test = f.test
    tlim = job.data.test_limit_per_class
    if tlim is not None:
        test = C * min(tlim, known.IMAGENET_VAL_PER_CLASS)
    return DataFacts(classes=classes, train=train, test=test, train_exact=train_exact, test_exact=True,
                     train_min=train_min, basis=f"known split sizes: {f.source}", fallback_reason=reason)


def data_facts(job: JobConfig) -> DataFacts:
    """List the source; fall back to known ImageNet split sizes when it cannot be reached."""
    from ...data import open_source
    try:
        return source_facts(open_source(job.data))
    except Exception as e:  # noqa: BLE001 - decided below: fall back, or raise the original error
        reason = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        if _root_reachable(job):
            raise  # the data is there and something is wrong with it: say so
        facts = _known_data_facts(job, reason)
        if facts is None:
            raise
        log.info("dry run: data source %s cannot be listed (%s); using %s", job.data.root, reason, facts.basis)
        return facts
