"""Distribution metrics of each distilled set. Feature space (``evaluate.features``,
``mgd_ray.inception.uses_inception``): the ImageNet family uses the standard Inception-v3 FID network
(torch-fidelity, the weights ``mgd-ray models fetch`` put in place: ``mgd_ray/inception.py``); small data
the project's real-data classifier (shipped beside the prior as ``classifier/``, or ``evaluate.classifier``)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..config import JobConfig
from .evaluate import load_shard_set

log = logging.getLogger("mgd_ray")


def classifier_dir(job: JobConfig, info) -> Path | None:
    if job.evaluate.classifier:
        return Path(job.evaluate.classifier)
    p = Path(info.path) / "classifier"
    return p if p.is_dir() else None


def compute_distribution(job: JobConfig, store, source, info, sets: dict | None = None,
                         shards: dict | None = None) -> dict:
    """Metrics of each set ``{seed: (uint8 images, labels)}``; by default the job's distilled sets
    read from ``store`` (``shards``: seed -> the job's shard names of it). Real-set features are
    cached beside ``store``'s latents."""
    import torch

    from ..eval import distribution_report
    from ..eval.classifier import features, load_classifier, predict
    from ..eval.train import to_float_images
    from ..inception import uses_inception
    if uses_inception(job):
        return compute_inception(job, store, source, info, sets=sets, shards=shards)
    d = classifier_dir(job, info)
    if d is None:
        log.info("metrics: no real-data classifier beside the prior (train one with `mgd-ray prior evaluate`); skipped")
        return {"skipped": "no real-data classifier"}
    clf = load_classifier(d)
    f_real = _real_features(store, d, clf, source)
    acc = clf.record.get("test_acc")
    where = job.evaluate.classifier or f"shipped beside {info.source} ({d.name}/)"
    out = {"feature_space": f"real-data classifier {where}" + (f" ({100 * acc:.1f} % on the real test set)"
                                                                if isinstance(acc, (int, float)) else ""),
           "sets": {}}
    for s in (sets.keys() if sets is not None else job.generate.seeds):
        imgs, labels = sets[s] if sets is not None else load_shard_set(store, s, (shards or {}).get(s))
        x = to_float_images(imgs)
        with torch.no_grad():
            f_syn, pred = features(clf, x), predict(clf, x)
        out["sets"][str(s)] = distribution_report(f_real, f_syn.numpy(), pred_syn=pred.numpy(),
                                                  labels_syn=labels, num_classes=len(source.classes), seed=s)
    keys = [k for k, v in next(iter(out["sets"].values())).items() if isinstance(v, float)]
    out["mean"] = {k: float(np.nanmean([v[k] for v in out["sets"].values()])) for k in keys}
    return out


def _real_features(store, clf_dir: Path, clf, source) -> np.ndarray:
    """Classifier features of the real training set, cached beside the latents, keyed by the
    classifier's weights and the source's fingerprint of the selected train rows (the encode stage
    also removes the caches whenever it encodes a class)."""
    import hashlib
    import io

    import torch

    from ..eval.classifier import WEIGHTS_NAME, features
    from ..eval.train import to_float_images
    key = hashlib.sha256((clf_dir / WEIGHTS_NAME).read_bytes()).hexdigest()[:16] + "_" + source.fingerprint("train")
    name = f"_real_features_{key}.npy"
    if store.exists("latents", name):
        return np.load(io.BytesIO(store.read_bytes("latents", name)), allow_pickle=False)
    with torch.no_grad():
        f = features(clf, to_float_images(source.arrays("train")["image"])).numpy().astype(np.float32)
    buf = io.BytesIO()
    np.save(buf, f, allow_pickle=False)
    store.write_bytes(buf.getvalue(), "latents", name)
    return f


# ---- the ImageNet family: Inception-v3 FID features -------------------------------------------------------
REAL_MAX = 10_000          # real train images in the reference set (distribution_report's max_real)
CHUNK = 500                # images decoded and featurised at a time (bounded memory at ImageNet scale)


def real_subset(labels: np.ndarray, num_classes: int, total: int = REAL_MAX, seed: int = 0) -> np.ndarray:
    """Positions of the real reference set: ``total // num_classes`` (at least 1) seeded random train images
    of each class (all of a class that has fewer), sorted. ImageNet-1K: 10 per class = 10,000 images."""
    per = max(1, total // max(1, num_classes))
    rng = np.random.default_rng([seed, 2015])
    out = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        out.append(idx if len(idx) <= per else rng.choice(idx, per, replace=False))
    return np.sort(np.concatenate(out)) if out else np.zeros(0, np.int64)


def _device(job: JobConfig) -> str:
    import torch
    return "cuda" if job.evaluate.gpus_per_worker > 0 and torch.cuda.is_available() else "cpu"


def compute_inception(job: JobConfig, store, source, info, sets: dict | None = None,
                      shards: dict | None = None) -> dict:
    """``compute_distribution`` in the Inception-v3 FID features (2048-d pool, torch-fidelity's network, which
    resizes the uint8 images to 299 px as the TF graph does). Reference set: :func:`real_subset` of the train
    split at the generator's resolution and the encoder's preprocessing (what the distilled images are
    compared with), its features cached beside the latents. Prior fidelity only where a real-data classifier
    of the job's classes exists (the Inception network's 1008 outputs are not the job's classes)."""
    from ..eval import distribution_report
    from ..eval.classifier import WEIGHTS_NAME, load_classifier
    from ..eval.inception import library_version, load_inception
    from .. import inception as spec
    device = _device(job)
    net = load_inception(device=device)
    w = net.weights
    batch = 100 if device == "cuda" else 25
    f_real, n_per = _real_inception(store, source, job, info, net, batch)
    clf = None
    d = classifier_dir(job, info)
    if d is not None and (d / WEIGHTS_NAME).is_file():
        clf = load_classifier(d)
    ver = library_version()
    sha = w["sha256"]
    net_name = f"{spec.LIBRARY} {ver} {spec.EXTRACTOR}, 2048-d pool features, 299 px"
    space = (f"Inception-v3 FID network ({net_name}; TF 2015-12-05 weights {spec.FILE_NAME}, sha256 {sha[:16]})"
             if w["standard"] else
             f"Inception-v3 architecture with STAND-IN random weights ({net_name}; sha256 {sha[:16]}): not the "
             f"FID network, not comparable with published FID")
    out = {"feature_space": space,
           "features": {"network": "inception-v3", "library": f"{spec.LIBRARY}=={ver}", "layer": spec.FEATURE,
                        "weights": Path(w["path"]).name, "weights_sha256": sha, "standard": w["standard"],
                        "real_images": int(len(f_real)), "real_per_class": n_per, "device": device},
           "sets": {}}
    for s in (sets.keys() if sets is not None else job.generate.seeds):
        f_syn, labels, pred = _set_features(store, s, sets, shards, net, clf, batch, job.generate.targets_per_unit)
        out["sets"][str(s)] = distribution_report(f_real, f_syn, pred_syn=pred, labels_syn=labels,
                                                  num_classes=len(source.classes), seed=s)
    keys = [k for k, v in next(iter(out["sets"].values())).items() if isinstance(v, float)]
    out["mean"] = {k: float(np.nanmean([v[k] for v in out["sets"].values()])) for k in keys}
    return out


def _chunks(names: list, per_shard: int = 1):
    """Shard names in groups of about CHUNK images (a shard holds one unit: ``per_shard`` images)."""
    step = max(1, CHUNK // max(1, per_shard))
    for i in range(0, len(names), step):
        yield names[i:i + step]


def _set_features(store, s, sets, shards, net, clf, batch, per_shard):
    """(features, labels, classifier predictions or None) of one distilled set, shard by shard."""
    import torch

    from ..eval.inception import inception_features
    if sets is not None:
        parts = [sets[s]]
    else:
        from .evaluate import load_shard_set
        names = (shards or {}).get(s) or [n for n in store.ls("shards", suffix=".parquet")
                                          if n.startswith(f"s{s:03d}-")]
        parts = (load_shard_set(store, s, chunk) for chunk in _chunks(sorted(names), per_shard))
    feats, labels, preds = [], [], []
    for imgs, lab in parts:
        feats.append(inception_features(net, imgs, batch))
        labels.append(np.asarray(lab, np.int64))
        if clf is not None:
            from ..eval.classifier import predict
            from ..eval.train import to_float_images
            with torch.no_grad():
                preds.append(predict(clf, to_float_images(imgs)).numpy())
    return (np.concatenate(feats), np.concatenate(labels), np.concatenate(preds) if clf is not None else None)


def _real_inception(store, source, job: JobConfig, info, net, batch) -> tuple[np.ndarray, int]:
    """Inception features of the real reference set, cached beside the latents, keyed by the weights'
    sha256, the source's fingerprint of the train rows and the reference set's geometry and sampling."""
    import io

    from ..eval.inception import inception_features
    size = job.encode.image_size or info.image_size
    mode = job.encode.preprocess
    _, _, labels = source.select("train")
    n_cls = len(source.classes)
    idx = real_subset(labels, n_cls)
    n_per = max(1, REAL_MAX // max(1, n_cls))
    key = (f"{net.weights['sha256'][:16]}_{source.fingerprint('train')}_{size}{mode}_{n_per}pc")
    name = f"_real_features_inception_{key}.npy"
    if store.exists("latents", name):
        return np.load(io.BytesIO(store.read_bytes("latents", name)), allow_pickle=False), n_per
    f = np.concatenate([inception_features(net, source.arrays_at("train", idx[i:i + CHUNK], size, mode)["image"], batch)
                        for i in range(0, len(idx), CHUNK)] or [np.zeros((0, 2048), np.float32)])
    buf = io.BytesIO()
    np.save(buf, f.astype(np.float32), allow_pickle=False)
    store.write_bytes(buf.getvalue(), "latents", name)
    return f, n_per
