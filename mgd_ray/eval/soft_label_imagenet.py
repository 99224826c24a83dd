"""The `soft-label-imagenet` evaluation protocol, version "1": RDED's ImageNet-1K evaluation, followed exactly.

Source (read, not copied): github.com/LINs-lab/RDED at commit 3f6453d8b18b6a9bcc6c718bc16ecda6bb94d59f,
``validation/main.py`` (main_worker, train), ``validation/utils.py`` (ShufflePatches, rand_bbox, cutmix,
get_parameters), ``argument.py`` (batch size, temperature, AdamW lr) and
``scripts/imagenet-1k_10ipc_resnet-18_to_resnet-18_cr5.sh`` (``--factor 2 --ipc 10 --stud-name resnet18
--re-epochs 300``). We follow RDED, not SRe2L (``SRe2L/validate/train_KD.py``: RandomResizedCrop scale
0.08-1, batch 1024, full cosine), because the ImageNet-1K soft-label numbers of docs/evaluation.md (RDED,
EDC, CV-DD, Minimax, ...) come from RDED's script.

The recipe (RDED's line in brackets):

- teacher: torchvision ``resnet18`` with torchvision's ImageNet weights, eval mode, frozen [main.py
  ``load_model(arch_name, pretrained=True)``; ``teacher_model.eval()``; ``requires_grad = False``]. Here it is
  read from the local hub cache (``hub:timm/resnet18.tv_in1k``, ``model.safetensors`` in torchvision's key
  names, fetched by ``mgd-ray models fetch JOB.yaml``) and loaded strictly into
  ``torchvision.models.resnet18``. For a class subset, the teacher's logits are those of the subset's
  ImageNet indices [synthesize/utils.py ``pruning_classifier``: ``fc`` rows ``[classes]``].
- student: torchvision ``resnet18`` (batch norm), random init, one output per class [``load_model(stud_name,
  pretrained=False)``], trained in train mode.
- train augmentation, per image [main.py ``augment``]: ToTensor -> ShufflePatches(factor 2) ->
  RandomResizedCrop(224, scale=(1/factor, 1) = (0.5, 1), ratio (3/4, 4/3), antialias) ->
  RandomHorizontalFlip -> Normalize(ImageNet mean/std). ShufflePatches: the image is cut into ``factor``
  vertical strips that are put back in a random order, then the same across the rows.
- mixing: CutMix on every batch [``mix_type="cutmix"``, ``--cutmix 1.0``]: lam ~ Beta(1, 1), box side
  ``int(S * sqrt(1 - lam))`` around a uniform integer centre, clipped; the box is pasted from a random
  permutation of the batch [utils.py ``rand_bbox``, ``cutmix``]. No label mixing: the teacher labels the
  mixed images.
- soft labels, per mixed batch, on the worker's device, nothing stored [main.py ``train``]:
  ``p_t = softmax(teacher(x_mix) / T)``; loss ``KLDivLoss(reduction="batchmean")(log_softmax(student(x_mix) / T),
  p_t)``, T = 20 [argument.py: ``temperature = 20`` for cutmix]; no T^2 factor.
- RDED's script also runs ``student(images)`` under ``no_grad`` in train mode on the same (mixed) batch
  for its train accuracy: that forward moves the batch-norm running statistics a second time with the same
  batch statistics. Two updates with momentum 0.1 equal one with momentum 1 - 0.9^2 = 0.19, so the student's
  batch-norm layers use momentum 0.19 instead of the extra forward (same running statistics, no extra cost).
- optimiser: AdamW lr 1e-3 (argument.py, ``stud_name == "resnet18"``), betas (0.9, 0.999), weight decay 0.01
  on weights with more than one dimension only, 0 on biases and batch-norm parameters [utils.py
  ``get_parameters``].
- schedule: per epoch, lr x ``0.5 (1 + cos(pi e / E / 2))`` [main.py ``LambdaLR``, ``--cos`` default True]:
  RDED's quarter cosine, from lr at epoch 0 to about lr/2 at the last epoch (not to 0).
- epochs: 300 [``--re-epochs 300``].
- batch size [argument.py]: IPC 1 -> 10, IPC 10 -> 50, IPC 50 -> 100; x 2 for 100 or 1000 classes; at most
  IPC x classes. RDED defines no other IPC; ours: IPC <= 1 -> 10, <= 10 -> 50, above -> 100 (recorded).
  ``evaluate.batch_size`` is not used by this protocol.
- test images [main.py ``val_loader``]: Resize(input // 7 * 8 = 256) + CenterCrop(224) + Normalize. The
  job gives the images at ``evaluate.image_size`` (256 for ImageNet: resize + centre crop, so the crop below
  yields RDED's view) and the protocol crops the centre ``image_size * 7 // 8`` (224) on the device; the
  training crops are also ``image_size * 7 // 8`` px (RDED: 224 from the stored distilled images).
- evaluations [main.py loop]: after every 10th epoch (``epoch % 10 == 9``) that lies beyond 80 % of the
  epochs, and after the last one (always, here: the record needs a final accuracy); ``best_acc`` is their
  maximum (optimistic, as the papers report).

The `hard-label-imagenet` protocol, version "1", is this recipe with the hard labels in place of the teacher
(ours, not RDED's: what DD-Ranking's HLR needs, the same torchvision student's accuracy on the distilled set
with hard labels, beside torchvision's full-data figure for that network): the same student, augmentation,
CutMix, optimiser, schedule, epochs, batch size and test view; the loss is cross-entropy to the CutMix-mixed
one-hot labels, ``(1 - a) CE(y) + a CE(y[perm])`` with ``a`` the pasted box's share of the image (CutMix's
label rule); no teacher is read.

Differences that remain: random draws come from a seeded ``torch.Generator`` per trial (RDED: the global RNG
in DataLoader workers); the crop/resize runs on the worker's device with torchvision's functional ops on
the uint8->float batch (RDED: per image on PIL->tensor in the loader); the pipeline's resize to 256 is its
own ``center-crop`` resizer (PIL), not torchvision's ``Resize``.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..teachers import (DEFAULT_TEACHER, TEACHER_ARCH, TEACHER_CLASSES, TEACHER_FILES,  # noqa: F401
                        TeacherNotFetched, parse_teacher, teacher_weights_path)
from ..teachers import imagenet_index  # noqa: F401  (the torch-free home)
from .soft_label import TeacherError, freeze
from .train import EvalPoints, evaluate, pixel_geometry, pixel_layout, register_protocol, to_float_images

PROTOCOL = "soft-label-imagenet"
HARD_PROTOCOL = "hard-label-imagenet"    # the same recipe, hard labels (CutMix-mixed cross-entropy), no teacher
PROTOCOL_VERSION = "1"
SOURCE = ("LINs-lab/RDED@3f6453d8b18b validation/main.py, validation/utils.py, argument.py, "
          "scripts/imagenet-1k_10ipc_resnet-18_to_resnet-18_cr5.sh")
EPOCHS = 300
LR = 1e-3
BETAS = (0.9, 0.999)
WEIGHT_DECAY = 0.01
TEMPERATURE = 20.0
FACTOR = 2                       # --factor 2: ShufflePatches(2), RandomResizedCrop scale (1/2, 1)
CUTMIX_ALPHA = 1.0
RATIO = (3 / 4, 4 / 3)           # torchvision RandomResizedCrop's default
BN_MOMENTUM = 1 - (1 - 0.1) ** 2  # RDED's two train-mode forwards per batch (see the module docstring)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_FRACTION = (7, 8)           # RDED: Resize(input_size // 7 * 8) then CenterCrop(input_size)
EVAL_EVERY = 10
EVAL_AFTER = 0.8


# ---- the teacher: a hub id, read from the local cache only (mgd_ray/teachers.py) ----------------
def build_torchvision(name: str, num_classes: int) -> nn.Module:
    """A torchvision classification network by name, random init (no weights are downloaded)."""
    import torchvision
    try:
        return torchvision.models.get_model(name, weights=None, num_classes=int(num_classes))
    except ValueError as e:
        raise ValueError(f"[students] {PROTOCOL} trains torchvision networks (e.g. resnet18): {e}") from None


def load_teacher_file(weights: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """``model.safetensors`` in torchvision's ResNet-18 key names -> a frozen torchvision ``resnet18``
    (1000 classes), loaded strictly (a missing or extra key is an error)."""
    from safetensors.torch import load_file

    from ..models import check_safetensors
    check_safetensors(Path(weights).parent)
    model = build_torchvision(TEACHER_ARCH, TEACHER_CLASSES)
    try:
        model.load_state_dict(load_file(str(weights)), strict=True)
    except RuntimeError as e:
        raise TeacherError(f"{weights} is not torchvision's {TEACHER_ARCH} with {TEACHER_CLASSES} classes: "
                           f"{str(e).splitlines()[0][:300]}") from None
    return freeze(model.to(device))


def load_teacher(spec: str, device: str | torch.device = "cpu", cache_dir: str | None = None) -> nn.Module:
    """The frozen teacher of ``spec`` (``hub:ORG/NAME``) from the local hub cache."""
    return load_teacher_file(teacher_weights_path(spec, cache_dir), device)


class ClassSubset(nn.Module):
    """The teacher's logits of some of its classes, in the job's label order (RDED's pruned ``fc``)."""

    def __init__(self, teacher: nn.Module, index: list[int]):
        super().__init__()
        self.teacher = teacher
        self.register_buffer("index", torch.as_tensor(list(index), dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.teacher(x).index_select(1, self.index)


# ---- the recipe --------------------------------------------------------------------------------
def batch_size(ipc: int, num_classes: int) -> int:
    """RDED argument.py: IPC 1 -> 10, 10 -> 50, 50 -> 100 (other IPCs: by bucket); x2 for 100 or 1000
    classes; at most IPC x classes."""
    bs = 10 if ipc <= 1 else 50 if ipc <= 10 else 100
    if num_classes in (100, 1000):
        bs *= 2
    return max(1, min(bs, ipc * num_classes))


def lr_factor(epoch: int, epochs: int) -> float:
    """RDED's LambdaLR (per epoch): 0.5 (1 + cos(pi epoch / epochs / 2)); 0 after the last epoch."""
    return 0.5 * (1.0 + math.cos(math.pi * epoch / epochs / 2)) if epoch <= epochs else 0.0


def eval_epochs(epochs: int) -> list[int]:
    """1-based epochs after which the test set is evaluated: RDED's (0-based e with e % 10 == 9 or the last,
    and e > 0.8 epochs), plus the last epoch always."""
    pts = {e + 1 for e in range(epochs) if (e % EVAL_EVERY == EVAL_EVERY - 1 or e == epochs - 1)
           and e > EVAL_AFTER * epochs}
    return sorted(pts | {epochs})


def param_groups(model: nn.Module, weight_decay: float = WEIGHT_DECAY) -> list[dict]:
    """RDED's get_parameters: decay on parameters named ``*weight*`` with more than one dimension, none on
    the rest (biases, batch-norm weights)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if ("weight" in name and p.ndim > 1) else no_decay).append(p)
    return [dict(params=decay, weight_decay=weight_decay), dict(params=no_decay, weight_decay=0.0)]


def set_bn_momentum(model: nn.Module, momentum: float = BN_MOMENTUM) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = momentum
    return model


def input_size(image_size: int) -> int:
    """Network input for images given at ``image_size`` (RDED: 224 from 256)."""
    return image_size * CROP_FRACTION[0] // CROP_FRACTION[1]


def shuffle_patches(x: torch.Tensor, gen: torch.Generator, factor: int = FACTOR) -> torch.Tensor:
    """RDED's ShufflePatches on a batch, each image its own orders: ``factor`` strips of width W // factor
    (the last takes the rest) in a random order, then the same on the rows."""
    if factor <= 1:
        return x
    out = []
    for img in x:
        for dim in (2, 1):                           # columns first, then rows (RDED permutes, repeats)
            n = img.shape[dim]
            t = n // factor
            bounds = [(i * t, (i + 1) * t if i < factor - 1 else n) for i in range(factor)]
            order = torch.randperm(factor, generator=gen).tolist()
            img = torch.cat([img.narrow(dim, bounds[k][0], bounds[k][1] - bounds[k][0]) for k in order], dim)
        out.append(img)
    return torch.stack(out)


def rrc_params(height: int, width: int, gen: torch.Generator, scale=(1 / FACTOR, 1.0), ratio=RATIO
               ) -> tuple[int, int, int, int]:
    """torchvision RandomResizedCrop.get_params' algorithm, drawn from ``gen``: (top, left, h, w)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * float(torch.empty(1).uniform_(scale[0], scale[1], generator=gen))
        aspect = math.exp(float(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=gen)))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            i = int(torch.randint(0, height - h + 1, (1,), generator=gen))
            j = int(torch.randint(0, width - w + 1, (1,), generator=gen))
            return i, j, h, w
    in_ratio = width / height                         # fallback: the central crop
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def train_augment(x01: torch.Tensor, gen: torch.Generator, size: int) -> torch.Tensor:
    """RDED's train transform on a float batch in [0, 1] (N, 3, H, W), on its device -> normalised
    (N, 3, size, size): ShufflePatches, RandomResizedCrop(size, (0.5, 1)), horizontal flip, Normalize."""
    from torchvision.transforms.v2 import functional as TF
    x01 = shuffle_patches(x01, gen)
    out = []
    for img in x01:
        i, j, h, w = rrc_params(img.shape[-2], img.shape[-1], gen)
        img = TF.resized_crop(img, i, j, h, w, [size, size], antialias=True)
        if float(torch.rand(1, generator=gen)) < 0.5:
            img = img.flip(-1)
        out.append(img)
    return normalize(torch.stack(out))


def normalize(x01: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN, device=x01.device, dtype=x01.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x01.device, dtype=x01.dtype).view(1, 3, 1, 1)
    return (x01 - mean) / std


def cutmix_box(height: int, width: int, lam: float, gen: torch.Generator) -> tuple[int, int, int, int]:
    """RDED's rand_bbox (square images; its W/H naming kept apart): -> (y1, y2, x1, x2), clipped."""
    cut = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * cut), int(width * cut)
    cy = int(torch.randint(0, height, (1,), generator=gen))
    cx = int(torch.randint(0, width, (1,), generator=gen))
    return (min(max(cy - cut_h // 2, 0), height), min(max(cy + cut_h // 2, 0), height),
            min(max(cx - cut_w // 2, 0), width), min(max(cx + cut_w // 2, 0), width))


def cutmix(x: torch.Tensor, gen: torch.Generator, alpha: float = CUTMIX_ALPHA):
    """CutMix as RDED does it: -> (mixed batch, permutation, lam, box (y1, y2, x1, x2))."""
    from .augment import sample_beta
    perm = torch.randperm(x.shape[0], generator=gen)
    lam = sample_beta(alpha, gen)
    y1, y2, x1, x2 = cutmix_box(x.shape[-2], x.shape[-1], lam, gen)
    out = x.clone()
    out[:, :, y1:y2, x1:x2] = x[perm.to(x.device), :, y1:y2, x1:x2]
    return out, perm, lam, (y1, y2, x1, x2)


def soft_targets(teacher_logits: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    return F.softmax(teacher_logits / temperature, dim=1)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = TEMPERATURE
            ) -> torch.Tensor:
    """RDED: KLDivLoss(batchmean)(log_softmax(student / T), softmax(teacher / T))."""
    return F.kl_div(F.log_softmax(student_logits / temperature, dim=1), soft_targets(teacher_logits, temperature),
                    reduction="batchmean")


def hard_cutmix_loss(logits: torch.Tensor, y: torch.Tensor, perm: torch.Tensor, box: tuple[int, int, int, int],
                     height: int, width: int) -> torch.Tensor:
    """CutMix's label rule on hard labels: ``(1 - a) CE(logits, y) + a CE(logits, y[perm])``, ``a`` the pasted
    box's share of the ``height`` x ``width`` image (``box`` = (y1, y2, x1, x2) as :func:`cutmix` returns it)."""
    from .augment import cutmix_loss                   # the hard-label loop's own label rule
    y1, y2, x1, x2 = box
    a = (y2 - y1) * (x2 - x1) / float(height * width)
    return cutmix_loss(logits, y, y[perm], 1.0 - a)


class EvalView(nn.Module):
    """The student as the test set sees it: [-1, 1] batch -> centre crop ``size`` -> Normalize -> student."""

    def __init__(self, student: nn.Module, size: int):
        super().__init__()
        self.student, self.size = student, size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        top, left = int(round((h - self.size) / 2.0)), int(round((w - self.size) / 2.0))   # as CenterCrop
        x = x[..., top:top + self.size, left:left + self.size]
        return self.student(normalize((x + 1) / 2))


def train_and_evaluate(x_train, y_train, x_test, y_test, num_classes: int, cfg, report=None,
                       model_wrapper=None, rank: int = 0, world_size: int = 1, teacher: nn.Module | None = None,
                       on_epoch: Callable[[int, int], None] | None = None) -> dict:
    """``eval.train.train_and_evaluate`` for this protocol (it dispatches here); same arguments, same record.

    ``teacher`` maps the student's normalised input to one logit per job class (``ClassSubset`` of the
    ImageNet teacher for a subset). Pixels: uint8 (any layout ``to_float_images`` takes) or float [-1, 1]."""
    t0 = time.perf_counter()
    y_train, y_test = torch.as_tensor(y_train).long(), torch.as_tensor(y_test).long()
    hard = cfg.protocol == HARD_PROTOCOL
    if teacher is None and not hard:
        raise TeacherError(f"protocol {PROTOCOL} needs its teacher (torchvision's ImageNet ResNet-18)")
    train_u8 = x_train.dtype == torch.uint8
    layout = pixel_layout(x_train) if train_u8 else "NCHW"
    channels, im_size = pixel_geometry(x_train, layout)
    if channels != 3:
        raise ValueError(f"{PROTOCOL} trains on RGB images, got {channels} channel(s)")
    size = input_size(im_size)
    ipc = int(torch.bincount(y_train, minlength=num_classes).max())
    epochs = cfg.epochs if cfg.epochs is not None else EPOCHS
    bs = batch_size(ipc, num_classes)
    temperature = float(cfg.temperature)
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    student = set_bn_momentum(build_torchvision(cfg.student, num_classes))
    if model_wrapper is not None:
        student = model_wrapper(student)
        device = next(student.parameters()).device
    else:
        device = torch.device(cfg.device)
        student = student.to(device)
    teacher = None if hard else freeze(teacher).to(device)
    y_dev = y_train.to(device)
    opt = torch.optim.AdamW(param_groups(student), lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY)
    order_gen = torch.Generator().manual_seed(cfg.seed)
    aug_gen = torch.Generator().manual_seed(cfg.seed * 1009 + 7919 * (rank + 1))
    x_dev = x_train.to(device)                    # the labels come from the teacher, per batch
    test_layout = "NCHW"
    if x_test.dtype == torch.uint8:
        test_layout = pixel_layout(x_test)
        x_test, y_test = x_test.to(device), y_test.to(device)
    view = EvalView(student, size)
    n, points = len(x_dev), EvalPoints(eval_epochs(epochs), epochs, report, on_epoch)
    loss_val, seen, t_train = float("nan"), 0, 0.0
    for epoch in range(epochs):
        lr = LR * lr_factor(epoch, epochs)
        for g in opt.param_groups:
            g["lr"] = lr
        student.train()
        te = time.perf_counter()
        perm = torch.randperm(n, generator=order_gen)
        loss_sum, n_batches = 0.0, 0
        for i in range(0, n, bs):
            glob = perm[i:i + bs]
            if len(glob) < world_size:
                continue
            idx = glob[rank::world_size].to(device)
            xb = x_dev[idx]
            xb = to_float_images(xb, layout) if train_u8 else xb
            xb = train_augment((xb + 1) / 2, aug_gen, size)
            xb, mix, _, box = cutmix(xb, aug_gen)
            if hard:                                       # the box's share of the image is the pasted label's
                loss = hard_cutmix_loss(student(xb), y_dev[idx], mix.to(device), box, xb.shape[-2], xb.shape[-1])
            else:
                with torch.no_grad():
                    t_logits = teacher(xb)                 # soft labels of this mixed batch, on the device
                loss = kd_loss(student(xb), t_logits, temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach())
            n_batches += 1
            seen += len(idx)
        t_train += time.perf_counter() - te
        loss_val = loss_sum / max(1, n_batches)
        points.epoch_done(epoch + 1, lambda: evaluate(view, x_test, y_test, cfg.eval_batch_size, device,
                                                      test_layout), lr, loss_val)
    return {
        **points.results(), "epochs": epochs, "seconds": time.perf_counter() - t0,
        "protocol": cfg.protocol, "protocol_version": PROTOCOL_VERSION,
        "labels": "hard: CutMix-mixed cross-entropy" if hard else f"soft: the teacher's, KL at T = {temperature:g}",
        "optimizer": {"name": "AdamW", "lr": LR, "betas": list(BETAS), "weight_decay": WEIGHT_DECAY,
                      "weight_decay_on": "weights with ndim > 1 (RDED get_parameters)",
                      "schedule": "per epoch x 0.5 (1 + cos(pi e / E / 2)) (RDED)",
                      "temperature": None if hard else temperature,
                      "batch_size": bs, "bn_momentum": BN_MOMENTUM, "source": SOURCE},
        "student": cfg.student, "augment": f"rded: shuffle-patches {FACTOR}, random-resized-crop {size} "
                                           f"scale (1/{FACTOR}, 1), flip, imagenet normalize; cutmix Beta(1,1)",
        "config": cfg.to_dict(), "seed": cfg.seed, "n_train": n, "ipc": ipc, "input_size": size,
        "images_per_s": seen / t_train if t_train > 0 else float("nan"),
    }


def load_job_classes_teacher(spec: str, class_names: list[str] | None = None, device: str | torch.device = "cpu"
                             ) -> nn.Module:
    """The job's teacher: ``load_teacher(spec)``; for a class subset (or another order) the logits of those
    classes in the job's label order (``ClassSubset``)."""
    teacher = load_teacher(spec, device)
    if class_names is None:
        return teacher
    index = imagenet_index(list(class_names))
    if index == list(range(TEACHER_CLASSES)):
        return teacher
    return freeze(ClassSubset(teacher, index).to(device))


register_protocol(PROTOCOL, PROTOCOL_VERSION, train_and_evaluate)
register_protocol(HARD_PROTOCOL, PROTOCOL_VERSION, train_and_evaluate)
