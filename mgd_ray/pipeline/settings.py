"""Settings keys: which job settings shaped each stage's committed outputs.

Every stage records the key of the settings that change its bytes (``latents/_COMPLETE.json``,
``coreset/_COMPLETE.json``, ``shards/_SETTINGS.json`` plus a hash in every shard's Parquet footer,
``eval/_SETTINGS.json`` plus a hash in every trial). Placement settings (actor counts, batch
sizes, CPUs, GPUs, retries) are left out: outputs are byte-identical across them. A stage's key
includes the keys of the stages before it, so a change upstream shows up downstream too.

A rerun into the same ``output.dir`` compares the recorded keys with the job's before any heavy
work and refuses on a difference (``SettingsChanged``), naming each changed key; ``--fresh STAGE``
discards that stage and every later one first.
"""

from __future__ import annotations

import hashlib
import json
import logging

from ..config import JobConfig, JobError
from .store import Store

log = logging.getLogger("mgd_ray")
STAGES = ("encode", "coreset", "generate", "evaluate")
# (directory, record file) of each stage's committed outputs; the record holds {"key": ...}
RECORDS = {"encode": ("latents", "_COMPLETE.json"), "coreset": ("coreset", "_COMPLETE.json"),
           "generate": ("shards", "_SETTINGS.json"), "evaluate": ("eval", "_SETTINGS.json")}
# files derived from a stage's outputs, discarded with it by --fresh
DERIVED = {"encode": ("failures.parquet",), "generate": ("preview", "failed_units.json"),
           "evaluate": ("results.json",)}
# settings that do not change any output byte (determinism across them is tested)
PLACEMENT = {
    "data": {"storage_options", "download", "max_failures"},
    "model": {"device", "allow_download"},
    "encode": {"batch_size", "min_actors", "max_actors", "num_cpus", "num_gpus"},
    "coreset": {"latents_per_task", "num_cpus"},
    "generate": {"batch_size", "num_actors", "num_cpus", "num_gpus", "max_retries", "fault_inject"},
    "evaluate": {"enabled", "num_workers", "cpus_per_worker", "gpus_per_worker", "metrics"},
}


class SettingsChanged(JobError):
    """The job's settings differ from those that made the outputs already in output.dir."""


def _section(job: JobConfig, name: str, only: tuple[str, ...] | None = None) -> dict:
    d = getattr(job, name).model_dump(mode="json")
    return {k: v for k, v in d.items() if k not in PLACEMENT.get(name, ()) and (only is None or k in only)}


def stage_keys(job: JobConfig, info) -> dict[str, dict]:
    """Stage -> nested dict of the byte-changing settings (paths read like job keys)."""
    model = dict(_section(job, "model"), transformer_sha256=info.transformer_sha256, vae_sha256=info.vae_sha256)
    enc = {"data": _section(job, "data"), "model": model, "encode": _section(job, "encode")}
    cor = {**enc, "method": job.method,
           "coreset": {k: v for k, v in _section(job, "coreset").items() if k != "neighbourhood_max"},
           "generate": _section(job, "generate", ("ipc", "seeds"))}
    gen = {**cor, "coreset": _section(job, "coreset"), "generate": _section(job, "generate"),
           "sampler": _section(job, "sampler"), "guidance": _section(job, "guidance")}
    ev = {**gen, "evaluate": _section(job, "evaluate")}
    return {"encode": enc, "coreset": cor, "generate": gen, "evaluate": ev}


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


def recorded_key(store: Store, stage: str) -> dict | None:
    d, f = RECORDS[stage]
    if not store.exists(d, f):
        return None
    return store.read_json(d, f).get("key")


def record_key(store: Store, stage: str, key: dict):
    """Record the stage's key (once: an existing record is this key, check_settings saw to it)."""
    d, f = RECORDS[stage]
    if recorded_key(store, stage) == key:
        return
    store.write_json({"key": key, "hash": key_hash(key)}, d, f)


def discard_from(store: Store, stage: str) -> list[str]:
    """``--fresh STAGE``: remove that stage's outputs and every later stage's."""
    gone = []
    for s in STAGES[STAGES.index(stage):]:
        for p in (RECORDS[s][0], *DERIVED.get(s, ())):
            if store.exists(p):
                store.rm(p)
                gone.append(p)
    return gone


def check_settings(store: Store, keys: dict[str, dict]):
    """Refuse (SettingsChanged) when any stage's recorded key differs from this job's."""
    diffs = {}
    for stage in STAGES:
        old = recorded_key(store, stage)
        if old is not None and old != keys[stage]:
            diffs[stage] = changed(old, keys[stage])
    if not diffs:
        return
    first = next(s for s in STAGES if s in diffs)
    # each stage's key holds the earlier stages' settings: name each change once, at its first stage
    seen, lines = set(), []
    for stage in STAGES:
        for c in diffs.get(stage, []):
            if c not in seen:
                seen.add(c)
                lines.append(f"  {stage}: {c}")
    raise SettingsChanged(
        f"{store.uri()} holds outputs made with other settings (from the {first} stage on):\n" + "\n".join(lines)
        + f"\nNothing was run. Either write to a new output.dir, or rerun with --fresh {first} to discard the "
          f"{first} stage and every later one and run them again.")


SHARD_KEY = "mgd_ray.settings"  # Parquet footer key of a shard's generate-stage key hash


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
