"""The Inception-v3 FID network of the ImageNet family's distribution metrics: which jobs use it, where its
weights live, and fetching them (torch-free: the job schema, the door and ``mgd-ray models fetch`` use it;
the network itself is :mod:`mgd_ray.eval.inception`).

**Library: torch-fidelity** (``torch-fidelity==0.4.0``, ``FeatureExtractorInceptionV3``, the 2048-d pool
features). Of the four candidates it is the one that (a) reproduces the standard FID network, the
TensorFlow graph ``inception-2015-12-05`` of the original FID code, including the graph's TF1 bilinear
resize to 299 px from uint8 pixels and its quirks (max pool in ``Mixed_7c``, ``count_include_pad=False``,
1008 logits), checked by its authors against the TF reference; (b) takes a local weights file
(``feature_extractor_weights_path``) instead of downloading; (c) is maintained (0.4.0, 2026) and is what
torchmetrics' ``FrechetInceptionDistance`` itself runs (so torchmetrics would add a wrapper and nothing
else); (d) needs nothing we do not already install (numpy, pillow, torch, torchvision, tqdm). pytorch-fid
(last release 2023) resizes with torch's bilinear, not the graph's, and downloads its weights in its
constructor (it only looks in torch.hub's cache first); clean-fid (2022) downloads a TorchScript file
(``torch.jit.load``, an unrestricted load) and by default resizes with its own PIL-bicubic "clean" mode, which
gives a different number from the standard FID.

**Weights**: the TF 2015-12-05 graph's weights as torch-fidelity converted them and publishes them with its
release v0.2.0 (:data:`URL`, :data:`SIZE` bytes, sha256 :data:`SHA256`; the file name carries the hash's
first 8 hex digits, torch.hub's convention). No copy on the Hugging Face hub is well known (``timm``'s
``inception_v3.tf_in1k`` is a different, later TF-slim checkpoint, not the FID network), so the file comes
from that release: ``mgd-ray models fetch JOB.yaml`` downloads it (when it is not already there) into
torch.hub's checkpoint directory (:func:`weights_path`: ``$TORCH_HOME/hub/checkpoints/``, default
``~/.cache/torch/hub/checkpoints/``, where torch-fidelity and torchmetrics keep the same file), checks size
and sha256, and then loads it offline. At run time nothing is downloaded: the file is read with
``torch.load(weights_only=True)`` (no arbitrary pickle) into torch-fidelity's network (strict keys).

**Which jobs**: ``evaluate.features`` ``auto`` (the default) uses Inception for the ImageNet family, decided
by the data: ``data.class_list`` is a built-in ImageNet list (imagenet1k, imagenet100, imagenette,
imagewoof) or a class-list file of ImageNet-1K wnids (:func:`imagenet_family`); everything else (digits,
Fashion-MNIST, a user's own classes) keeps the real-data classifier's features. ``inception`` /
``classifier`` force one.

**Stand-ins** (tests, the CPU twin): random weights of the same network saved where the fetch puts the real
file, with a marker file beside it (:data:`STAND_IN_SUFFIX`, holding the stand-in's sha256) written by
:func:`mgd_ray.eval.inception.write_stand_in`. The run accepts such a file and says so in every number's
``feature_space`` ("STAND-IN random weights"); any other file whose sha256 is not :data:`SHA256` is
refused at the door. ``mgd-ray models fetch`` accepts only the real file (it replaces a stand-in).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

LIBRARY = "torch-fidelity"
LIBRARY_VERSION = "0.4.0"                    # the pyproject pin
EXTRACTOR = "FeatureExtractorInceptionV3"    # torch_fidelity's class; registered there as "inception-v3-compat"
FEATURE = "2048"                             # the pool3 features FID uses
FILE_NAME = "weights-inception-2015-12-05-6726825d.pth"
URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + FILE_NAME   # = URL_INCEPTION_V3
SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
SIZE = 95_628_359
STAND_IN_SUFFIX = ".stand-in.json"
ROLE = "FID Inception-v3 weights (torch-fidelity)"
FETCH_HINT = ("fetch them before the run with `mgd-ray models fetch JOB.yaml` where github.com is reachable (it "
              "downloads torch-fidelity's release file into torch.hub's checkpoints directory, $TORCH_HOME/hub/"
              "checkpoints, on every node), or set evaluate.features=classifier, or evaluate.metrics=false; "
              "nothing is downloaded at run time")


class InceptionNotFetched(FileNotFoundError):
    """The FID Inception weights are not where the fetch puts them, or are not the pinned file."""


# ---- which jobs --------------------------------------------------------------------------------------
def imagenet_family(data) -> bool:
    """``data.class_list`` names a built-in ImageNet list or a class-list file of ImageNet-1K wnids."""
    from .data.classlists import imagenet1k, is_class_list_name, load_class_list
    spec = getattr(data, "class_list", None)
    if not spec:
        return False
    if is_class_list_name(spec):
        return True
    try:
        names = list(load_class_list(spec).names)
    except Exception:  # noqa: BLE001 - an unreadable class list is the data checks' to report
        return False
    wnids = set(imagenet1k().names)
    return bool(names) and all(n in wnids for n in names)


def uses_inception(job) -> bool:
    """The job's distribution metrics are computed in Inception-v3 features (so it needs the weights)."""
    ev = job.evaluate
    if not (ev.enabled and ev.metrics):
        return False
    return ev.features == "inception" or (ev.features == "auto" and imagenet_family(job.data))


