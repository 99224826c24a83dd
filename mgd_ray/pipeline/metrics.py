"""Distribution metrics of each distilled set, in the features of the project's real-data
classifier (shipped beside the prior as ``classifier/``, or ``evaluate.classifier``)."""

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
