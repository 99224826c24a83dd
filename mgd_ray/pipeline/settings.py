"""Settings keys: the tools every stage's key is made with (the keys themselves are defined by the
stages, ``pipeline.stage``).

Two levels. A stage's key holds the job-wide settings that change its bytes; placement and
robustness settings (actor counts, batch sizes, CPUs and GPUs as such, retries, timeouts, fault
injection) are left out: outputs are byte-identical across them (tested). What a CPU's result
does depend on, its thread count, is in the key's ``compute`` part, resolved as the workers
resolve it. A stage's key includes the keys of the stages before it, so a change upstream shows up
downstream too. A rerun into the same ``output.dir`` compares the recorded stage keys with the
job's before any heavy work and refuses on a difference (``SettingsChanged``), naming each
changed key.

The job's generation seeds and classes are not in the stage keys: they are units. Each class has
its own key (``stage.class_keys``: its name, its label index, a fingerprint of its own rows and
files), recorded per class by the encode stage and carried by every coreset part and shard (in
the footer, beside the stage's hash, ``CLASS_KEY``); a seed is part of a coreset part's and a
shard's name. So an added seed or class adds work, a class whose files or index changed is
redone, and nothing else moves.
"""

from __future__ import annotations

import hashlib
import json
import logging

from ..config import JobConfig, JobError
from .store import Store

log = logging.getLogger("mgd_ray")
# settings that do not change any output byte (determinism across them is tested). The CPUs and
# GPUs a stage asks for are here as such; what they resolve to (device, dtype, CPU threads) is in
# the stage's ``compute`` (``stage.compute``)
PLACEMENT = {
    "data": {"storage_options", "download", "max_failures"},
    "model": {"device", "allow_download"},
    "encode": {"batch_size", "min_actors", "max_actors", "num_cpus", "num_gpus"},
    "coreset": {"latents_per_task", "num_cpus"},
    "generate": {"batch_size", "num_actors", "num_cpus", "num_gpus", "max_retries", "start_timeout_s",
                 "fault_inject"},
    "evaluate": {"enabled", "num_workers", "cpus_per_worker", "gpus_per_worker", "metrics"},
}


class SettingsChanged(JobError):
    """The job's settings differ from those that made the outputs already in output.dir."""


def cpu_threads(cpus: float | None) -> int:
    """The threads a worker asking for ``cpus`` CPUs computes with: what it passes to
    ``workers.set_threads`` (torch, faiss) and what Ray sets as its ``OMP_NUM_THREADS`` (BLAS):
    the whole CPUs, at least one. On a CPU this count is part of the settings key."""
    return max(1, int(cpus or 1))


def section(job: JobConfig, name: str, only: tuple[str, ...] | None = None) -> dict:
    """A config section's byte-changing settings (placement left out), optionally only ``only``."""
    d = getattr(job, name).model_dump(mode="json")
    return {k: v for k, v in d.items() if k not in PLACEMENT.get(name, ()) and (only is None or k in only)}


def key_hash(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def flatten(d, prefix: str = "") -> dict:
    if not isinstance(d, dict):
        return {prefix: d}
    out = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def changed(old: dict, new: dict) -> list[str]:
    """``["sampler.cfg_scale: 2.0 -> 4.0", ...]`` for every key that differs."""
    a, b = flatten(old), flatten(new)
    return [f"{k}: {json.dumps(a.get(k, '(unset)'))} -> {json.dumps(b.get(k, '(unset)'))}"
            for k in sorted(set(a) | set(b)) if a.get(k, "(unset)") != b.get(k, "(unset)")]


KEY_FORMAT = 2                  # stage keys without seeds and classes (per-unit keys); 1 = per stage
SHARD_KEY = "mgd_ray.settings"  # Parquet footer key of a shard's (coreset part's) stage key hash
CLASS_KEY = "mgd_ray.class"     # Parquet footer key of the hash of the class it was made for


def unit_footer(settings_hash: str, class_hash: str = "") -> dict[str, str] | None:
    """The footer a unit's file (shard, coreset part) is committed with."""
    out = {SHARD_KEY: settings_hash} if settings_hash else {}
    if class_hash:
        out[CLASS_KEY] = class_hash
    return out or None


def footer_matches(footer: dict, settings_hash: str, class_hash: str = "") -> bool:
    return footer.get(SHARD_KEY, "") == settings_hash and (not class_hash or footer.get(CLASS_KEY, "") == class_hash)


def shard_committed(store: Store, name: str, settings_hash: str, class_hash: str = "", where: str = "shards") -> bool:
    """A shard (or a coreset part, ``where="coreset/parts"``) counts as committed only when its
    Parquet footer carries this job's settings hash and, given one, its class's hash (a missing,
    truncated, other-settings or other-class file does not)."""
    try:
        return footer_matches(store.read_footer(*where.split("/"), name), settings_hash, class_hash)
    except Exception:  # noqa: BLE001 - absent or unreadable: not committed
        return False


def committed_shards(store: Store, names, settings_hash: str, class_hashes: dict[str, str] | None = None,
                     where: str = "shards") -> set[str]:
    """The shards among ``names`` that carry ``settings_hash`` in their footer, and each its class
    hash from ``class_hashes`` (shard name -> hash) where given (read in threads: cheap on S3 too)."""
    from concurrent.futures import ThreadPoolExecutor
    names = list(names)
    ch = class_hashes or {}
    with ThreadPoolExecutor(max_workers=16) as pool:
        ok = list(pool.map(lambda n: shard_committed(store, n, settings_hash, ch.get(n, ""), where), names))
    return {n for n, good in zip(names, ok) if good}


def check_shards(store: Store, key: dict) -> list[str]:
    """Read every committed shard's footer (threads; cheap even on S3). A shard whose footer is
    missing (truncated, half-copied) is removed and listed so it is generated again; one made with
    other settings refuses the run (SettingsChanged). Returns the removed shard names."""
    from concurrent.futures import ThreadPoolExecutor
    want = key_hash(key)

    def footer(name):
        try:
            return name, store.read_footer("shards", name).get(SHARD_KEY, "(none)"), None
        except Exception as e:  # noqa: BLE001 - any unreadable footer means a damaged file
            return name, None, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"

    names = store.ls("shards", suffix=".parquet")
    with ThreadPoolExecutor(max_workers=16) as pool:
        found = list(pool.map(footer, names))
    other = [(n, h) for n, h, err in found if err is None and h != want]
    if other:
        raise SettingsChanged(
            f"{len(other)} shard(s) under {store.uri('shards')} were made with other settings (e.g. {other[0][0]}: "
            f"settings hash {other[0][1]}, this job's is {want}). Nothing was run. Either write to a new "
            f"output.dir, or rerun with --fresh generate to discard the shards and everything after them.")
    damaged = [(n, err) for n, _, err in found if err is not None]
    for n, err in damaged:
        log.warning("shard %s is damaged (%s); it will be generated again", n, err)
        store.rm("shards", n)
    return [n for n, _ in damaged]
