"""GPUs as Ray granted them: a task or actor uses the GPUs Ray gave IT, never the ones its
process happens to see.

Ray 2.60 leaves ``CUDA_VISIBLE_DEVICES`` as inherited when a task is granted no GPU (it sets it
only for a non-zero grant; ``RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO`` restores the old override), so
a 0-GPU task on a GPU node would see every GPU of the node and torch / faiss-gpu could open a
context on a GPU granted to another task. ``gpus_as_granted`` hides them first.
"""

from __future__ import annotations

import contextlib
import os


def granted_gpus() -> list:
    """The GPU ids Ray granted the calling task or actor ([] outside Ray)."""
    import ray
    return list(ray.get_gpu_ids()) if ray.is_initialized() else []


@contextlib.contextmanager
def gpus_as_granted():
    """For a task's body: yields the GPU ids Ray granted it; with none granted, the process sees
    no GPU (``CUDA_VISIBLE_DEVICES=""``) until the body ends. Enter it before importing faiss or
    initialising CUDA."""
    gpus = granted_gpus()
    if gpus:
        yield gpus
        return
    old = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    try:
        yield gpus
    finally:
        if old is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = old


def hide_ungranted_gpus() -> list:
    """For an actor (a process of its own): hide the node's GPUs for good when Ray granted it
    none; -> the granted ids."""
    gpus = granted_gpus()
    if not gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    return gpus
