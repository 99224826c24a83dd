"""The `soft-label` evaluation protocol, version "1" (SRe2L -> RDED -> MGD3's appendix).

A frozen teacher trained on the REAL data labels every augmented (and CutMixed) batch; the
student learns the teacher's temperature-softened distribution:

    loss = KL( softmax(teacher(x_aug) / T) || softmax(student(x_aug) / T) )     (batch mean)

with AdamW (lr 1e-3, weight decay 0.01), a cosine learning-rate schedule over the epochs (per
epoch, from lr down to 0) and 300 epochs unless the job says otherwise. The dataset's own labels
are not used for training (only to check they are in range); CutMix needs no label mixing
because the teacher sees the mixed image. No T² factor: SRe2L/RDED's scripts use the plain
batch-mean KL at T = 20 (field-notes §14), and Adam is insensitive to the loss scale.

Teachers (``load_teacher(dir)``), a local directory, nothing is downloaded:
- the project's real-data classifier (``classifier.json`` + ``classifier.safetensors``), which
  ships beside every small prior as ``<prior>/classifier``; or
- ``teacher.json`` ({"student": "resnet18", "channels", "num_classes", "im_size"}) +
  ``teacher.safetensors``: a network of one of this project's student architectures (e.g. the
  ResNet-18 of the ImageNet jobs) trained on the real data, its state dict in safetensors.
The teacher runs in eval mode with frozen parameters; inputs are the student's (N, C, H, W) in [-1, 1].
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..teachers import TeacherError  # noqa: F401  (raised here; defined torch-free for the door)

PROTOCOL = "soft-label"
PROTOCOL_VERSION = "1"
EPOCHS = 300
LR = 1e-3
WEIGHT_DECAY = 0.01
TEACHER_JSON = "teacher.json"
TEACHER_WEIGHTS = "teacher.safetensors"




def soft_label_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Batch-mean KL(p_teacher || p_student) at temperature T.  (N, C), (N, C) -> scalar."""
    t = float(temperature)
    return F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                    reduction="batchmean", log_target=True)


def cosine_lr(epoch: int, epochs: int, base_lr: float) -> float:
    """LR during 0-based ``epoch``: base_lr · ½ (1 + cos(π epoch / epochs)) (base at epoch 0, -> 0)."""
    return float(base_lr) * 0.5 * (1.0 + math.cos(math.pi * epoch / max(1, epochs)))


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and no gradients: the teacher never changes."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def load_teacher(directory: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Load a frozen teacher from a local directory (see the module docstring for the two formats)."""
    from .classifier import CONFIG_NAME, WEIGHTS_NAME, load_classifier
    d = Path(directory)
    if (d / CONFIG_NAME).is_file() and (d / WEIGHTS_NAME).is_file():
        return freeze(load_classifier(d, device))
    if (d / TEACHER_JSON).is_file() and (d / TEACHER_WEIGHTS).is_file():
        from safetensors.torch import load_file

        from .students import build_student
        meta = json.loads((d / TEACHER_JSON).read_text())
        try:
            model = build_student(meta["student"], int(meta["channels"]), int(meta["num_classes"]),
                                  int(meta["im_size"]), meta.get("width"))
        except KeyError as e:
            raise TeacherError(f"{d / TEACHER_JSON} lacks {e}; expected keys student, channels, num_classes, "
                               "im_size (and optionally width)") from None
        model.load_state_dict(load_file(str(d / TEACHER_WEIGHTS)))
        model.config = {"channels": int(meta["channels"]), "num_classes": int(meta["num_classes"]),
                        "im_size": int(meta["im_size"])}
        return freeze(model.to(device))
    raise TeacherError(
        f"soft-label evaluation needs a teacher trained on the real data in {str(d)!r}, but it holds neither "
        f"{CONFIG_NAME} + {WEIGHTS_NAME} (the project's real-data classifier, shipped beside each small prior as "
        f"classifier/; make one with `mgd-ray prior evaluate`) nor {TEACHER_JSON} + {TEACHER_WEIGHTS} "
        "(e.g. a ResNet-18 of this project's student code trained on the real data). Set evaluate.teacher to such a "
        "directory, or use evaluate.protocol=hard-label. Nothing is downloaded.")


def check_teacher(teacher: nn.Module, channels: int, num_classes: int, im_size: int) -> None:
    """The teacher must see the student's inputs and predict the same classes."""
    cfg = getattr(teacher, "config", None) or {}
    want = {"channels": channels, "num_classes": num_classes, "im_size": im_size}
    bad = {k: (cfg[k], v) for k, v in want.items() if k in cfg and int(cfg[k]) != int(v)}
    if bad:
        raise TeacherError("the soft-label teacher does not fit the student's data: "
                           + ", ".join(f"{k} teacher {a} vs data {b}" for k, (a, b) in bad.items())
                           + "; use a teacher trained on this dataset at the evaluation image size "
                             "(evaluate.image_size)")
