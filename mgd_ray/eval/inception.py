"""The standard FID network: torch-fidelity's ``FeatureExtractorInceptionV3`` (the TF 2015-12-05 Inception-v3
graph ported to torch, 2048-d pool features), loaded from the local file ``mgd-ray models fetch`` put in place.
Why this library and where the weights come from: :mod:`mgd_ray.inception`.

Loading: the file is read here with ``torch.load(weights_only=True)`` (tensors only, never an arbitrary
pickle: torch-fidelity's own path loader unpickles with ``weights_only=False``) and handed to torch-fidelity's
constructor in place of its URL download, so the library builds its network and loads the state dict with
strict keys, and nothing is downloaded. Input: uint8 images (any size, RGB or grey), which the network
resizes to 299 px itself as the TF graph does (``interpolate_bilinear_2d_like_tensorflow1x``).
"""
from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import torch

from .. import inception as spec

_BUILD = threading.Lock()


def _build(state_dict: dict | None):
    """torch-fidelity's network with ``state_dict`` (None: its random initialisation, for a stand-in).
    The library's only download call (``load_state_dict_from_url``, module-level in its file) is replaced,
    while the constructor runs, by a function that returns ``state_dict``: it never reaches the network."""
    from unittest import mock

    import torch_fidelity.feature_extractor_inceptionv3 as fe
    calls = []

    def local(url, **_):
        calls.append(url)
        return state_dict

    with _BUILD, mock.patch.object(fe, "load_state_dict_from_url", local):
        if state_dict is None:
            with mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda *a, **k: None):
                net = fe.FeatureExtractorInceptionV3("inception-v3-compat", [spec.FEATURE])
        else:
            net = fe.FeatureExtractorInceptionV3("inception-v3-compat", [spec.FEATURE])
    if len(calls) != 1:
        raise RuntimeError("torch-fidelity's FeatureExtractorInceptionV3 no longer loads its weights through "
                           "load_state_dict_from_url; check the pinned version (pyproject: torch-fidelity=="
                           f"{spec.LIBRARY_VERSION})")
    return net.eval()


def load_inception(path: str | Path | None = None, device: str = "cpu", pinned: str | None = None):
    """The FID network with the weights at ``path`` (default :func:`mgd_ray.inception.weights_path`),
    strict keys; InceptionNotFetched when the file is missing or neither the pinned file (``pinned``,
    default the release's sha256) nor a stand-in. ``net.weights``: path, sha256, standard."""
    info = spec.check_weights(path, pinned)
    sd = torch.load(info["path"], map_location="cpu", weights_only=True)
    net = _build(sd).to(device)
    net.weights = info
    return net


def library_version() -> str:
    import torch_fidelity
    return str(torch_fidelity.__version__)


@torch.no_grad()
def inception_features(net, images: np.ndarray, batch_size: int = 50) -> np.ndarray:
    """2048-d features (float32) of uint8 images ``(N, H, W, C)`` (C 3, or 1: repeated to RGB)."""
    device = next(net.parameters()).device
    a = np.asarray(images)
    if a.dtype != np.uint8 or a.ndim != 4:
        raise TypeError(f"inception_features expects uint8 (N, H, W, C) images, got {a.dtype} {a.shape}")
    out = []
    cuda = device.type == "cuda"
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) if cuda else None
    try:
        if cuda:      # float32 as the reference graph computes, not TF32's 10-bit mantissa
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        for s in range(0, len(a), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(a[s:s + batch_size])).permute(0, 3, 1, 2)
            if x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)
            (f,) = net(x.contiguous().to(device))
            out.append(f.float().cpu().numpy())
    finally:
        if cuda:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    return np.concatenate(out) if out else np.zeros((0, 2048), np.float32)


def write_stand_in(path: str | Path | None = None, seed: int = 0) -> Path:
    """A stand-in for tests and the CPU twin: torch-fidelity's network with random weights (seeded),
    saved where the fetch puts the real file (default :func:`mgd_ray.inception.weights_path`), in the same
    legacy torch format as the released file, with the marker that declares it a stand-in."""
    path = Path(path) if path is not None else spec.weights_path()
    torch.manual_seed(seed)
    net = _build(None)
    with torch.no_grad():          # running statistics near the activations' scale, so features are not flat
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
                m.running_mean.normal_(0.0, 0.1)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path, _use_new_zipfile_serialization=False)
    spec.stand_in_marker(path).write_text(json.dumps(
        {"stand_in": True, "sha256": spec.file_sha256(path), "seed": seed,
         "note": "random weights of torch-fidelity's FeatureExtractorInceptionV3, not the FID network"}))
    return path
