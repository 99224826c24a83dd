"""How the data's classes map onto the generator's label ids, and the preflight that checks it."""

from __future__ import annotations

import json
from pathlib import Path


def generator_labels(classes, info) -> list[int]:
    """Generator label id of each data label (its position in ``classes``): for a 1,000-class
    model the wnid's index in sorted ImageNet-1K, else the position itself."""
    if info.num_classes == 1000 and hasattr(classes, "dit_label"):
        return [int(classes.dit_label(n)) for n in classes.names]  # a DataError names the class and the fix
    return list(range(len(classes)))


def check_label_order(classes, info) -> None:
    """The class list must map onto the generator's label ids (e.g. ImageNet-1K sorted wnids)."""
    from ..models import ModelError
    if len(classes) == 0:
        raise ModelError("no classes selected")
    labels = generator_labels(classes, info)
    if max(labels) >= info.num_classes:
        raise ModelError(f"class list {classes.name!r} maps to generator label {max(labels)}, but the "
                         f"generator has {info.num_classes} classes; use the class list the model was trained "
                         f"with (e.g. imagenet1k sorted wnids for DiT-XL/2)")
    prior_json = Path(info.path) / "prior.json"
    if prior_json.is_file():
        expected = json.loads(prior_json.read_text()).get("classes")
        if expected and [expected[i] for i in labels] != list(classes.names):
            raise ModelError(f"label order mismatch: the data's classes {list(classes.names)[:5]}... do not "
                             f"match the prior's {expected[:5]}...; the prior was trained on another class list")