# ---- where the weights live ------------------------------------------------------------------------
def torch_hub_dir() -> Path:
    """torch.hub's directory as ``torch.hub.get_dir()`` resolves it, without importing torch:
    ``$TORCH_HOME/hub``, default ``$XDG_CACHE_HOME/torch/hub`` (``~/.cache/torch/hub``)."""
    home = os.getenv("TORCH_HOME") or os.path.join(os.getenv("XDG_CACHE_HOME") or "~/.cache", "torch")
    return Path(os.path.expanduser(home)) / "hub"


def weights_path() -> Path:
    return torch_hub_dir() / "checkpoints" / FILE_NAME


def stand_in_marker(path: Path) -> Path:
    return path.with_name(path.name + STAND_IN_SUFFIX)


def file_sha256(path: Path) -> str:
    from .models import hash_file
    return hash_file(path).hexdigest()


def check_weights(path: Path | None = None, pinned: str | None = None) -> dict:
    """What the run will load: ``{"path", "sha256", "standard"}``; standard = the pinned file (``pinned``,
    default :data:`SHA256`), else a stand-in declared by its marker. InceptionNotFetched (with the fix) when
    the file is missing or is neither."""
    pinned = pinned or SHA256
    path = Path(path) if path is not None else weights_path()
    if not path.is_file():
        raise InceptionNotFetched(f"the FID Inception-v3 weights ({FILE_NAME}) are not at {path}: {FETCH_HINT}")
    sha = file_sha256(path)
    if sha == pinned:
        return {"path": str(path), "sha256": sha, "standard": True}
    marker = stand_in_marker(path)
    try:
        declared = json.loads(marker.read_text()).get("sha256") if marker.is_file() else None
    except (OSError, ValueError):
        declared = None
    if declared == sha:
        return {"path": str(path), "sha256": sha, "standard": False}
    raise InceptionNotFetched(f"the FID Inception-v3 weights at {path} are not the pinned file (sha256 {sha}, "
                              f"{path.stat().st_size:,} B; expected {pinned}): a partial download "
                              f"or another file. Delete it and {FETCH_HINT}")


def file_entry() -> dict:
    """The weights as ``mgd-ray models fetch`` plans them (``--dry-run``)."""
    p = weights_path()
    return {"role": ROLE, "url": URL, "sha256": SHA256, "size": SIZE, "path": str(p), "exists": p.is_file()}


# ---- fetching (mgd-ray models fetch) ---------------------------------------------------------------
def download(entry: dict, echo: Callable[[str], None] = print, timeout: float = 60.0) -> str:
    """Put ``entry``'s file (:func:`file_entry`) at its path: kept when it is already the pinned file,
    else downloaded to a temporary file beside it, checked (size, sha256) and moved into place (a stand-in's
    marker is removed). Returns what happened; raises OSError / ValueError when it cannot."""
    import hashlib
    import tempfile
    import urllib.request
    dest = Path(entry["path"])
    if dest.is_file() and dest.stat().st_size == entry["size"] and file_sha256(dest) == entry["sha256"]:
        stand_in_marker(dest).unlink(missing_ok=True)
        return "present"
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    try:
        h, n = hashlib.sha256(), 0
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(entry["url"], timeout=timeout) as resp:
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                h.update(chunk)
                n += len(chunk)
                out.write(chunk)
        if n != entry["size"] or h.hexdigest() != entry["sha256"]:
            raise ValueError(f"{entry['url']}: got {n:,} B with sha256 {h.hexdigest()}, expected "
                             f"{entry['size']:,} B with sha256 {entry['sha256']}")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    stand_in_marker(dest).unlink(missing_ok=True)
    echo(f"  downloaded {entry['url']} -> {dest} ({n:,} B, sha256 {entry['sha256']})")
    return "downloaded"
