"""``mgd-ray prior evaluate jobs/prior-<dataset>.yaml``: measure a shipped prior.

1. Train the project's real-data classifier on the real train split; score it on the real test
   split; save it beside the prior (``classifier/``) — its features are the feature space of
   the distribution metrics ("FID" on small data is always computed this way).
2. VAE fidelity: the classifier's accuracy on VAE reconstructions of the test split, relative to
   its accuracy on the real test images.
3. Prior fidelity: ``samples`` class-conditional samples (equal per class) with the shipped
   sampler settings (DDPM, learned variance, 50 steps, CFG ``cfg_scale``); the share the
   classifier labels as their intended class, and the FID between the samples and the real test
   split in the classifier's feature space (lower is better; comparable between priors only
   when both are scored with the same classifier).
4. A sample grid PNG (``samples.png``: one row per class).
Everything is written into ``prior.json`` under ``"quality"``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np


def _crop_to(x, size: int):
    """(N, C, S, S) -> centre (N, C, size, size) (undo the encoder's padding)."""
    S = x.shape[-1]
    if S == size:
        return x
    o = (S - size) // 2
    return x[..., o:o + size, o:o + size]


def generate_samples(dit, vae, info, labels, seeds, cfg_scale=4.0, steps=50, batch=100, sampler="ddpm"):
    import torch

    from .method import GaussianDiffusion, dit_model_fn, sample
    from .models import decode_latents
    diff = GaussianDiffusion().respaced(steps)
    out = []
    for i in range(0, len(labels), batch):
        y = torch.as_tensor(labels[i:i + batch]).long()
        z = sample(dit_model_fn(dit), diff, y, seeds[i:i + batch],
                   (info.latent_channels, info.latent_size, info.latent_size), null_label=info.null_label,
                   cfg_scale=cfg_scale, cfg_channels="all",
                   variance_type="learned_range" if info.learned_sigma else "fixed_small", sampler=sampler)
        with torch.no_grad():
            out.append(decode_latents(vae, z, info.scaling_factor))
    return torch.cat(out)


def main_evaluate(job_path: str, prior_dir: str | None, overrides, samples: int = 1000,
                  cfg_scale: float = 4.0, classifier_epochs: int | None = None,
                  classifier_from: str | None = None) -> dict:
    import torch

    from .data import open_source, preprocess
    from .eval.classifier import accuracy, features, predict, save_classifier, train_classifier
    from .eval.metrics import fid
    from .eval.train import to_float_images
    from .method import image_seed
    from .models import PRIORS_DIR, encode_latents, decode_latents, load_generator
    from .pipeline.preview import grid, to_png
    from .pipeline.units import to_uint8
    from .prior import load_prior_job
    torch.set_num_threads(2)
    job = load_prior_job(job_path, overrides)
    pdir = Path(prior_dir) if prior_dir else PRIORS_DIR / job.prior.name
    t0 = time.time()
    src = open_source(job.data)
    tr, te = src.arrays("train"), src.arrays("test")
    native = tr["image"].shape[1]
    xtr, xte = to_float_images(tr["image"]), to_float_images(te["image"])
    ytr, yte = torch.as_tensor(tr["label"]).long(), torch.as_tensor(te["label"]).long()
    C = len(src.classes)
    # small sets need more epochs for enough SGD steps (digits: 11 steps per epoch)
    epochs = classifier_epochs or (6 if len(xtr) > 10000 else 200)
    flip = job.data.source == "fashion-mnist"
    shift = 1 if native <= 16 else 2  # 2 px on 8x8 digits is a quarter of the image
    if classifier_from:  # a classifier trained earlier by train_classifier on the same data: re-scored here
        from .eval.classifier import load_classifier
        clf = load_classifier(classifier_from)
        acc_real = accuracy(clf, xte, yte)
        epochs = clf.record.get("epochs", epochs)
    else:
        clf, acc_real = train_classifier(xtr, ytr, xte, yte, epochs=epochs, seed=0, num_classes=C, flip=flip,
                                         max_shift=shift,
                                         log=lambda m: print(f"[prior-eval] classifier {m}", flush=True))
    save_classifier(clf, pdir / "classifier", extra={"dataset": job.data.source})
    print(f"[prior-eval] real-data classifier: {100 * acc_real:.2f}% on the real test split", flush=True)

    dit, vae, info = load_generator(str(pdir))
    with torch.no_grad():
        rec = []
        xin = torch.from_numpy(preprocess(te["image"], job.prior.image_size, channels=1, mode=job.prior.preprocess))
        for i in range(0, len(xin), 500):
            z = encode_latents(vae, xin[i:i + 500], info.scaling_factor)
            rec.append(decode_latents(vae, z, info.scaling_factor))
        rec = _crop_to(torch.cat(rec), native)
    acc_rec = accuracy(clf, rec, yte)
    per = max(1, samples // C)
    labels = np.repeat(np.arange(C), per)
    seeds = [image_seed(12345, int(c), j) for c in range(C) for j in range(per)]
    t_s = time.time()
    gen = _crop_to(generate_samples(dit, vae, info, labels, seeds, cfg_scale=cfg_scale), native)
    t_s = time.time() - t_s
    pred = predict(clf, gen).numpy()
    agree = float((pred == labels).mean())
    per_class = [float((pred[labels == c] == c).mean()) for c in range(C)]
    sample_fid = fid(features(clf, xte), features(clf, gen))
    imgs = to_uint8(gen.numpy())
    cols = min(per, 10)
    sel = [imgs[c * per + j] for c in range(C) for j in range(cols)]
    scale = max(1, 64 // native)
    (pdir / "samples.png").write_bytes(to_png(grid(sel, C, cols, scale=scale)))
    quality = {
        "classifier_test_acc": acc_real, "classifier_epochs": epochs,
        "vae_reconstruction_acc": acc_rec, "vae_relative_acc": acc_rec / acc_real,
        "samples": int(len(labels)), "sampler": f"DDPM 50 steps, learned variance, CFG {cfg_scale} (all channels)",
        "sample_class_agreement": agree, "per_class_agreement": per_class,
        "sample_fid_classifier_features": sample_fid,
        "sampling_seconds": round(t_s, 1), "seconds": round(time.time() - t0, 1),
        "command": f"mgd-ray prior evaluate {job_path} --cfg-scale {cfg_scale} --samples {samples}"
                   + (f" --classifier-epochs {classifier_epochs}" if classifier_epochs else "")
                   + (" --classifier DIR" if classifier_from else ""), "grid": "samples.png",
    }
    rec_path = pdir / "prior.json"
    record = json.loads(rec_path.read_text()) if rec_path.is_file() else {}
    record["quality"] = quality
    rec_path.write_text(json.dumps(record, indent=1))
    print(f"[prior-eval] VAE reconstructions: {100 * acc_rec:.2f}% ({100 * acc_rec / acc_real:.1f}% of real); "
          f"samples labelled as intended: {100 * agree:.1f}% of {len(labels)} "
          f"(weakest class {100 * min(per_class):.1f}%), FID in classifier features {sample_fid:.3f}", flush=True)
    return quality
