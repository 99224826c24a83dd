"""The quality benchmark's report: read the finished cells, compute the paired gains and the
ablation centre, and write ``benchmarks/reports/quality-<dataset>.{json,md}``. Nothing in the report
is typed in: it is all read from the cells' ``results.json``/``manifest.json``/``config.yaml``."""

from __future__ import annotations

from pathlib import Path

from benchmarks import REPORTS, machine, md_table, relative_to_repo, write_report
from benchmarks.quality.cells import MAIN
from benchmarks.quality.diagnose import DIAG
from benchmarks.quality.maths import DIST_KEYS, ablation_centre, collect, paired_gain, seed_gains
from benchmarks.quality.plots import plot

PUBLISHED_FMNIST = {  # evaluation.md, ConvNet-3, top-1 %: IPC 1 / 10 / 50
    "random real subset": (51.4, 73.8, 82.5), "herding": (67.0, 71.1, 71.9), "DC": (70.5, 82.3, 83.6),
    "DSA": (70.6, 84.6, 88.7), "DM": (70.7, 83.5, 88.1), "IDC": (81.0, 86.0, None),
    "FRePo (learned labels)": (75.6, 86.2, 89.6), "KIP -> ConvNet": (73.8, 86.8, 87.8),
}


SOFT_NOTE = ("; in soft-label the frozen real-data teacher labels every augmented batch (KL at temperature "
             "T, AdamW lr 1e-3, weight decay 0.01, cosine; mgd_ray/eval/soft_label.py)")


def _pm(m, s):
    return f"{m:.1f} ± {s:.1f}"


def make_report(root: Path, dataset: str, out_dir: Path | None = None) -> tuple[Path, Path]:
    out_dir = Path(out_dir) if out_dir else REPORTS
    rows = collect(root)
    if not rows:
        raise SystemExit(f"no finished cells under {root}; run `python -m benchmarks.quality run ...` first")
    base = {r["ipc"]: r for r in rows if r["cell"] == "random-real"}
    mgd3 = {r["ipc"]: r for r in rows if r["cell"] == "mgd3"}
    for r in rows:
        b, m = base.get(r["ipc"]), mgd3.get(r["ipc"])
        r["gain_vs_random"] = paired_gain(r, b) if b else float("nan")
        r["gain_vs_random_per_seed"] = seed_gains(r, b) if b else {}
        r["gain_vs_mgd3"] = paired_gain(r, m) if m else float("nan")
    main_names = [n for n, _ in MAIN]
    protocols = sorted({r["protocol"] for r in rows})
    md = [f"# Quality benchmark: {dataset}", "",
          "Produced by `python -m benchmarks.quality report` from the cells under "
          f"`{root.name}/` (each cell a real `mgd_ray.distill` job). Protocol: {' + '.join(protocols)}"
          f"{SOFT_NOTE if 'soft-label' in protocols else ''}; ConvNet-3 "
          "(width 128, instance norm), every number the mean ± std over generation seeds "
          "(one training seed each unless `runs` says more). Gains are paired: the same generation "
          "seeds of both cells, per seed in `per seed`.", ""]
    ipcs = sorted({r["ipc"] for r in rows})
    sections = (("methods", lambda r: r["cell"] in main_names, lambda r: main_names.index(r["cell"])),
                ("ManifoldGD variants, one change each from paper-strict "
                 "(var-mgd3-*: MGD3 at a variant's λ, its control)",
                 lambda r: r["cell"].startswith("var-"), lambda r: r["cell"]))
    for ipc in ipcs:
        for title, keep, order in sections:
            sel = sorted((r for r in rows if r["ipc"] == ipc and keep(r)), key=order)
            if not sel:
                continue
            ep = sorted({r["epochs"] for r in sel})
            md += [f"## IPC {ipc}: {title} (epochs {ep}, n_evals {sel[0]['n_evals']})", ""]
            t = [{"cell": r["cell"], "final %": _pm(r["final_mean"], r["final_std"]),
                  "best %": _pm(r["best_mean"], r["best_std"]),
                  "gain vs random-real": f"{r['gain_vs_random']:+.1f}",
                  "per seed": " / ".join(f"{g:+.1f}" for g in r["gain_vs_random_per_seed"].values()),
                  "gain vs mgd3": f"{r['gain_vs_mgd3']:+.1f}",
                  "seeds": len(r["seeds"]), **{k: r[k] for k in DIST_KEYS},
                  "minutes": round(sum(v for k, v in r["timings"].items() if k != "total_last_run") / 60, 1)}
                 for r in sel]
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
    data = {"dataset": dataset, "root": relative_to_repo(root), "machine": machine(), "cells": rows,
            "published": PUBLISHED_FMNIST}
    return write_report(f"quality-{dataset}", data, "\n".join(md), out_dir)


