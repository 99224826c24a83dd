"""Evaluation trials (pure; Ray Train runs ``run_trials`` inside its workers).

A trial = (protocol, dataset, student, training seed), where a dataset is a distilled set (one
per generation seed) or a random-real baseline subset drawn with the same IPC, and the protocol is
one of the job's evaluation protocols (``evaluate`` and ``evaluate.also``; the functions here take
a job whose ``evaluate`` is that one protocol: ``JobConfig.evaluations``). Each finished trial is
committed as ``eval/<protocol>/<trial>.json``, so an interrupted evaluation resumes where it
stopped. While a trial trains, its worker keeps ``eval/_progress/<protocol>/<trial>.json`` (epochs
done) up to date every ``PROGRESS_EVERY`` seconds, so the driver's progress line moves within a
trial; the driver removes ``eval/_progress`` once every trial is committed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..config import JobConfig
from .store import Store, job_store
from .units import decode_png


PROGRESS_EVERY = 15.0  # seconds between a training trial's progress writes


def trial_name(kind: str, set_seed: int, student: str, train_seed: int) -> str:
    return f"{kind}-s{set_seed}-{student}-t{train_seed}"


def make_trials(job: JobConfig) -> list[dict]:
    """The trials of ``job``'s (first) evaluation protocol."""
    ev = job.evaluate
    trials = []
    kinds = [job.method] + [b for b in ev.baselines if b != job.method]
    for kind in kinds:
        for s in job.generate.seeds:
            for student in ev.students:
                for t in range(ev.train_seeds):
                    trials.append(dict(name=trial_name(kind, s, student, t), protocol=ev.label, kind=kind,
                                       set_seed=int(s), student=student, train_seed=t))
    return trials


def trial_path(trial: dict) -> tuple[str, str, str]:
    """Where a trial's record is committed: ``eval/<protocol>/<trial>.json``."""
    return ("eval", trial["protocol"], f"{trial['name']}.json")


def progress_path(trial: dict) -> tuple[str, str, str, str]:
    return ("eval", "_progress", trial["protocol"], f"{trial['name']}.json")


def progress_writer(store: Store, trial: dict, every: float = PROGRESS_EVERY, clock=time.monotonic):
    """``on_epoch(done, epochs)`` for :func:`train_and_evaluate`: writes the trial's
    ``progress_path`` at most every ``every`` seconds (the first epoch always), never the last epoch
    (the trial's own record says it is done)."""
    last = [None]

    def on_epoch(done: int, epochs: int):
        now = clock()
        if done >= epochs or (last[0] is not None and now - last[0] < every):
            return
        last[0] = now
        store.write_json({"epoch": int(done), "epochs": int(epochs)}, *progress_path(trial))
    return on_epoch


def trials_progress(store: Store, trials: list[dict]) -> float:
    """How many of ``trials`` (one protocol's) are done, counting a training one by its fraction
    of epochs (from its progress file): 1.5 = one finished, one half-way."""
    if not trials:
        return 0.0
    proto = trials[0]["protocol"]
    done = set(store.ls("eval", proto, suffix=".json"))
    partial = set(store.ls("eval", "_progress", proto, suffix=".json"))
    total = 0.0
    for t in trials:
        n = t["name"]
        if f"{n}.json" in done:
            total += 1.0
        elif f"{n}.json" in partial:
            try:
                p = store.read_json(*progress_path(t))
                total += min(1.0, p["epoch"] / max(1, p["epochs"]))
            except (OSError, ValueError, KeyError, TypeError):
                pass  # being replaced as we read it: counted on the next poll
    return total


