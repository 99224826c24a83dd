"""The project's own real-data classifier for small data (28-32 px).

Its penultimate features are the "FID" feature space of small data (Inception-v3 does not
apply to 28 px grey images), and its predictions on generated images measure prior fidelity.
It is trained ONCE on the real training split and never sees synthetic images.

Architecture: ConvNet-3 trunk of width 32 (conv3x3 -> instance norm -> ReLU -> avg-pool 2, three
times; 28 px -> 32 x 3 x 3) -> linear to ``feat_dim`` (128) -> ReLU [= features] -> linear head.
Training: SGD (momentum 0.9, nesterov, weight decay 5e-4), batch 128, linear warm-up (15 %)
then cosine decay, label smoothing 0.1, plain augmentation (random shift of up to 2 px with -1
fill, horizontal flip only if ``flip=True`` — right for Fashion-MNIST, wrong for digits).

Saved as ``<dir>/classifier.safetensors`` + ``<dir>/classifier.json`` (architecture config and
a record: test accuracy, epochs, seed, seconds).

Measured on the real Fashion-MNIST split (flip=True, seed 0, defaults): 5 epochs -> 90.65 % test
accuracy for about 410 CPU-seconds on one thread (60 k images x 5 at ~730 img/s per core).
A 32-64-128 pyramid reached 90.36 % in 3 epochs for the same CPU time.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .augment import apply_affine
from .students import instance_norm

WEIGHTS_NAME = "classifier.safetensors"
CONFIG_NAME = "classifier.json"
ARCH = "convnet-in-bottleneck"


class RealClassifier(nn.Module):
    """x (N,C,H,W) in [-1,1] -> logits (N,num_classes); ``embed`` -> (N, feat_dim) features.

    Trunk: ``depth`` blocks [conv3x3 -> instance norm -> ReLU -> avg-pool 2] of ``width``
    channels (a ConvNet-3 of width 32), or one block per entry of ``widths`` if given (e.g.
    32, 64, 128: cheap at full resolution, wide where the maps are small).
    """

    def __init__(self, channels: int, num_classes: int, im_size: int, width: int = 32,
                 depth: int = 3, feat_dim: int = 128, widths: list[int] | None = None):
        super().__init__()
        widths = [int(w) for w in widths] if widths else [width] * depth
        self.config = {"arch": ARCH, "channels": channels, "num_classes": num_classes,
                       "im_size": im_size, "widths": widths, "feat_dim": feat_dim}
        layers: list[nn.Module] = []
        c, s = channels, im_size
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, padding=1), instance_norm(w), nn.ReLU(inplace=True)]
            if s >= 2:
                layers.append(nn.AvgPool2d(2, 2))
                s //= 2
            c = w
        self.trunk = nn.Sequential(*layers)
        self.bottleneck = nn.Linear(c * s * s, feat_dim)
        self.head = nn.Linear(feat_dim, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bottleneck(self.trunk(x).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


def _shift_flip(x: torch.Tensor, gen: torch.Generator, max_shift: int, flip: bool) -> torch.Tensor:
    n, size = x.shape[0], x.shape[-1]
    theta = torch.zeros(n, 2, 3)
    sign = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0) if flip else torch.ones(n)
    theta[:, 0, 0] = sign
    theta[:, 1, 1] = 1.0
    theta[:, :, 2] = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=gen) * (2.0 / size)
    return apply_affine(x, theta, fill=-1.0)


@torch.no_grad()
def _batched(model: nn.Module, x: torch.Tensor, fn: str, batch_size: int) -> torch.Tensor:
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    outs = [getattr(model, fn)(x[i:i + batch_size].to(dev)).cpu()
            for i in range(0, len(x), batch_size)]
    model.train(was)
    return torch.cat(outs) if outs else torch.empty(0)


def logits(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    return _batched(model, x, "forward", batch_size)


def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Predicted labels (N,) for float images x (N,C,H,W) in [-1,1]."""
    return logits(model, x, batch_size).argmax(1)


def features(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Penultimate (post-ReLU bottleneck) features (N, feat_dim), float32 on the CPU."""
    return _batched(model, x, "embed", batch_size)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    return float((predict(model, x, batch_size) == torch.as_tensor(y).long()).float().mean())


def train_classifier(x: torch.Tensor, y: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
                     epochs: int = 5, seed: int = 0, *, num_classes: int | None = None,
                     flip: bool = False, batch_size: int = 128, lr: float = 0.05,
                     weight_decay: float = 5e-4, widths: list[int] | None = None,
                     width: int = 32, depth: int = 3, feat_dim: int = 128, max_shift: int = 2,
                     device: str = "cpu", log: Any = None) -> tuple[RealClassifier, float]:
    """Train the real-data classifier on x (N,C,H,W) float [-1,1], y (N,); return
    ``(model, test_accuracy)`` (fraction). ``model.record`` holds epochs/seed/seconds/accuracy.
    ``log`` is an optional ``print``-like callable for per-epoch progress."""
    t0 = time.perf_counter()
    y, y_test = torch.as_tensor(y).long(), torch.as_tensor(y_test).long()
    num_classes = num_classes or int(max(y.max(), y_test.max())) + 1
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = RealClassifier(x.shape[1], num_classes, x.shape[-1], width, depth, feat_dim,
                           list(widths) if widths else None).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True,
                          weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(x) / batch_size)
    total = epochs * steps_per_epoch
    warm = max(1, int(0.15 * total))
    step = 0
    for ep in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch_size):
            if step < warm:
                f = (step + 1) / warm
            else:
                f = 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
            for g in opt.param_groups:
                g["lr"] = lr * f
            idx = perm[i:i + batch_size]
            xb = _shift_flip(x[idx], gen, max_shift, flip).to(device)
            loss = F.cross_entropy(model(xb), y[idx].to(device), label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        if log is not None:
            log(f"epoch {ep + 1}/{epochs} loss {float(loss.detach()):.3f} "
                f"{time.perf_counter() - t0:.0f}s")
    acc = accuracy(model, x_test, y_test)
    model.record = {"test_acc": acc, "epochs": epochs, "seed": seed, "flip": flip,
                    "n_train": len(x), "seconds": round(time.perf_counter() - t0, 1)}
    return model, acc


def save_classifier(model: RealClassifier, directory: str | Path, extra: dict | None = None) -> Path:
    """Write ``classifier.safetensors`` + ``classifier.json`` into ``directory``; return it."""
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(d / WEIGHTS_NAME))
    meta = {"config": model.config, "record": getattr(model, "record", {}), **(extra or {})}
    (d / CONFIG_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return d


def load_classifier(directory: str | Path, device: str = "cpu") -> RealClassifier:
    """Load a classifier written by :func:`save_classifier` (eval mode)."""
    from safetensors.torch import load_file

    d = Path(directory)
    if not (d / WEIGHTS_NAME).exists() or not (d / CONFIG_NAME).exists():
        raise FileNotFoundError(f"expected {WEIGHTS_NAME} and {CONFIG_NAME} in {d}; "
                                "train one with train_classifier() + save_classifier()")
    meta = json.loads((d / CONFIG_NAME).read_text())
    cfg = dict(meta["config"])
    if cfg.pop("arch", ARCH) != ARCH:
        raise ValueError(f"{d / CONFIG_NAME}: unknown arch {meta['config'].get('arch')!r}, "
                         f"expected {ARCH!r}")
    model = RealClassifier(**cfg)
    model.load_state_dict(load_file(str(d / WEIGHTS_NAME)))
    model.record = meta.get("record", {})
    return model.to(device).eval()


save = save_classifier
load = load_classifier
