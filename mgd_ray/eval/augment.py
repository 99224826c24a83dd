"""Batched, seeded augmentation of the `hard-label` protocol (pure torch, no torchvision).

All functions take a float batch ``x (N, C, H, W)`` in [-1, 1] and a CPU ``torch.Generator``;
random parameters are drawn on the CPU from that generator (so results do not depend on the
device) and every sample gets its own parameters. Geometric ops are one ``affine_grid`` /
``grid_sample`` call per batch. Outputs keep shape and stay in [-1, 1].

What we use (the spec asks us to state it):

``dsa-grey`` (28-32 px grey data, DSA-style, all ops composed into one affine per sample):
    - crop: pad-and-crop, i.e. an integer shift of up to ``pad_frac * H`` px (0.125 -> 3 px at
      28 px, 4 px at 32 px); uncovered pixels are filled with -1 (black background);
    - scale: independent x/y factors in [1/1.2, 1.2] (DSA's ratio_scale = 1.2);
    - rotate: uniform angle in [-15, 15] degrees (DSA's ratio_rotate = 15);
    - horizontal flip with p = 0.5, ONLY when ``flip=True``. Use it where left/right mirror
      images are still members of the class: Fashion-MNIST yes (clothes, shoes and bags are
      left/right symmetric as a category); digits no (a mirrored 2, 3, 7 is not that digit).
    Unlike DSA's evaluation mode, which picks one op per batch, all ops are applied to every
    sample (a stronger, still label-preserving, augmentation).
``rgb`` (IDC / ImageNet family):
    random resized crop (area scale 0.5-1, aspect 3/4-4/3, back to the input size), horizontal
    flip p=0.5 (if ``flip``), colour jitter 0.4 (brightness, contrast, saturation, in that fixed
    order), AlexNet PCA lighting with std 0.1 (ImageNet eigen-vectors).
``none``: identity.

CutMix (Yun et al., IDC's version): one box per batch, lambda ~ Beta(alpha, alpha) (alpha=1 ->
uniform), partner = a random permutation of the batch; lambda is then corrected to the exact
kept-area fraction; loss = lambda * CE(y_a) + (1 - lambda) * CE(y_b).
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

AUGMENT_CHOICES = ("dsa-grey", "rgb", "none")

# AlexNet / IDC PCA lighting constants for RGB in [0, 1]
_IMAGENET_EIGVAL = torch.tensor([0.2175, 0.0188, 0.0045])
_IMAGENET_EIGVEC = torch.tensor([[-0.5675, 0.7192, 0.4009],
                                 [-0.5808, -0.0045, -0.8140],
                                 [-0.5836, -0.6948, 0.4203]])


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=gen) * (hi - lo) + lo


def _flip_sign(n: int, gen: torch.Generator, flip: bool) -> torch.Tensor:
    if not flip:
        return torch.ones(n)
    return torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)


def apply_affine(x: torch.Tensor, theta: torch.Tensor, fill: float = -1.0) -> torch.Tensor:
    """x (N,C,H,W), theta (N,2,3) mapping output to input normalised coords -> (N,C,H,W).

    Pixels sampled from outside the image get the value ``fill``.
    """
    theta = theta.to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros",
                        align_corners=False)
    return out + fill


def dsa_grey_theta(n: int, im_size: int, gen: torch.Generator, flip: bool,
                   pad_frac: float = 0.125, scale: float = 1.2,
                   rotate_deg: float = 15.0) -> torch.Tensor:
    """Per-sample affine (N,2,3) composing crop-shift, x/y scale, rotation and optional flip."""
    pad = int(round(pad_frac * im_size))
    shift = torch.randint(-pad, pad + 1, (n, 2), generator=gen).float() * (2.0 / im_size)
    sx = _uniform(n, 1.0 / scale, scale, gen)
    sy = _uniform(n, 1.0 / scale, scale, gen)
    a = _uniform(n, -rotate_deg, rotate_deg, gen) * (math.pi / 180.0)
    f = _flip_sign(n, gen, flip)
    cos, sin = torch.cos(a), torch.sin(a)
    theta = torch.zeros(n, 2, 3)
    # linear part R(a) @ diag(f * sx, sy)
    theta[:, 0, 0] = cos * sx * f
    theta[:, 0, 1] = sin * sy
    theta[:, 1, 0] = -sin * sx * f
    theta[:, 1, 1] = cos * sy
    theta[:, :, 2] = shift
    return theta


def dsa_grey(x: torch.Tensor, gen: torch.Generator, flip: bool = False) -> torch.Tensor:
    """DSA-style augmentation for small grey images (see module docstring). x in [-1,1]."""
    theta = dsa_grey_theta(x.shape[0], x.shape[-1], gen, flip)
    return apply_affine(x, theta, fill=-1.0).clamp_(-1.0, 1.0)


def rrc_theta(n: int, gen: torch.Generator, flip: bool, scale=(0.5, 1.0),
              ratio=(3 / 4, 4 / 3)) -> torch.Tensor:
    """Random-resized-crop (+ flip) as a per-sample affine (N,2,3); crop side fractions are
    clipped to 1 so the crop never leaves the image."""
    area = _uniform(n, scale[0], scale[1], gen)
    log_r = _uniform(n, math.log(ratio[0]), math.log(ratio[1]), gen)
    r = torch.exp(log_r)
    w = torch.sqrt(area * r).clamp(max=1.0)
    h = torch.sqrt(area / r).clamp(max=1.0)
    cx = (torch.rand(n, generator=gen) * 2 - 1) * (1 - w)
    cy = (torch.rand(n, generator=gen) * 2 - 1) * (1 - h)
    f = _flip_sign(n, gen, flip)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = w * f
    theta[:, 1, 1] = h
    theta[:, 0, 2] = cx
    theta[:, 1, 2] = cy
    return theta


def _grey(x01: torch.Tensor) -> torch.Tensor:
    w = torch.tensor([0.299, 0.587, 0.114], device=x01.device, dtype=x01.dtype)
    return (x01 * w.view(1, 3, 1, 1)).sum(1, keepdim=True)


def colour_jitter(x01: torch.Tensor, gen: torch.Generator, strength: float = 0.4) -> torch.Tensor:
    """Brightness, contrast, saturation factors in [1-s, 1+s] per sample; x01 (N,3,H,W) in [0,1]."""
    n = x01.shape[0]
    dev, dt = x01.device, x01.dtype
    b, c, s = (_uniform(n, 1 - strength, 1 + strength, gen).to(dev, dt).view(n, 1, 1, 1)
               for _ in range(3))
    x01 = (x01 * b).clamp(0, 1)
    m = _grey(x01).mean(dim=(1, 2, 3), keepdim=True)
    x01 = ((x01 - m) * c + m).clamp(0, 1)
    g = _grey(x01)
    return ((x01 - g) * s + g).clamp(0, 1)


def lighting(x01: torch.Tensor, gen: torch.Generator, std: float = 0.1) -> torch.Tensor:
    """AlexNet PCA lighting noise; x01 (N,3,H,W) in [0,1]."""
    alpha = torch.randn(x01.shape[0], 3, generator=gen) * std
    rgb = (alpha * _IMAGENET_EIGVAL) @ _IMAGENET_EIGVEC.T  # (N,3)
    return x01 + rgb.to(x01.device, x01.dtype).view(-1, 3, 1, 1)


def rgb_augment(x: torch.Tensor, gen: torch.Generator, flip: bool = True,
                jitter: float = 0.4, light: float = 0.1) -> torch.Tensor:
    """IDC-style RGB augmentation (see module docstring). x (N,3,H,W) in [-1,1]."""
    if x.shape[1] != 3:
        raise ValueError(f"rgb augmentation expects 3 channels, got {x.shape[1]}; "
                         "use augment='dsa-grey' for grey images")
    x = apply_affine(x, rrc_theta(x.shape[0], gen, flip), fill=0.0)
    x01 = (x + 1) / 2
    x01 = lighting(colour_jitter(x01, gen, jitter), gen, light)
    return (x01 * 2 - 1).clamp_(-1.0, 1.0)


def make_augment(name: str, flip: bool) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """Return ``aug(x, gen) -> x`` for a name in AUGMENT_CHOICES."""
    if name == "dsa-grey":
        return lambda x, gen: dsa_grey(x, gen, flip=flip)
    if name == "rgb":
        return lambda x, gen: rgb_augment(x, gen, flip=flip)
    if name == "none":
        return lambda x, gen: x
    raise ValueError(f"unknown augment {name!r}; expected one of {', '.join(AUGMENT_CHOICES)}")


def sample_beta(alpha: float, gen: torch.Generator) -> float:
    """One draw of Beta(alpha, alpha) from ``gen`` (alpha = 1 is the uniform distribution)."""
    if alpha == 1.0:
        return float(torch.rand((), generator=gen))
    seed = int(torch.randint(0, 2**62, (), generator=gen))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def cutmix(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator, alpha: float = 1.0
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """CutMix one batch: x (N,C,H,W), y (N,) -> (x_mixed, y_a, y_b, lam).

    A box of area ~(1 - lam0) H W is pasted from ``x[perm]``; the returned ``lam`` is the exact
    fraction of pixels that still come from ``x`` (IDC/Yun et al. correction).
    """
    n, _, h, w = x.shape
    lam0 = sample_beta(alpha, gen)
    perm = torch.randperm(n, generator=gen)
    cut = math.sqrt(1.0 - lam0)
    cut_h, cut_w = int(h * cut), int(w * cut)
    cy = int(torch.randint(0, h, (), generator=gen))
    cx = int(torch.randint(0, w, (), generator=gen))
    y1, y2 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
    x1, x2 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
    perm_d = perm.to(x.device)
    out = x.clone()
    out[:, :, y1:y2, x1:x2] = x[perm_d, :, y1:y2, x1:x2]
    lam = 1.0 - (y2 - y1) * (x2 - x1) / float(h * w)
    return out, y, y[perm_d], lam


def cutmix_loss(logits: torch.Tensor, y_a: torch.Tensor, y_b: torch.Tensor, lam: float) -> torch.Tensor:
    """lam * CE(logits, y_a) + (1 - lam) * CE(logits, y_b) (batch means)."""
    return lam * F.cross_entropy(logits, y_a) + (1.0 - lam) * F.cross_entropy(logits, y_b)