def load_shard_set(store: Store, gen_seed: int, names: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """-> images uint8 (N, H, W, C), labels (N,) of one distilled set, ordered by sample_id.
    ``names``: the job's shards of that seed (the pipeline passes them: shards of a class the job
    no longer has stay on disk and must not be read); default every shard of the seed."""
    rows = []
    on_disk = store.ls("shards", suffix=".parquet")         # a fresh listing (object stores cache them)
    if names is not None and set(names) - set(on_disk):
        raise RuntimeError(f"shards of generation seed {gen_seed} missing under {store.uri('shards')}: "
                           f"{sorted(set(names) - set(on_disk))[:5]}")
    for name in (on_disk if names is None else names):
        if not name.startswith(f"s{gen_seed:03d}-"):
            continue
        t = store.read_table("shards", name, columns=["sample_id", "label", "image"]).to_pylist()
        rows.extend(t)
    rows.sort(key=lambda r: r["sample_id"])
    if not rows:
        raise RuntimeError(f"no shards for generation seed {gen_seed} under {store.uri('shards')}")
    imgs = np.stack([decode_png(r["image"]) for r in rows])
    return imgs, np.asarray([r["label"] for r in rows], dtype=np.int64)


def random_real_subset(labels: np.ndarray, ipc: int, seed: int) -> np.ndarray:
    """Indices of ``ipc`` random real images per class (seeded; the fair-comparison baseline)."""
    rng = np.random.default_rng([int(seed), 7919])
    out = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        out.append(rng.choice(idx, size=min(ipc, len(idx)), replace=False))
    return np.sort(np.concatenate(out))


def fit(images, size: int | None):
    """uint8 NHWC (or a list of HWC of different sizes) -> uint8 NHWC at ``size`` (resize + centre crop)."""
    if size is None and isinstance(images, np.ndarray):
        return images
    from ..data import fit_batch
    return fit_batch(images, size, "center-crop")


def _resolve(x):
    """An ObjectRef (what the runner ships) -> its value; a plain (images, labels) pair as is."""
    import ray
    return ray.get(x) if isinstance(x, ray.ObjectRef) else x


def _uint8_tensor(images: np.ndarray):
    """uint8 images -> a torch tensor sharing their memory (the object store's read-only buffer)."""
    import warnings

    import torch
    with warnings.catch_warnings():                      # read-only: only ever sliced and copied
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.asarray(images, dtype=np.uint8))


def teacher_dir(job: JobConfig) -> str:
    """The soft-label teacher's directory: ``evaluate.teacher``, else the shipped prior's ``classifier/``."""
    if job.evaluate.teacher:
        return job.evaluate.teacher
    from ..models import resolve_model_path
    return str(Path(resolve_model_path(job.model.generator)[0]) / "classifier")


def load_job_teacher(job: JobConfig, device: str = "cpu", class_names: list[str] | None = None):
    """The frozen teacher of a soft-label job, None for hard-label (clear TeacherError when missing).
    soft-label-imagenet: torchvision's ResNet-18 from the local hub cache; with ``class_names`` (ImageNet
    wnids, the job's label order) its logits are those classes' (RDED's pruned classifier)."""
    if job.evaluate.protocol == "soft-label-imagenet":
        from ..eval.soft_label_imagenet import load_job_classes_teacher
        return load_job_classes_teacher(job.evaluate.teacher, class_names, device)
    if job.evaluate.protocol != "soft-label":
        return None
    from ..eval.soft_label import load_teacher
    return load_teacher(teacher_dir(job), device)


def run_trials(cfg: dict, rank: int = 0, world_size: int = 1, model_wrapper=None) -> list[dict]:
    """Run this worker's share of the trials (trial i goes to worker i mod world_size).

    cfg["test"] and each cfg["baseline_sets"][seed] are (images uint8 NHWC, labels) pairs or
    ObjectRefs to them (the runner's way: no pixels in the Train config)."""
    import torch

    from ..eval import train_and_evaluate
    job = JobConfig.model_validate(cfg["job"])
    store = job_store(job)
    torch.set_num_threads(max(1, int(cfg.get("threads", 1))))
    size = job.evaluate.image_size
    device = "cuda" if torch.cuda.is_available() and job.evaluate.gpus_per_worker > 0 else "cpu"
    test_images, test_labels = _resolve(cfg["test"])
    # uint8 on the trial's device for every trial of this worker (on a CPU: the object store's
    # buffer itself); evaluate() makes each batch float there
    x_test = _uint8_tensor(test_images).to(device)
    y_test = torch.tensor(np.asarray(test_labels)).long().to(device)  # a copy: small, the buffer read-only
    num_classes = int(cfg["num_classes"])
    teacher = load_job_teacher(job, device, cfg.get("class_names"))
    done = []
    for i, trial in enumerate(cfg["trials"]):
        if i % world_size != rank:
            continue
        key = trial_path(trial)
        prev = committed_trial(store, trial, cfg.get("settings", ""))
        if prev is not None:
            done.append(prev)
            continue
        if trial["kind"] == "random-real" and job.method != "random-real":
            imgs, labels = _resolve(cfg["baseline_sets"][str(trial["set_seed"])])
        else:
            imgs, labels = load_shard_set(store, trial["set_seed"], cfg.get("shards", {}).get(str(trial["set_seed"])))
        imgs = fit(imgs, size)
        tc = trial_config(job, trial["student"], int(trial["train_seed"]), device)
        t0 = time.time()
        # uint8 NHWC as it is (no float32 copy of the set on the host): train_and_evaluate moves the
        # pixels to the trial's device once and makes each batch float there
        res = train_and_evaluate(_uint8_tensor(imgs), torch.tensor(np.asarray(labels)).long(), x_test, y_test,
                                 num_classes, tc, teacher=teacher, on_epoch=progress_writer(store, trial))
        res = {k: v for k, v in res.items() if k != "history"} | {"history": res.get("history", [])}
        rec = dict(trial, **res, images=int(len(labels)), wall_seconds=round(time.time() - t0, 2),
                   settings=cfg.get("settings", ""))
        store.write_json(json.loads(json.dumps(rec, default=float)), *key)
        done.append(rec)
    return done


