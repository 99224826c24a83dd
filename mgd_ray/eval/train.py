"""The evaluation protocols: train a student on a (distilled) set only, score it on the REAL test set.

``hard-label`` (version "1", the default) is described here; ``soft-label`` (a frozen teacher's
temperature-softened outputs on every augmented batch, AdamW, cosine, 300 epochs) shares the
loop, the augmentation and the evaluations, and is described in :mod:`mgd_ray.eval.soft_label`.

Recipe (IDC -> Minimax -> MGD3 -> ManifoldGD): SGD lr 0.01, momentum 0.9, weight decay 5e-4,
batch 64, LR x 0.2 at 2/3 and 5/6 of the epochs, CutMix (Beta(1,1)) on every batch, the
augmentation of :mod:`mgd_ray.eval.augment`. Epochs: see :func:`protocol_epochs`.

Accuracy is evaluated at ~``n_evals`` evenly spaced epochs and at the last one. We return the
final-epoch accuracy and the best over those evaluations; the best is what the papers report
and it is OPTIMISTIC (it selects on the test set) — report both.

Accuracies are fractions in [0, 1].

Pure torch, no Ray. The pipeline trains each trial whole on one Ray Train worker (no DDP; the
trials are shared out over the workers, see ``pipeline.runner.run_evaluate``). For data-parallel
training of ONE trial, :func:`train_and_evaluate` also takes a ``model_wrapper`` (e.g.
``ray.train.torch.prepare_model``) and ``rank/world_size``: every rank walks the same seeded
permutation and takes its slice of each global batch of 64; the pipeline does not use this.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..params import TrainSettings
from . import soft_label
from .augment import AUGMENT_CHOICES, cutmix, cutmix_loss, make_augment
from .students import build_student

PROTOCOL = "hard-label"
PROTOCOL_VERSION = "1"
PROTOCOLS = {PROTOCOL: PROTOCOL_VERSION, soft_label.PROTOCOL: soft_label.PROTOCOL_VERSION}
PROTOCOL_LOOPS: dict[str, Callable[..., dict]] = {}   # protocols with a loop of their own (register_protocol)


def register_protocol(name: str, version: str, loop: Callable[..., dict]) -> None:
    """A protocol whose training loop lives in its own module (``soft_label_imagenet`` registers itself
    when ``mgd_ray.eval`` is imported): ``train_and_evaluate`` hands it its arguments unchanged."""
    PROTOCOLS[name] = version
    PROTOCOL_LOOPS[name] = loop
LR_DECAY = 0.2
LR_MILESTONE_FRACTIONS = (2 / 3, 5 / 6)
SMALL_DATA_MAX_PX = 28  # at or below this size the small-data rule (1000 epochs) applies
SMALL_DATA_EPOCHS = 1000
MANY_CLASSES = 100  # from this many classes the IPC epochs are multiplied by 2/3


def protocol_epochs(ipc: int, num_classes: int, im_size: int, protocol: str = PROTOCOL) -> int:
    """Epochs of the protocol.

    soft-label: 300. hard-label: small data (im_size <= 28 px): 1000. Otherwise by images per class: 1 -> 3000,
    <= 10 -> 2000, <= 50 -> 1500, larger -> 1000 (the "<= 200" bucket also covers IPC > 200),
    times 2/3 (rounded) when there are >= 100 classes.
    """
    if ipc < 1:
        raise ValueError(f"ipc must be >= 1, got {ipc}")
    if protocol == soft_label.PROTOCOL:
        return soft_label.EPOCHS
    if im_size <= SMALL_DATA_MAX_PX:
        return SMALL_DATA_EPOCHS
    if ipc == 1:
        e = 3000
    elif ipc <= 10:
        e = 2000
    elif ipc <= 50:
        e = 1500
    else:
        e = 1000
    if num_classes >= MANY_CLASSES:
        e = int(round(e * 2 / 3))
    return e


def lr_milestones(epochs: int) -> list[int]:
    """Epoch indices (0-based) from which the LR is multiplied by 0.2 once more."""
    return [int(round(epochs * f)) for f in LR_MILESTONE_FRACTIONS]


def lr_at(epoch: int, epochs: int, base_lr: float) -> float:
    """LR used during 0-based ``epoch``: base, x0.2 from 2/3 of the epochs, x0.04 from 5/6."""
    k = sum(epoch >= m for m in lr_milestones(epochs))
    return base_lr * LR_DECAY ** k


def eval_every(epochs: int, n_evals: int) -> int:
    return max(1, epochs // max(1, n_evals))


def eval_epochs(epochs: int, n_evals: int) -> list[int]:
    """1-based epochs after which the test set is evaluated (~n_evals points, always the last)."""
    k = eval_every(epochs, n_evals)
    pts = list(range(k, epochs + 1, k))
    if not pts or pts[-1] != epochs:
        pts.append(epochs)
    return pts


def pixel_layout(x: Any, layout: str = "auto") -> str:
    """The layout ``to_float_images`` reads uint8 images ``x`` in: "NHW" (3-D), "NHWC" or "NCHW".

    ``"auto"`` treats a 4-D array whose last axis is 1 or 3 as NHWC, else NCHW. Resolve it once for
    a whole set, then convert its batches with that layout (a batch cannot change what it means)."""
    if x.ndim == 3:
        return "NHW"
    if x.ndim != 4:
        raise ValueError(f"expected (N,H,W) or 4-D images, got shape {tuple(x.shape)}")
    if layout == "auto":
        return "NHWC" if x.shape[-1] in (1, 3) else "NCHW"
    if layout not in ("NHWC", "NCHW"):
        raise ValueError(f"layout must be auto, NHWC or NCHW, got {layout!r}")
    return layout


def pixel_geometry(x: Any, layout: str) -> tuple[int, int]:
    """(channels, image size) of uint8 images ``x`` in ``layout`` (see ``pixel_layout``)."""
    if layout == "NHW":
        return 1, int(x.shape[-1])
    if layout == "NHWC":
        return int(x.shape[3]), int(x.shape[2])
    return int(x.shape[1]), int(x.shape[-1])


def to_float_images(x: Any, layout: str = "auto") -> torch.Tensor:
    """uint8 images (N,H,W), (N,H,W,C) or (N,C,H,W), numpy or torch -> float32 NCHW in [-1,1],
    on the device ``x`` is on (the training loop converts each batch there: pixels stay uint8).

    ``layout="auto"`` treats a 4-D array whose last axis is 1 or 3 as NHWC, else NCHW; pass
    ``"NHWC"``/``"NCHW"`` to force it.
    """
    t = x if isinstance(x, torch.Tensor) else torch.tensor(np.asarray(x))
    if t.dtype != torch.uint8:
        raise TypeError(f"to_float_images expects uint8 pixels 0..255, got {t.dtype}; "
                        "float images must already be NCHW in [-1, 1]")
    layout = pixel_layout(t, "auto" if layout == "NHW" else layout)
    if layout == "NHW":
        t = t.unsqueeze(1)
    elif layout == "NHWC":
        t = t.permute(0, 3, 1, 2)
    return t.contiguous().float().div_(127.5).sub_(1.0)


def pad_to(x: torch.Tensor, size: int, value: float = -1.0) -> torch.Tensor:
    """Centre-pad (N,C,H,W) to (N,C,size,size) with ``value`` (-1 = black), e.g. 28 -> 32."""
    h, w = x.shape[-2:]
    if h > size or w > size:
        raise ValueError(f"cannot pad {h}x{w} to {size}: already larger")
    top, left = (size - h) // 2, (size - w) // 2
    return F.pad(x, (left, size - w - left, top, size - h - top), value=value)


class TrainConfig(TrainSettings):
    """One trial's training: the job's ``TrainSettings`` (``params.py``: protocol, temperature,
    epochs, n_evals, batch size, augment, flip: names and defaults from there) plus what is per
    trial (student, seed, device) and what only the protocol, tests and twins set."""
    student: str = "convnet3"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4       # soft-label: lr/momentum/weight_decay unused (AdamW lr 1e-3, wd 0.01,
    #                                  cosine; see eval.soft_label)
    cutmix: bool = True
    cutmix_alpha: float = 1.0
    seed: int = 0
    device: str = "cpu"
    eval_batch_size: int = 512
    width: int | None = None         # None = protocol width; only tests/tiny twins change it
    num_threads: int | None = None   # torch.set_num_threads for this run (Ray workers: set it)

    def resolved_augment(self, channels: int) -> str:
        if self.augment == "auto":
            return "dsa-grey" if channels == 1 else "rgb"
        if self.augment not in AUGMENT_CHOICES:
            raise ValueError(f"[augment] unknown {self.augment!r}; expected auto or one of "
                             f"{', '.join(AUGMENT_CHOICES)}")
        return self.augment


class EvalPoints:
    """A training run's periodic test evaluations, shared by every protocol's loop: at the epochs
    ``evals`` it scores, keeps the history and the best, calls ``report``; after every epoch
    ``on_epoch(done, epochs)``. ``results()`` -> final_acc, best_acc, best_epoch, history."""

    def __init__(self, evals, epochs: int, report=None, on_epoch=None):
        self.evals, self.epochs, self.report, self.on_epoch = set(evals), epochs, report, on_epoch
        self.history: list[tuple[int, float]] = []
        self.best_acc, self.best_epoch = -1.0, 0

    def epoch_done(self, epoch: int, score: Callable[[], float], lr: float, loss: float) -> None:
        """Epoch ``epoch`` (1-based) has trained; ``score()`` evaluates the model when it is an evaluation point."""
        if epoch in self.evals:
            acc = score()
            self.history.append((epoch, acc))
            if acc > self.best_acc:
                self.best_acc, self.best_epoch = acc, epoch
            if self.report is not None:
                self.report({"epoch": epoch, "acc": acc, "best_acc": self.best_acc, "lr": lr, "loss": loss})
        if self.on_epoch is not None:
            self.on_epoch(epoch, self.epochs)

    def results(self) -> dict:
        return {"final_acc": self.history[-1][1], "best_acc": self.best_acc, "best_epoch": self.best_epoch,
                "history": self.history}


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512,
             device: str | torch.device = "cpu", layout: str = "auto") -> float:
    """Top-1 accuracy (fraction) of ``model`` on x / y (N,): x float (N,C,H,W) in [-1, 1], or uint8
    pixels (any layout ``to_float_images`` takes; ``layout`` as there), made float one batch at a
    time on the device the pixels are on (``train_and_evaluate`` puts uint8 pixels on ``device``
    once), then moved to ``device`` (a no-op when they are there already)."""
    base = getattr(model, "module", model)  # unwrap DDP: no collectives during evaluation
    was_training = base.training
    base.eval()
    if x.dtype == torch.uint8:
        layout = pixel_layout(x, layout)
    correct = 0
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        xb = (to_float_images(xb, layout) if xb.dtype == torch.uint8 else xb).to(device, non_blocking=True)
        yb = y[i:i + batch_size].to(device, non_blocking=True)
        correct += int((base(xb).argmax(1) == yb).sum())
    base.train(was_training)
    return correct / max(1, len(x))


def _check_inputs(x: torch.Tensor, y: torch.Tensor, num_classes: int, what: str, uint8_ok: bool = False) -> None:
    if uint8_ok and x.dtype == torch.uint8 and x.ndim in (3, 4):
        pass                                  # uint8 pixels: made float per batch on the device
    elif x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"{what}: expected float (N,C,H,W) in [-1,1], got {x.dtype} "
                         f"{tuple(x.shape)}; use to_float_images() for uint8 data")
    if y.ndim != 1 or len(y) != len(x):
        raise ValueError(f"{what}: labels must be (N,) with N={len(x)}, got {tuple(y.shape)}")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"{what}: labels must lie in [0, {num_classes}), got "
                         f"[{int(y.min())}, {int(y.max())}]")


def train_and_evaluate(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor,
                       y_test: torch.Tensor, num_classes: int, cfg: TrainConfig | None = None,
                       report: Callable[[dict], None] | None = None,
                       model_wrapper: Callable[[nn.Module], nn.Module] | None = None,
                       rank: int = 0, world_size: int = 1, teacher: nn.Module | None = None,
                       on_epoch: Callable[[int, int], None] | None = None) -> dict:
    """Train ``cfg.student`` from scratch on (x_train, y_train); evaluate on (x_test, y_test).

    ``cfg.protocol == "soft-label"`` needs ``teacher`` (frozen here; see :mod:`.soft_label`): the
    loss is the KL to its softened outputs on each augmented batch, y_train is not used for it.

    x_* float (N,C,H,W) in [-1,1], or uint8 pixels in any layout ``to_float_images`` takes (the
    pipeline's way): uint8 sets are moved to the device as they are (1 byte a pixel, not 4) and
    each batch is made float there, with the same values ``to_float_images`` gives on the host
    (augmentation sees the same inputs); y_* long (N,). ``report(metrics)`` is called at every
    evaluation point with ``{"epoch", "acc", "best_acc", "lr", "loss"}``. ``model_wrapper``
    (e.g. Ray Train's ``prepare_model``) receives the freshly built model and returns the
    model to train (DDP-wrapped or moved to the device); without it the model is moved to
    ``cfg.device``. ``on_epoch(epochs_done, epochs)`` is called after every epoch (progress).
    Deterministic for a given seed, world size and thread count.

    Returns ``{"final_acc", "best_acc", "best_epoch", "epochs", "history": [(epoch, acc)],
    "seconds", "protocol", "protocol_version", "student", "augment", "seed", "n_train",
    "ipc", "images_per_s", "config"}`` (accuracies are fractions in [0, 1]).
    """
    cfg = cfg or TrainConfig()
    t0 = time.perf_counter()
    y_train, y_test = torch.as_tensor(y_train).long(), torch.as_tensor(y_test).long()
    _check_inputs(x_train, y_train, num_classes, "x_train", uint8_ok=True)
    _check_inputs(x_test, y_test, num_classes, "x_test", uint8_ok=True)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    if cfg.protocol not in PROTOCOLS:
        raise ValueError(f"[protocol] unknown {cfg.protocol!r}; expected one of {', '.join(PROTOCOLS)}")
    if cfg.protocol in PROTOCOL_LOOPS:                 # e.g. soft-label-imagenet: RDED's recipe, its own loop
        return PROTOCOL_LOOPS[cfg.protocol](x_train, y_train, x_test, y_test, num_classes, cfg, report,
                                            model_wrapper, rank, world_size, teacher, on_epoch)
    soft = cfg.protocol == soft_label.PROTOCOL
    train_u8 = x_train.dtype == torch.uint8
    train_layout = pixel_layout(x_train) if train_u8 else "NCHW"
    channels, im_size = pixel_geometry(x_train, train_layout)
    if soft:
        if teacher is None:
            raise soft_label.TeacherError("protocol soft-label needs a teacher (a network trained on the real data)")
        soft_label.check_teacher(teacher, channels, num_classes, im_size)
    ipc = int(torch.bincount(y_train, minlength=num_classes).max())
    epochs = cfg.epochs if cfg.epochs is not None else protocol_epochs(ipc, num_classes, im_size, cfg.protocol)
    if epochs < 1:
        raise ValueError(f"[epochs] must be >= 1, got {epochs}")
    aug_name = cfg.resolved_augment(channels)
    augment = make_augment(aug_name, cfg.flip)

    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    model: nn.Module = build_student(cfg.student, channels, num_classes, im_size, cfg.width)
    if model_wrapper is not None:
        model = model_wrapper(model)
        device = next(model.parameters()).device
    else:
        device = torch.device(cfg.device)
        model = model.to(device)
    if soft:
        teacher = soft_label.freeze(teacher).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=soft_label.LR, weight_decay=soft_label.WEIGHT_DECAY)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                              weight_decay=cfg.weight_decay)
    order_gen = torch.Generator().manual_seed(cfg.seed)               # same on every rank
    aug_gen = torch.Generator().manual_seed(cfg.seed * 1009 + 7919 * (rank + 1))
    x_dev, y_dev = x_train.to(device), y_train.to(device)       # uint8 stays uint8 on the device
    test_layout = "NCHW"
    if x_test.dtype == torch.uint8:                               # the test pixels too, once per trial
        test_layout = pixel_layout(x_test)
        x_test, y_test = x_test.to(device), y_test.to(device)
    n, bs = len(x_dev), cfg.batch_size
    points = EvalPoints(eval_epochs(epochs, cfg.n_evals), epochs, report, on_epoch)
    loss_val, seen = float("nan"), 0
    t_train = 0.0

    for epoch in range(epochs):
        lr = soft_label.cosine_lr(epoch, epochs, soft_label.LR) if soft else lr_at(epoch, epochs, cfg.lr)
        for g in opt.param_groups:
            g["lr"] = lr
        model.train()
        te = time.perf_counter()
        perm = torch.randperm(n, generator=order_gen)
        loss_sum, n_batches = 0.0, 0
        for i in range(0, n, bs):
            glob = perm[i:i + bs]
            if len(glob) < world_size:  # every DDP rank must step, or the others hang
                continue
            idx = glob[rank::world_size].to(device)
            xb = x_dev[idx]
            if train_u8:
                xb = to_float_images(xb, train_layout)            # on the device, this batch only
            xb, yb = augment(xb, aug_gen), y_dev[idx]
            if soft:
                if cfg.cutmix and len(idx) > 1:
                    xb = cutmix(xb, yb, aug_gen, cfg.cutmix_alpha)[0]
                with torch.no_grad():
                    t_logits = teacher(xb)
                loss = soft_label.soft_label_loss(model(xb), t_logits, cfg.temperature)
            elif cfg.cutmix and len(idx) > 1:
                xb, ya, yb2, lam = cutmix(xb, yb, aug_gen, cfg.cutmix_alpha)
                loss = cutmix_loss(model(xb), ya, yb2, lam)
            else:
                loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach())
            n_batches += 1
            seen += len(idx)
        t_train += time.perf_counter() - te
        loss_val = loss_sum / max(1, n_batches)
        points.epoch_done(epoch + 1, lambda: evaluate(model, x_test, y_test, cfg.eval_batch_size, device,
                                                      test_layout), lr, loss_val)

    return {
        **points.results(),
        "epochs": epochs,
        "seconds": time.perf_counter() - t0,
        "protocol": cfg.protocol,
        "protocol_version": PROTOCOLS[cfg.protocol],
        "optimizer": ({"name": "AdamW", "lr": soft_label.LR, "weight_decay": soft_label.WEIGHT_DECAY,
                       "schedule": "cosine", "temperature": cfg.temperature} if soft else
                      {"name": "SGD", "lr": cfg.lr, "momentum": cfg.momentum, "weight_decay": cfg.weight_decay,
                       "schedule": "step x0.2 at 2/3 and 5/6"}),
        "student": cfg.student,
        "augment": aug_name,
        "config": cfg.to_dict(),
        "seed": cfg.seed,
        "n_train": n,
        "ipc": ipc,
        "images_per_s": seen / t_train if t_train > 0 else float("nan"),
    }
