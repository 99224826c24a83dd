"""The quality benchmark's diagnostics: where is accuracy lost?

Each diagnostic set (e.g. the random-real images sent through the prior's VAE) is written as the
shards of a diagnostic cell and scored by the product's own evaluate stage (``pipeline.stage.EVALUATE``:
the same Ray Train trials, recipe and ``results.json`` layout as every other cell), with the
random-real cell's evaluation settings.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import yaml

from benchmarks.quality.cells import cell_dir

log = logging.getLogger("mgd_ray")

DIAG = {
    "diag-vae-real": "the random-real cell's images sent through the prior's VAE (encode -> decode): "
                     "what the VAE alone costs",
    "diag-decoded-targets": "the ManifoldGD coreset targets (latent cluster means) decoded directly, no diffusion: "
                            "what the guidance pulls toward",
}


def _diag_images(name: str, root: Path, ipc: int, seed: int, vae, info):
    import pyarrow.parquet as pq
    import torch

    from mgd_ray.eval.train import pad_to, to_float_images
    from mgd_ray.models import decode_latents, encode_latents
    from mgd_ray.pipeline.evaluate import load_shard_set
    from mgd_ray.pipeline.store import Store
    from mgd_ray.pipeline.units import to_uint8
    if name == "diag-vae-real":
        imgs, labels = load_shard_set(Store(str(cell_dir(root, ipc, "random-real"))), seed)
        x = to_float_images(imgs)
        h = x.shape[-1]
        with torch.no_grad():
            z = encode_latents(vae, pad_to(x, info.image_size), info.scaling_factor)
            y = decode_latents(vae, z, info.scaling_factor)
    else:
        t = pq.read_table(cell_dir(root, ipc, "manifoldgd-expected-leaves") / "coreset" / "targets.parquet").to_pylist()
        t = sorted((r for r in t if r["gen_seed"] == seed), key=lambda r: (r["label"], r["index"]))
        labels = np.asarray([r["label"] for r in t])
        c = vae.config.latent_channels
        side = int(round((len(t[0]["target"]) / c) ** 0.5))
        z = torch.tensor(np.stack([r["target"] for r in t]), dtype=torch.float32).view(len(t), c, side, side)
        h = 28
        with torch.no_grad():
            y = decode_latents(vae, z, info.scaling_factor)
    off = (y.shape[-1] - h) // 2
    return to_uint8(y[:, :, off:off + h, off:off + h].numpy()), labels


def _write_set(store, name: str, seed: int, imgs: np.ndarray, labels: np.ndarray, class_names: list[str]):
    """One diagnostic set -> one shard of generation seed ``seed`` (the layout the evaluation reads)."""
    from mgd_ray.pipeline.units import png_bytes, sample_id, shard_table
    rows = [dict(sample_id=sample_id(seed, int(lab), i), label=int(lab), class_name=class_names[int(lab)],
                 target_id=f"{name}-{i}", seed=i, gen_seed=seed, method=name, image=png_bytes(img),
                 height=img.shape[0], width=img.shape[1], channels=img.shape[2])
            for i, (img, lab) in enumerate(zip(imgs, labels))]
    store.write_table(shard_table(rows, class_names), "shards", f"s{seed:03d}-{name}.parquet")


def run_diagnose(args) -> None:
    """Score each diagnostic set with the product's evaluation, then its distribution metrics."""
    import torch

    from mgd_ray.config import job_from_dict
    from mgd_ray.data import open_source
    from mgd_ray.pipeline.driver import setup_logging
    from mgd_ray.models import load_generator
    from mgd_ray.pipeline import runner
    from mgd_ray.pipeline.metrics import compute_distribution
    from mgd_ray.pipeline.stage import EVALUATE, Context, stage_keys
    from mgd_ray.pipeline.store import Store
    setup_logging()
    root = Path(args.root).resolve()
    src_cell = cell_dir(root, args.ipc, "random-real")
    if not (src_cell / "results.json").is_file():
        raise SystemExit(f"diagnose needs the finished random-real cell at {src_cell}")
    raw = yaml.safe_load((src_cell / "config.yaml").read_text())
    seeds = "[" + ",".join(str(s) for s in args.seeds) + "]"
    _dit, vae, info = load_generator(raw["model"]["generator"], raw["model"].get("vae"), device="cpu")
    for name in (args.only.split(",") if args.only else DIAG):
        out = cell_dir(root, args.ipc, name)
        if (out / "results.json").is_file():
            continue
        t0 = time.time()
        # the random-real cell's job, scoring this cell's shards: method random-real reads them as its sets
        job = job_from_dict(raw, [f"output.dir={out}", f"name=q-{name}-ipc{args.ipc}", f"generate.seeds={seeds}",
                                  "evaluate.baselines=[]", "evaluate.train_seeds=1", "evaluate.metrics=false"])
        source = open_source(job.data)
        store = Store(str(out))
        store.makedirs()
        with torch.no_grad():
            sets = {s: _diag_images(name, root, args.ipc, s, vae, info) for s in args.seeds}
        for s, (imgs, labels) in sets.items():
            _write_set(store, name, s, imgs, labels, list(source.classes.names))
        runner.init_ray(job)
        EVALUATE.run(Context(job=job, store=store, source=source, info=info, keys=stage_keys(job, info)))
        results = json.loads((out / "results.json").read_text())
        pr = results["protocols"][0]                  # the cell's one protocol
        pr["results"] = {name: pr["results"][job.method]}
        results["diagnostic"] = DIAG[name]
        results["distribution"] = compute_distribution(job, Store(str(src_cell)), source, info, sets)  # cached
        (out / "results.json").write_text(json.dumps(results, indent=1, default=float))
        (out / "manifest.json").write_text(json.dumps({"timings": {"diagnose": round(time.time() - t0, 1)}}))
        (out / "config.yaml").write_text(yaml.safe_dump(job.model_dump(mode="json"), sort_keys=False))
        cell = next(iter(pr["results"][name].values()))
        log.info(f"bench quality: {name}: final {100 * cell['final_acc_mean']:.1f} +- "
                 f"{100 * cell['final_acc_std']:.1f}%")