def trial_config(job: JobConfig, student: str, seed: int, device: str):
    """One trial's ``TrainConfig``: the job's ``evaluate`` training settings as they are (one
    set of names, ``params.TrainSettings``), plus the trial's student, seed and device."""
    from ..eval import TrainConfig
    return TrainConfig.build(job.evaluate, student=student, seed=seed, device=device)


def committed_trial(store: Store, trial: dict, settings: str) -> dict | None:
    """A trial's committed record when it was made under its protocol's trial hash ``settings``
    (a record of other settings, or none, is not this trial's: it runs again)."""
    if not store.exists(*trial_path(trial)):
        return None
    try:
        rec = store.read_json(*trial_path(trial))
    except (OSError, ValueError):
        return None                       # torn or unreadable: run it again
    return rec if rec.get("settings", "") == settings else None


def summarise(job: JobConfig, records: list[dict]) -> dict:
    """One protocol's results (``job.evaluate`` is that protocol): per method/baseline and student,
    per-seed final and best accuracy, mean and std, and the ranking block."""
    proto = job.evaluate.protocol
    # the version the trials record they ran under (no torch import: this runs in the driver)
    versions = sorted({str(r["protocol_version"]) for r in records if r.get("protocol_version") is not None})
    out: dict = {"name": job.evaluate.label, "protocol": proto,
                 "protocol_version": versions[0] if len(versions) == 1 else (versions or None),
                 "ipc": job.generate.ipc, "image_size": job.evaluate.image_size,
                 "note": "best_acc is the maximum over periodic test evaluations (optimistic, as papers report); "
                         "final_acc is the last epoch.",
                 "results": {}}
    for r in sorted(records, key=lambda r: r["name"]):
        cell = out["results"].setdefault(r["kind"], {}).setdefault(r["student"], {"runs": []})
        cell["runs"].append({k: r[k] for k in ("set_seed", "train_seed", "final_acc", "best_acc", "epochs")})
    for kind, by_student in out["results"].items():
        for student, cell in by_student.items():
            for m in ("final_acc", "best_acc"):
                v = np.array([run[m] for run in cell["runs"]], dtype=float)
                cell[f"{m}_mean"] = float(v.mean())
                cell[f"{m}_std"] = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    base = out["results"].get("random-real", {})
    for kind, by_student in out["results"].items():
        if kind == "random-real":
            continue
        for student, cell in by_student.items():
            if student in base:
                cell["gain_over_random_real"] = cell["final_acc_mean"] - base[student]["final_acc_mean"]
    from .ranking import ranking     # DD-Ranking's IOR / HLR / score per student (pipeline/ranking.py)
    out["ranking"] = ranking(out, job.data.model_dump(), job.evaluate.image_size)
    return out


def results_document(job: JobConfig, summaries: list[dict]) -> dict:
    """``results.json``: every protocol's summary apart, in the job's order, each with its name and
    version on its numbers. A protocol other than hard-label takes its HLR from the job's hard-label
    protocol where that trained the same network (``ranking.ranking``)."""
    from .ranking import HARD_PROTOCOLS, ranking, same_network
    for s in summaries:
        if s["protocol"] in HARD_PROTOCOLS:
            continue
        # the job's hard-label protocol that trains the same networks (hard-label for soft-label,
        # hard-label-imagenet for soft-label-imagenet)
        hard = next((h for h in summaries if h["protocol"] in HARD_PROTOCOLS
                     and same_network(s["protocol"], h["protocol"])), None)
        if hard is not None:
            s["ranking"] = ranking(s, job.data.model_dump(), s.get("image_size"), hard=hard,
                                   hard_image_size=hard.get("image_size"))
    return {"ipc": job.generate.ipc, "protocols": summaries,
            "note": "one entry per evaluation protocol (evaluate, then evaluate.also), each with its own random-real "
                    "baseline; best_acc is the maximum over periodic test evaluations (optimistic, as papers "
                    "report), final_acc the last epoch."}


def protocol_results(results: dict) -> list[dict]:
    """The per-protocol summaries of a ``results.json``; one written before a job could run several
    protocols (its one summary at the top level) reads as a list of that one."""
    if "protocols" in results:
        return list(results["protocols"])
    if "results" in results:
        return [{"name": results.get("protocol"), **results}]
    return []
