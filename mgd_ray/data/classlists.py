"""Versioned class lists: the order of a list defines the label ids.

A class list is a text file, one class per line (``name`` or ``name<TAB>description``),
with a header comment ``# name: NAME  version: N  source: WHERE``. Label ``i`` is the
``i``-th non-comment line. Built-in lists live in ``mgd_ray/classlists/``:

- ``imagenet1k``  the 1000 ILSVRC-2012 wnids, sorted; DiT's label of a wnid is its index here
- ``imagenette``  10 wnids (fastai), order as in MinimaxDiffusion's ``class_nette.txt``
- ``imagewoof``   10 dog wnids (fastai), order as in MinimaxDiffusion's ``class_woof.txt``
- ``imagenet100`` the IDC ImageNet-100 list (``class100.txt``)

``ClassList.subset`` cuts a list down and remembers where each class sat in the full
list (``parent_labels``), so a model trained on the full list can still be conditioned on
the right label.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

from .errors import DataError

CLASSLIST_DIR = Path(__file__).resolve().parent.parent / "classlists"
BUILTIN_LISTS = ("imagenet1k", "imagenette", "imagewoof", "imagenet100")
_ALIASES = {
    "imagenet": "imagenet1k", "imagenet-1k": "imagenet1k", "in1k": "imagenet1k",
    "imagenet-100": "imagenet100", "in100": "imagenet100", "idc100": "imagenet100",
}
_WNID = re.compile(r"n\d{8}")
_HEADER_KEY = re.compile(r"(\w+):\s*(.*?)(?=\s{2,}\w+:|$)")


@dataclass(frozen=True)
class ClassList:
    """An ordered list of class names; label ``i`` is ``names[i]``.

    ``descriptions[i]`` is a human-readable name (WordNet synonyms for wnids; may be "").
    ``parent``/``parent_labels``: for a subset, the list it was cut from and the index of
    each class there (for a full list: ``parent_labels[i] == i``).
    """

    name: str
    version: str
    names: tuple[str, ...]
    descriptions: tuple[str, ...] = ()
    source: str = ""
    parent: str | None = None
    parent_labels: tuple[int, ...] = field(default=())

    def __post_init__(self):
        names = tuple(str(n) for n in self.names)
        object.__setattr__(self, "names", names)
        if not names:
            raise DataError(f"class list {self.name!r} is empty")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise DataError(f"class list {self.name!r} has duplicate classes: {', '.join(dup[:10])}")
        desc = tuple(self.descriptions) or ("",) * len(names)
        if len(desc) != len(names):
            raise DataError(f"class list {self.name!r}: {len(desc)} descriptions for {len(names)} classes")
        object.__setattr__(self, "descriptions", desc)
        if not self.parent_labels:
            object.__setattr__(self, "parent_labels", tuple(range(len(names))))
        elif len(self.parent_labels) != len(names):
            raise DataError(f"class list {self.name!r}: parent_labels length != number of classes")

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self):
        return iter(self.names)

    def __contains__(self, name) -> bool:
        return self._find(str(name)) is not None

    @property
    def is_wnid(self) -> bool:
        """True when every class is an ImageNet wnid (``n01440764``)."""
        return all(_WNID.fullmatch(n) for n in self.names)

    def label_name(self, i: int) -> str:
        """The short human-readable name of label ``i`` (first synonym), else the class name."""
        d = self.descriptions[i]
        return d.split(",")[0].strip() if d else self.names[i]

    def _find(self, name: str) -> int | None:
        if name in self.names:
            return self.names.index(name)
        low = name.strip().lower()
        hits = [i for i, n in enumerate(self.names) if n.lower() == low]
        if not hits:  # a human name: any WordNet synonym, case-insensitive
            hits = [i for i, d in enumerate(self.descriptions)
                    if d and low in (s.strip().lower() for s in d.split(","))]
        if len(hits) > 1:
            opts = ", ".join(f"{self.names[i]} ({self.descriptions[i]})" for i in hits)
            raise DataError(f"class {name!r} is ambiguous in class list {self.name!r}: it matches {opts}; "
                            "use the class id (wnid) instead")
        return hits[0] if hits else None

    def index(self, name: str) -> int:
        """Label of ``name`` (exact class name, or a case-insensitive synonym). Unknown → DataError."""
        i = self._find(str(name))
        if i is None:
            raise DataError(self._unknown_message(str(name)))
        return i

    def _unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, list(self.names) + [self.label_name(i) for i in range(len(self))],
                                          n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        shown = ", ".join(self.names[:30]) + (f", ... ({len(self)} in all)" if len(self) > 30 else "")
        where = f" (see {CLASSLIST_DIR / (self.name + '.txt')})" if self.name in BUILTIN_LISTS else ""
        return (f"unknown class {name!r} for class list {self.name!r} v{self.version}.{hint} "
                f"Valid choices: {shown}{where}. Fix it in data.classes (--set data.classes=[...]).")

    def subset(self, names: Iterable[str], name: str | None = None) -> "ClassList":
        """A new list holding ``names`` in the order given (that order defines the new labels)."""
        idx = [self.index(n) for n in names]
        if not idx:
            raise DataError(f"an empty class selection from class list {self.name!r}")
        if len(set(idx)) != len(idx):
            dup = sorted({self.names[i] for i in idx if idx.count(i) > 1})
            raise DataError(f"class selection names the same class twice: {', '.join(dup)}")
        if idx == list(range(len(self))):
            return self
        return ClassList(
            name=name or f"{self.name}[{len(idx)}]", version=self.version,
            names=tuple(self.names[i] for i in idx), descriptions=tuple(self.descriptions[i] for i in idx),
            source=self.source, parent=self.parent or self.name,
            parent_labels=tuple(self.parent_labels[i] for i in idx))

    def dit_label(self, name_or_label: str | int) -> int:
        """ImageNet-1K label (index in the sorted imagenet1k list) of a wnid class."""
        wnid = self.names[name_or_label] if isinstance(name_or_label, int) else str(name_or_label)
        ref = imagenet1k()
        if wnid not in ref.names:
            raise DataError(f"class {wnid!r} of class list {self.name!r} is not an ImageNet-1K wnid, "
                            "so it has no DiT label; use a wnid class list (imagenet1k, imagenette, imagewoof, "
                            "imagenet100) or a model trained on this class list")
        return ref.names.index(wnid)

    def dit_labels(self) -> tuple[int, ...]:
        return tuple(self.dit_label(n) for n in self.names)

    def to_dict(self) -> dict:
        return {"name": self.name, "version": self.version, "source": self.source, "parent": self.parent,
                "num_classes": len(self), "names": list(self.names),
                "parent_labels": list(self.parent_labels)}


def parse_class_list(text: str, default_name: str, source: str = "") -> ClassList:
    """Parse the text format described in the module docstring."""
    meta: dict[str, str] = {}
    names, desc = [], []
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            body = line.lstrip("#").strip()
            if body.startswith("name:") and not meta:
                meta = {k: v.strip() for k, v in _HEADER_KEY.findall(body)}
            continue
        name, _, d = raw.rstrip("\r\n").partition("\t")
        names.append(name.strip())
        desc.append(d.strip())
    if not names:
        raise DataError(f"class list {default_name!r} ({source}) has no classes")
    return ClassList(name=meta.get("name", default_name), version=meta.get("version", "0"),
                     names=tuple(names), descriptions=tuple(desc), source=meta.get("source", source))


@lru_cache(maxsize=None)
def _builtin(name: str) -> ClassList:
    path = CLASSLIST_DIR / f"{name}.txt"
    return parse_class_list(path.read_text(encoding="utf-8"), name, str(path))


def imagenet1k() -> ClassList:
    return _builtin("imagenet1k")


def is_class_list_name(spec: str) -> bool:
    return isinstance(spec, str) and _ALIASES.get(spec.lower(), spec.lower()) in BUILTIN_LISTS


def load_class_list(spec: str | Path) -> ClassList:
    """A built-in list by name (``imagenette``…) or a class-list text file by path."""
    s = str(spec)
    key = _ALIASES.get(s.lower(), s.lower())
    if key in BUILTIN_LISTS:
        return _builtin(key)
    p = Path(s).expanduser()
    if p.is_file():
        return parse_class_list(p.read_text(encoding="utf-8"), p.stem, str(p))
    raise DataError(f"unknown class list {s!r}: not a built-in list ({', '.join(BUILTIN_LISTS)}) "
                    "and not an existing file. Fix data.class_list (a built-in name or a path to a txt file "
                    "with one class per line).")


def fixed_list(name: str, names: Sequence[str], source: str) -> ClassList:
    """An intrinsic class list of a dataset (digits, Fashion-MNIST)."""
    return ClassList(name=name, version="1", names=tuple(names), source=source)
