"""The quality benchmark: does it distil? Every number comes from the product itself
(``mgd_ray.distill.run_job``), one job per cell, all cells sharing one latent cache.

    python -m mgd_ray.bench.quality run jobs/fashion-mnist.yaml --part main --ipc 10
    python -m mgd_ray.bench.quality run jobs/fashion-mnist.yaml --part ablation --ipc 10 --seeds 0
    python -m mgd_ray.bench.quality report --root out/bench-quality
    (also: ``mgd-ray bench quality ...``)

A cell = one method (or one ManifoldGD variant, or one ablation setting) at one IPC, evaluated
with the job's hard-label protocol on every generation seed. Cells are resumable: a finished
cell (its ``results.json``) is skipped, an interrupted one resumes from its committed shards and
trials. ``report`` reads whatever cells exist under ``--root`` and writes
``mgd_ray/bench/reports/quality-<dataset>.{json,md}`` plus plots and a side-by-side sample grid.
Nothing in the report is typed in: it is all read from the cells' ``results.json``/``manifest.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import yaml

from . import REPORTS, machine, md_table

log = logging.getLogger("mgd_ray")

# the main table: every method, every ManifoldGD variant (tangent basis x target rule); the
# ManifoldGD cells pin the paper's strict projection (beta 1) whatever the job file ships, except
# manifoldgd-default, which runs the job file's shipped guidance settings
STRICT = ["method=manifoldgd", "guidance.beta=1.0", "guidance.beta_schedule=constant", "guidance.basis=expected",
          "guidance.d=3", "guidance.K=12", "guidance.t_project=null", "coreset.selection=leaves"]
MAIN: list[tuple[str, list[str]]] = [
    ("random-real", ["method=random-real"]),
    ("dit", ["method=dit"]),
    ("mgd3", ["method=mgd3"]),
    ("manifoldgd-expected-leaves", STRICT),
    ("manifoldgd-default", ["method=manifoldgd"]),
    ("herding", ["method=herding"]),
    ("kcenter", ["method=kcenter"]),
    ("manifoldgd-noised-leaves", STRICT + ["guidance.basis=noised"]),
    ("manifoldgd-reference-leaves", STRICT + ["guidance.basis=reference"]),
    ("manifoldgd-expected-levelwise", STRICT + ["coreset.selection=levelwise"]),
    ("manifoldgd-noised-levelwise", STRICT + ["guidance.basis=noised", "coreset.selection=levelwise"]),
    ("manifoldgd-reference-levelwise", STRICT + ["guidance.basis=reference", "coreset.selection=levelwise"]),
]

# variants that keep the mode pull (issue 10 §3), each one change from the paper-strict cell
VARIANTS: list[tuple[str, list[str]]] = [
    ("var-d8", STRICT + ["guidance.d=8", "guidance.K=16"]),
    ("var-d16", STRICT + ["guidance.d=16", "guidance.K=32"]),
    ("var-d32", STRICT + ["guidance.d=32", "guidance.K=64"]),
    ("var-d64", STRICT + ["guidance.d=64", "guidance.K=128"]),
    ("var-ramp", STRICT + ["guidance.beta_schedule=ramp"]),
    ("var-members", STRICT + ["guidance.basis=members", "guidance.d=8", "guidance.K=16"]),
    ("var-window", STRICT + ["guidance.t_project=37"]),
    ("var-members-window", STRICT + ["guidance.basis=members", "guidance.d=8", "guidance.K=16", "guidance.t_project=37"]),
]
# the "variant" field of a report cell (issue 10 §2): ManifoldGD cells by rule, ablations by name
VARIANT_OF = {"manifoldgd-expected-leaves": "paper-strict", "manifoldgd-reference-leaves": "reference",
              "manifoldgd-default": "default"}

# one factor at a time around the base variant (the job file's values are the centre)
ABLATION: list[tuple[str, str, list]] = [
    ("lam_mode", "guidance.lam_mode", [0.03, 0.3]),
    ("beta", "guidance.beta", [0.0, 0.5]),       # 0 = unprojected mode term on the divisive targets
    ("d", "guidance.d", [1]),
    ("K", "guidance.K", [32]),
    ("t_stop", "guidance.t_stop", [10]),         # guidance on for 39 of 50 steps instead of 24
    ("radius", "guidance.radius", [0.3]),
    ("cfg_scale", "sampler.cfg_scale", [1.0, 4.0]),
]


PUBLISHED_FMNIST = {  # evaluation.md, ConvNet-3, top-1 %: IPC 1 / 10 / 50
    "random real subset": (51.4, 73.8, 82.5), "herding": (67.0, 71.1, 71.9), "DC": (70.5, 82.3, 83.6),
    "DSA": (70.6, 84.6, 88.7), "DM": (70.7, 83.5, 88.1), "IDC": (81.0, 86.0, None),
    "FRePo (learned labels)": (75.6, 86.2, 89.6), "KIP -> ConvNet": (73.8, 86.8, 87.8),
}


def base_raw(job_file: str) -> dict:
    return yaml.safe_load(Path(job_file).read_text())


def cell_dir(root: Path, ipc: int, name: str) -> Path:
    return root / f"ipc{ipc}" / name


def cell_overrides(args, name: str, sets: list[str], out: Path) -> list[str]:
    seeds = "[" + ",".join(str(s) for s in args.seeds) + "]"
    ov = [f"generate.ipc={args.ipc}", f"generate.seeds={seeds}", f"output.dir={out}", f"name=q-{name}-ipc{args.ipc}",
          "evaluate.baselines=[]",  # random-real is its own cell: trained once, not once per cell
          f"evaluate.n_evals={args.n_evals}", f"evaluate.train_seeds={args.train_seeds}",
          f"evaluate.num_workers={args.eval_workers}", f"evaluate.cpus_per_worker={args.eval_cpus}"]
    if args.epochs:
        ov.append(f"evaluate.epochs={args.epochs}")
    return ov + list(args.set or []) + sets


def cells_for(part: str, base_cell: str) -> list[tuple[str, list[str]]]:
    if part == "main":
        return MAIN
    if part == "variants":
        return VARIANTS
    if part == "ablation":
        base = dict(MAIN)[base_cell]
        out = [(f"{base_cell}", base)]
        for factor, key, values in ABLATION:
            for v in values:
                out.append((f"abl-{factor}={v}", base + [f"{key}={v}"]))
        return out
    raise SystemExit(f"unknown part {part!r}; expected main, variants or ablation")


def ensure_latents(root: Path, raw: dict, args) -> Path:
    """Encode the training set once (a job with only the encode stage); cells link to it."""
    from ..config import job_from_dict
    from ..distill import run_job
    enc = root / "_encode"
    if not (enc / "latents" / "_COMPLETE.json").is_file():
        run_job(job_from_dict(raw, [f"output.dir={enc}", "name=q-encode", *(args.set or [])]), ["encode"])
    return enc / "latents"


def run_cells(args) -> None:
    from ..config import job_from_dict
    from ..distill import run_job, setup_logging
    setup_logging()
    raw = base_raw(args.job)
    root = Path(args.root).resolve()
    latents = ensure_latents(root, raw, args)
    only = set(args.only.split(",")) if args.only else None
    for name, sets in cells_for(args.part, args.base):
        if only and name not in only:
            continue
        out = cell_dir(root, args.ipc, name)
        if (out / "results.json").is_file():
            log.info(f"bench quality: {name} ipc {args.ipc} already done")
            continue
        out.mkdir(parents=True, exist_ok=True)
        if not (out / "latents").exists():
            os.symlink(latents, out / "latents", target_is_directory=True)
        t0 = time.time()
        log.info(f"bench quality: cell {name} ipc {args.ipc} -> {out}")
        run_job(job_from_dict(raw, cell_overrides(args, name, sets, out)))
        log.info(f"bench quality: cell {name} done in {time.time() - t0:.0f}s")


# ---- diagnosis: where is accuracy lost? ---------------------------------------------------
DIAG = {
    "diag-vae-real": "the random-real cell's images sent through the prior's VAE (encode -> decode): "
                     "what the VAE alone costs",
    "diag-decoded-targets": "the ManifoldGD coreset targets (latent cluster means) decoded directly, no diffusion: "
                            "what the guidance pulls toward",
}


def _diag_images(name: str, root: Path, ipc: int, seed: int, vae, info):
    import pyarrow.parquet as pq
    import torch

    from ..eval.train import pad_to, to_float_images
    from ..models import decode_latents, encode_latents
    from ..pipeline.evaluate import load_shard_set
    from ..pipeline.store import Store
    from ..pipeline.units import to_uint8
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


def run_diagnose(args) -> None:
    """Train the same student on the diagnostic sets (same recipe as the cells), one Ray task per seed."""
    import ray
    import torch

    from ..config import JobConfig
    from ..data import open_source
    from ..distill import setup_logging
    from ..models import load_generator
    from ..pipeline.metrics import compute_distribution
    from ..pipeline.store import Store
    setup_logging()
    root = Path(args.root).resolve()
    src_cell = cell_dir(root, args.ipc, "random-real")
    if not (src_cell / "results.json").is_file():
        raise SystemExit(f"diagnose needs the finished random-real cell at {src_cell}")
    job = JobConfig.model_validate(yaml.safe_load((src_cell / "config.yaml").read_text()))
    torch.set_num_threads(1)
    _dit, vae, info = load_generator(job.model.generator, job.model.vae, device="cpu")
    source = open_source(job.data)
    test = source.arrays("test")
    from ..pipeline.runner import init_ray
    init_ray(job)  # the product's own local, loopback-only Ray

    @ray.remote(num_cpus=0.5)
    def train(imgs, labels, seed):
        import torch as T

        from ..eval import TrainConfig, train_and_evaluate
        from ..eval.train import to_float_images
        T.set_num_threads(1)
        ev = job.evaluate
        tc = TrainConfig(student=ev.students[0], epochs=ev.epochs, batch_size=ev.batch_size, n_evals=ev.n_evals,
                         augment=ev.augment, flip=ev.flip, seed=0, num_threads=1)
        r = train_and_evaluate(to_float_images(imgs), T.as_tensor(labels).long(), to_float_images(test["image"]),
                               T.as_tensor(test["label"]).long(), len(source.classes), tc)
        return dict(set_seed=seed, train_seed=0, final_acc=r["final_acc"], best_acc=r["best_acc"], epochs=r["epochs"])

    for name in (args.only.split(",") if args.only else DIAG):
        out = cell_dir(root, args.ipc, name)
        if (out / "results.json").is_file():
            continue
        t0 = time.time()
        sets = {s: _diag_images(name, root, args.ipc, s, vae, info) for s in args.seeds}
        runs = ray.get([train.remote(im, lb, s) for s, (im, lb) in sets.items()])
        cell = {"runs": runs}
        for m in ("final_acc", "best_acc"):
            v = np.array([r[m] for r in runs], dtype=float)
            cell[f"{m}_mean"], cell[f"{m}_std"] = float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0
        dist = compute_distribution(job, Store(str(src_cell)), source, info, sets)  # real features cached
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps({"ipc": args.ipc, "diagnostic": DIAG[name],
                                                      "results": {name: {job.evaluate.students[0]: cell}},
                                                      "distribution": dist}, indent=1, default=float))
        (out / "manifest.json").write_text(json.dumps({"timings": {"diagnose": round(time.time() - t0, 1)}}))
        (out / "config.yaml").write_text((src_cell / "config.yaml").read_text())
        log.info(f"bench quality: {name}: final {100 * cell['final_acc_mean']:.1f} +- {100 * cell['final_acc_std']:.1f}%")


# ---- report ----------------------------------------------------------------------------------
DIST_KEYS = ["fid", "mean_l2", "mmd2_rbf_unbiased", "diversity", "representativeness", "recall", "coverage",
             "prior_fidelity"]


def cell_variant(name: str, method: str) -> str:
    """paper-strict | reference | default | the ablation's or variant's name; "" for non-ManifoldGD cells."""
    if name.startswith(("abl-", "var-")):
        return name[4:]
    if method != "manifoldgd":
        return ""
    return VARIANT_OF.get(name, name.removeprefix("manifoldgd-"))


def read_cell(d: Path) -> dict | None:
    if not (d / "results.json").is_file():
        return None
    res = json.loads((d / "results.json").read_text())
    man = json.loads((d / "manifest.json").read_text())
    cfg = yaml.safe_load((d / "config.yaml").read_text())
    kind, by_student = next(iter(res["results"].items()))
    student, cell = next(iter(by_student.items()))
    dist = res.get("distribution", {})
    row = {"cell": d.name, "dir": f"{d.parent.name}/{d.name}",  # relative to the root: no machine path in reports
           "ipc": res["ipc"], "method": kind, "student": student,
           "basis": cfg["guidance"]["basis"] if kind == "manifoldgd" else "",
           "selection": cfg["coreset"]["selection"] if kind == "manifoldgd" else "",
           "variant": cell_variant(d.name, kind), "protocol": res.get("protocol", "hard-label"),
           "final_mean": 100 * cell["final_acc_mean"], "final_std": 100 * cell["final_acc_std"],
           "best_mean": 100 * cell["best_acc_mean"], "best_std": 100 * cell["best_acc_std"],
           "runs": len(cell["runs"]), "seeds": sorted({r["set_seed"] for r in cell["runs"]}),
           "run_records": cell["runs"], "dist_sets": dist.get("sets", {}),
           "epochs": cell["runs"][0]["epochs"], "n_evals": cfg["evaluate"]["n_evals"],
           "timings": man.get("timings", {}), "config": {k: cfg[k] for k in ("guidance", "sampler", "coreset")}}
    for k in DIST_KEYS:
        v = dist.get("mean", {}).get(k)
        row[k] = float(v) if v is not None else float("nan")
    return row


def collect(root: Path) -> list[dict]:
    rows = []
    for ipc_dir in sorted(root.glob("ipc*")):
        for d in sorted(ipc_dir.iterdir()):
            r = read_cell(d)
            if r:
                rows.append(r)
    return rows


def _pm(m, s):
    return f"{m:.1f} ± {s:.1f}"


def seed_finals(row: dict) -> dict[int, float]:
    """{generation seed: final accuracy %} of a cell (mean over its training seeds)."""
    out: dict[int, list] = {}
    for r in row["run_records"]:
        out.setdefault(int(r["set_seed"]), []).append(100 * r["final_acc"])
    return {k: float(np.mean(v)) for k, v in out.items()}


def paired_gain(row: dict, base: dict) -> float:
    """Final-accuracy gain over random-real on the SAME generation seeds (a 2-seed cell is compared
    with random-real's seeds 0 and 1, not with its 3-seed mean)."""
    a, b = seed_finals(row), seed_finals(base)
    common = sorted(set(a) & set(b))
    if not common:
        return float("nan")
    return float(np.mean([a[s] for s in common]) - np.mean([b[s] for s in common]))


def ablation_centre(rows: list[dict], abl: list[dict], base: str = "manifoldgd-expected-leaves") -> dict | None:
    """The ablation's centre: the base main-table cell restricted to the ablation's seeds (same seeds,
    same everything else), from its per-run records."""
    seeds = set(abl[0]["seeds"])
    c = next((r for r in rows if r["ipc"] == abl[0]["ipc"] and r["cell"] == base), None)
    if c is None:
        return None
    runs = [r for r in c["run_records"] if r["set_seed"] in seeds]
    if not runs:
        return None
    f = np.array([100 * r["final_acc"] for r in runs])
    b = np.array([100 * r["best_acc"] for r in runs])
    dist = c["dist_sets"]
    out = dict(c, cell=f"{base} (seeds {sorted(seeds)})", final_mean=float(f.mean()), best_mean=float(b.mean()),
               final_std=float(f.std(ddof=1)) if len(f) > 1 else 0.0,
               best_std=float(b.std(ddof=1)) if len(b) > 1 else 0.0, seeds=sorted(seeds))
    for k in DIST_KEYS:
        v = [dist[str(s)][k] for s in seeds if str(s) in dist and k in dist[str(s)]]
        out[k] = float(np.mean(v)) if v else float("nan")
    return out


def make_report(root: Path, dataset: str, out_dir: Path | None = None) -> tuple[Path, Path]:
    out_dir = Path(out_dir) if out_dir else REPORTS
    rows = collect(root)
    if not rows:
        raise SystemExit(f"no finished cells under {root}; run `python -m mgd_ray.bench.quality run ...` first")
    base = {r["ipc"]: r for r in rows if r["cell"] == "random-real"}
    for r in rows:
        b = base.get(r["ipc"])
        r["gain_vs_random"] = paired_gain(r, b) if b else float("nan")
    main_names = [n for n, _ in MAIN]
    md = [f"# Quality benchmark: {dataset}", "",
          "Produced by `python -m mgd_ray.bench.quality report` from the cells under "
          f"`{root.name}/` (each cell a real `mgd_ray.distill` job). Hard-label protocol, ConvNet-3 "
          "(width 128, instance norm), every number the mean ± std over generation seeds "
          "(one training seed each unless `runs` says more).", ""]
    ipcs = sorted({r["ipc"] for r in rows})
    for ipc in ipcs:
        main = [r for r in rows if r["ipc"] == ipc and r["cell"] in main_names]
        main.sort(key=lambda r: main_names.index(r["cell"]))
        if not main:
            continue
        ep = sorted({r["epochs"] for r in main})
        md += [f"## IPC {ipc}: methods (epochs {ep}, n_evals {main[0]['n_evals']})", ""]
        t = [{"cell": r["cell"], "final %": _pm(r["final_mean"], r["final_std"]),
              "best %": _pm(r["best_mean"], r["best_std"]), "gain vs random-real (final, same seeds)": f"{r['gain_vs_random']:+.1f}",
              "seeds": len(r["seeds"]), **{k: r[k] for k in DIST_KEYS},
              "minutes": round(sum(v for k, v in r["timings"].items() if k != "total_last_run") / 60, 1)}
             for r in main]
        md += [md_table(t, list(t[0].keys())), ""]
    diag = [r for r in rows if r["cell"].startswith("diag-")]
    if diag:
        md += ["## Diagnostics: where is accuracy lost?", ""]
        t = [{"set": r["cell"], "what": DIAG.get(r["cell"], ""), "seeds": r["seeds"],
              "final %": _pm(r["final_mean"], r["final_std"]),
              "vs random-real, same seeds": f"{r['gain_vs_random']:+.1f}", "fid": r["fid"],
              "prior_fidelity": r["prior_fidelity"]} for r in diag]
        md += [md_table(t, list(t[0].keys())), ""]
    abl = [r for r in rows if r["cell"].startswith("abl-")]
    if abl:
        ipc = abl[0]["ipc"]
        centre = ablation_centre(rows, abl)
        md += [f"## Ablation at IPC {ipc} (seeds {abl[0]['seeds']}, n_evals {abl[0]['n_evals']}: best = final), "
               "one factor at a time around the centre", ""]
        t = []
        if centre:
            t.append({"setting": f"centre: {centre['cell']}", "final %": _pm(centre["final_mean"], centre["final_std"]),
                      "best %": _pm(centre["best_mean"], centre["best_std"]),
                      "fid": centre["fid"], "coverage": centre["coverage"], "prior_fidelity": centre["prior_fidelity"]})
        for r in sorted(abl, key=lambda r: r["cell"]):
            t.append({"setting": r["cell"][4:], "final %": _pm(r["final_mean"], r["final_std"]),
                      "best %": _pm(r["best_mean"], r["best_std"]), "fid": r["fid"], "coverage": r["coverage"],
                      "prior_fidelity": r["prior_fidelity"]})
        md += [md_table(t, list(t[0].keys())), ""]
    md += ["## Published Fashion-MNIST numbers (ConvNet-3, top-1 %; evaluation.md)", "",
           "These methods optimise pixels with many training runs of the student; ours trains nothing "
           "(a frozen prior is only guided).", "",
           md_table([{"method": k, "IPC 1": v[0], "IPC 10": v[1], "IPC 50": v[2] if v[2] is not None else "—"}
                     for k, v in PUBLISHED_FMNIST.items()], ["method", "IPC 1", "IPC 10", "IPC 50"]), ""]
    plots = plot(rows, root, dataset, out_dir)
    md += ["## Figures", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    data = {"dataset": dataset, "root": root.name, "machine": machine(), "cells": rows,
            "published": PUBLISHED_FMNIST}
    from . import write_report
    return write_report(f"quality-{dataset}", data, "\n".join(md), out_dir)


def plot(rows: list[dict], root: Path, dataset: str, out_dir: Path) -> list[Path]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    out = []
    main_names = [n for n, _ in MAIN]
    by = {}
    for r in rows:
        if r["cell"] in main_names:
            by.setdefault(r["cell"], []).append(r)
    if by:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, rs in by.items():
            rs.sort(key=lambda r: r["ipc"])
            ax.errorbar([r["ipc"] for r in rs], [r["final_mean"] for r in rs], yerr=[r["final_std"] for r in rs],
                        marker="o", capsize=3, label=name)
        ax.set_xscale("log")
        ax.set_xlabel("images per class")
        ax.set_ylabel("final test accuracy (%)")
        ax.set_title(f"{dataset}: ConvNet-3, hard-label")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        p = out_dir / f"quality-{dataset}-acc-vs-ipc.png"
        fig.tight_layout()
        fig.savefig(p, dpi=110)
        plt.close(fig)
        out.append(p)
    abl = [r for r in rows if r["cell"].startswith("abl-")]
    if abl:
        ran = {r["cell"].split("=")[0][4:] for r in abl}
        factors = [a for a in ABLATION if a[0] in ran]   # factors with no finished cell are not drawn
        fig, axes = plt.subplots(1, len(factors), figsize=(2.6 * len(factors), 3), sharey=True, squeeze=False)
        axes = axes[0]
        centre = ablation_centre(rows, abl)
        for ax, (factor, key, _vals) in zip(axes, factors):
            pts = [(float(r["cell"].split("=", 1)[1]), r["final_mean"]) for r in abl
                   if r["cell"].split("=")[0] == f"abl-{factor}"]
            if centre:
                sec, k = key.split(".")
                pts.append((float(centre["config"][sec][k]), centre["final_mean"]))
            pts.sort()
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o")
            ax.set_title(factor)
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("final acc (%)")
        fig.tight_layout()
        p = out_dir / f"quality-{dataset}-ablation.png"
        fig.savefig(p, dpi=100)
        plt.close(fig)
        out.append(p)
    grid = sample_grid(root, rows, plt, dataset, out_dir)
    if grid:
        out.append(grid)
    return out


def sample_grid(root: Path, rows: list[dict], plt, dataset: str, out_dir: Path) -> Path | None:
    """Side by side: per main-table method at the middle IPC, the first image of each class (seed 0)."""
    import pyarrow.parquet as pq

    from ..pipeline.units import decode_png
    main_names = [n for n, _ in MAIN]
    ipcs = sorted({r["ipc"] for r in rows if r["cell"] in main_names})
    if not ipcs:
        return None
    ipc = 10 if 10 in ipcs else ipcs[0]
    cells = [n for n in main_names if (cell_dir(root, ipc, n) / "shards").is_dir()]
    if not cells:
        return None
    per = 3
    fig, axes = plt.subplots(len(cells), 10 * per // per, figsize=(10 * 0.9, len(cells) * 0.95), squeeze=False)
    for i, name in enumerate(cells):
        imgs = {}
        for f in sorted((cell_dir(root, ipc, name) / "shards").glob("s000-*.parquet")):
            for r in pq.read_table(f, columns=["label", "image"]).to_pylist():
                imgs.setdefault(r["label"], r["image"])
        for c in range(10):
            ax = axes[i][c]
            ax.axis("off")
            if c in imgs:
                a = decode_png(imgs[c])
                ax.imshow(a.squeeze(-1) if a.shape[-1] == 1 else a, cmap="gray")
        axes[i][0].text(-2, 14, name, ha="right", va="center", fontsize=7)
    fig.subplots_adjust(left=0.25, wspace=0.05, hspace=0.05)
    p = out_dir / f"quality-{dataset}-samples-ipc{ipc}.png"
    fig.savefig(p, dpi=100)
    plt.close(fig)
    return p


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m mgd_ray.bench.quality", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run (or resume) the cells of one part at one IPC")
    r.add_argument("job", help="the base job file, e.g. jobs/fashion-mnist.yaml")
    r.add_argument("--part", default="main", choices=["main", "variants", "ablation"])
    r.add_argument("--ipc", type=int, default=10)
    r.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
    r.add_argument("--epochs", type=int, default=None, help="student epochs (default: the protocol's rule)")
    r.add_argument("--n-evals", type=int, default=100)
    r.add_argument("--train-seeds", type=int, default=1)
    r.add_argument("--eval-workers", type=int, default=3)
    r.add_argument("--eval-cpus", type=float, default=0.5)
    r.add_argument("--base", default="manifoldgd-expected-leaves", help="ablation centre (a main-table cell)")
    r.add_argument("--only", default=None, help="comma-separated cell names")
    r.add_argument("--root", default="out/bench-quality")
    r.add_argument("--set", action="append", help="extra job override for every cell (key=value)")
    g = sub.add_parser("diagnose", help="diagnostic sets (VAE round trip of real images; decoded targets)")
    g.add_argument("--ipc", type=int, default=10)
    g.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
    g.add_argument("--only", default=None)
    g.add_argument("--root", default="out/bench-quality")
    p = sub.add_parser("report", help="write the report from the finished cells")
    p.add_argument("--root", default="out/bench-quality")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--out-dir", default=None, help="default: mgd_ray/bench/reports")
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.cmd == "run":
        run_cells(args)
    elif args.cmd == "diagnose":
        run_diagnose(args)
    else:
        pj, pm = make_report(Path(args.root).resolve(), args.dataset, args.out_dir and Path(args.out_dir))
        print(pm.read_text())
        print(f"wrote {pj} and {pm}")


if __name__ == "__main__":
    main()
