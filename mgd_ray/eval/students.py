"""Student networks of the `hard-label` protocol (all instance-norm).

Instance norm everywhere is ``nn.GroupNorm(C, C, affine=True)`` (one group per channel), the
convention of DC/DSA/DM/IDC: it has no running statistics, so train and eval mode compute the
same thing and DDP needs no buffer sync.

    ConvNet-D   conv3x3 -> IN -> ReLU -> avg-pool 2, D blocks, linear head (width 128).
                D = 3 for 28-32 px, D = 6 at 224 px. A block whose input is already 1x1 skips
                its pooling (so ConvNet-6 still runs on 28/32 px inputs; it is not the protocol
                network there).
    ResNetAP-10 IDC's ResNet-10 ([1,1,1,1] basic blocks, widths 64..512) that downsamples with
                2x2 average pooling instead of strided convolutions (main path and shortcut).
    ResNet-18   torchvision-shaped ResNet-18 ([2,2,2,2], strided convs) with instance norm.

Both ResNets use the CIFAR stem (3x3 conv, stride 1) for inputs <= 64 px and the ImageNet stem
(7x7 conv stride 2 + 3x3 pool stride 2; average pool for ResNetAP) above that.

Every network has ``embed(x) -> (N, F)`` (penultimate features) and ``forward = head(embed)``.
No torchvision.
"""
from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

STUDENT_CHOICES = ("convnet3", "convnet6", "convnetd<D>", "resnetap10", "resnet18")
SMALL_STEM_MAX_PX = 64  # inputs up to this size use the CIFAR (3x3, stride 1) stem


def instance_norm(channels: int) -> nn.GroupNorm:
    """Instance norm as the DD literature writes it: GroupNorm with one group per channel."""
    return nn.GroupNorm(channels, channels, affine=True)


class ConvNet(nn.Module):
    """ConvNet-D: D x [conv3x3 -> instance norm -> ReLU -> avg-pool 2] -> linear.

    x (N, channels, im_size, im_size) -> logits (N, num_classes). Spatial sizes at 28 px with
    D=3: 28 -> 14 -> 7 -> 3, so the head sees width * 3 * 3 features.
    """

    def __init__(self, channels: int, num_classes: int, depth: int = 3, width: int = 128,
                 im_size: int = 32):
        super().__init__()
        if depth < 1:
            raise ValueError(f"ConvNet depth must be >= 1, got {depth}")
        layers: list[nn.Module] = []
        c, s = channels, im_size
        for _ in range(depth):
            layers += [nn.Conv2d(c, width, 3, padding=1), instance_norm(width), nn.ReLU(inplace=True)]
            if s >= 2:  # a 1x1 map is not pooled further
                layers.append(nn.AvgPool2d(2, 2))
                s //= 2
            c = width
        self.features = nn.Sequential(*layers)
        self.feat_dim = width * s * s
        self.classifier = nn.Linear(self.feat_dim, num_classes)
        self.depth, self.width, self.im_size = depth, width, im_size

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


class BasicBlockAP(nn.Module):
    """IDC's basic block: stride is realised as a 2x2 average pool after conv1 (and in the
    shortcut after the 1x1 conv), never as a strided convolution."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.stride = stride
        self.conv1 = nn.Conv2d(in_planes, planes, 3, 1, 1, bias=False)
        self.bn1 = instance_norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = instance_norm(planes)
        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or in_planes != planes:
            sc: list[nn.Module] = [nn.Conv2d(in_planes, planes, 1, 1, bias=False)]
            if stride != 1:
                sc.append(nn.AvgPool2d(2, 2))
            sc.append(instance_norm(planes))
            self.shortcut = nn.Sequential(*sc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        if self.stride != 1:
            out = F.avg_pool2d(out, 2, 2)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class BasicBlock(nn.Module):
    """Standard ResNet basic block (strided 3x3 conv), instance norm."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = instance_norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = instance_norm(planes)
        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False),
                                          instance_norm(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """Generic instance-norm ResNet: stem -> 4 stages -> global avg-pool -> linear."""

    def __init__(self, block: type[nn.Module], num_blocks: list[int], channels: int,
                 num_classes: int, im_size: int, width: int = 64, avgpool_stem: bool = False):
        super().__init__()
        if im_size <= SMALL_STEM_MAX_PX:
            self.stem = nn.Sequential(nn.Conv2d(channels, width, 3, 1, 1, bias=False),
                                      instance_norm(width), nn.ReLU(inplace=True))
        else:
            pool = (nn.AvgPool2d(3, 2, 1) if avgpool_stem else nn.MaxPool2d(3, 2, 1))
            self.stem = nn.Sequential(nn.Conv2d(channels, width, 7, 2, 3, bias=False),
                                      instance_norm(width), nn.ReLU(inplace=True), pool)
        stages, in_planes = [], width
        for i, n in enumerate(num_blocks):
            planes = width * 2 ** i
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                stages.append(block(in_planes, planes, stride))
                in_planes = planes
        self.layers = nn.Sequential(*stages)
        self.feat_dim = in_planes
        self.classifier = nn.Linear(in_planes, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


def ResNetAP10(channels: int, num_classes: int, im_size: int, width: int = 64) -> ResNet:
    """IDC's ResNetAP-10 (average-pool downsampling, instance norm)."""
    return ResNet(BasicBlockAP, [1, 1, 1, 1], channels, num_classes, im_size, width,
                  avgpool_stem=True)


def ResNet18(channels: int, num_classes: int, im_size: int, width: int = 64) -> ResNet:
    """ResNet-18 with instance norm."""
    return ResNet(BasicBlock, [2, 2, 2, 2], channels, num_classes, im_size, width)


def build_student(name: str, channels: int, num_classes: int, im_size: int,
                  width: int | None = None) -> nn.Module:
    """Build a protocol student by name.

    Names: ``convnet3``, ``convnet6``, ``convnetd<D>`` (any depth D >= 1), ``resnetap10``,
    ``resnet18``. ``width`` overrides the protocol width (ConvNet 128, ResNets 64); leave it
    None for protocol runs — it exists for tests and tiny twins.
    """
    key = name.strip().lower()
    m = re.fullmatch(r"convnet(?:d)?(\d+)", key)
    if m:
        return ConvNet(channels, num_classes, depth=int(m.group(1)), width=width or 128,
                       im_size=im_size)
    if key == "resnetap10":
        return ResNetAP10(channels, num_classes, im_size, width or 64)
    if key == "resnet18":
        return ResNet18(channels, num_classes, im_size, width or 64)
    raise ValueError(f"unknown student {name!r}; expected one of {', '.join(STUDENT_CHOICES)}")
