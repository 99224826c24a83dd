"""The ``soft-label-imagenet`` teacher as a job names it: a hub id, ``hub:ORG/NAME[@REVISION]`` (torch-free:
the job schema, ``mgd-ray models fetch`` and the door use it; the loader is
:func:`mgd_ray.eval.soft_label_imagenet.load_teacher`).

torchvision's ImageNet ResNet-18 weights are on the hub as safetensors, ``timm/resnet18.tv_in1k``
(``model.safetensors``, state dict in torchvision's key names; ``config.json``). ``mgd-ray models fetch JOB.yaml``
downloads exactly :data:`TEACHER_FILES` of it into the hub cache; at run time only that cache is read
(``local_files_only``), nothing is downloaded.
"""
from __future__ import annotations

from pathlib import Path

TEACHER_PREFIX = "hub:"
DEFAULT_TEACHER = "hub:timm/resnet18.tv_in1k"
TEACHER_WEIGHTS = "model.safetensors"
TEACHER_CONFIG = "config.json"
TEACHER_FILES = (TEACHER_WEIGHTS, TEACHER_CONFIG)
TEACHER_ARCH = "resnet18"          # the torchvision architecture the weights load into (strict)
TEACHER_CLASSES = 1000


class TeacherError(FileNotFoundError):
    """The soft-label protocol's teacher is missing or unusable; the message says how to fix it."""


class TeacherNotFetched(FileNotFoundError):
    """The hub teacher is not in the local cache (or is incomplete); the message says how to fetch it."""


def is_hub_teacher(spec: str | None) -> bool:
    return isinstance(spec, str) and spec.startswith(TEACHER_PREFIX)


def parse_teacher(spec: str) -> tuple[str, str]:
    """``hub:ORG/NAME[@REVISION]`` -> (repo id, revision); ValueError naming the form otherwise."""
    if not is_hub_teacher(spec):
        raise ValueError(f"the soft-label-imagenet teacher is a hub id written hub:ORG/NAME (e.g. {DEFAULT_TEACHER}), "
                         f"got {spec!r}")
    repo, _, rev = spec[len(TEACHER_PREFIX):].partition("@")
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    try:
        validate_repo_id(repo)
    except HFValidationError:
        raise ValueError(f"{spec!r} does not name a hub repo (hub:ORG/NAME, e.g. {DEFAULT_TEACHER})") from None
    if repo.count("/") != 1:
        raise ValueError(f"{spec!r}: write the repo as ORG/NAME (e.g. {DEFAULT_TEACHER})")
    return repo, rev or "main"


def teacher_weights_path(spec: str, cache_dir: str | None = None) -> Path:
    """The cached ``model.safetensors`` of ``spec``, from the hub cache only (``local_files_only``: never a
    download). TeacherNotFetched with the fix when it is not there."""
    repo, rev = parse_teacher(spec)
    from huggingface_hub import snapshot_download
    try:
        snap = Path(snapshot_download(repo, revision=rev, allow_patterns=list(TEACHER_FILES), local_files_only=True,
                                      cache_dir=cache_dir))
    except Exception as e:  # noqa: BLE001 - not cached: one message with the fix
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise TeacherNotFetched(
            f"the soft-label-imagenet teacher {spec} is not in the local Hugging Face cache ({first}). Fetch it "
            f"before the run with `mgd-ray models fetch JOB.yaml` where huggingface.co is reachable (it downloads "
            f"{' + '.join(TEACHER_FILES)} into the cache that HF_HOME / HF_HUB_CACHE name, on every node); "
            f"nothing is downloaded at run time") from None
    f = snap / TEACHER_WEIGHTS
    if not f.is_file():
        raise TeacherNotFetched(f"the soft-label-imagenet teacher {spec}: the cached snapshot {snap} has no "
                                f"{TEACHER_WEIGHTS}; fetch it again with `mgd-ray models fetch JOB.yaml`")
    return f


def imagenet_index(class_names: list[str]) -> list[int]:
    """ImageNet-1K indices (torchvision's / the teacher's order: sorted wnids) of ``class_names`` (wnids)."""
    from .data.classlists import imagenet1k
    names = list(imagenet1k().names)
    pos = {n: i for i, n in enumerate(names)}
    bad = [n for n in class_names if n not in pos]
    if bad:
        raise TeacherError(f"soft-label-imagenet: the teacher predicts the 1000 ImageNet-1K classes, but the job's classes "
                           f"{bad[:5]}{' ...' if len(bad) > 5 else ''} are not ImageNet-1K wnids; use data.class_list "
                           "imagenet1k (or a subset of its wnids)")
    return [pos[n] for n in class_names]
