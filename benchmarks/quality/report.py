"""The quality benchmark's report: read the finished cells, compute the paired gains and the
ablation centre, and write ``benchmarks/reports/quality-<dataset>.{json,md}``. Nothing in the report
is typed in: it is all read from the cells' ``results.json``/``manifest.json``/``config.yaml``."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import REPORTS, machine, md_table, relative_to_repo, write_report
from benchmarks.quality.cells import MAIN, VARIANT_OF
from benchmarks.quality.diagnose import DIAG
from benchmarks.quality.maths import DIST_KEYS, ablation_centre, collect, merge_rows, paired_gain, seed_gains
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


def load_rows(root: Path, include: list[Path]) -> tuple[list[dict], list[str], list[str]]:
    """The rows of the live root's finished cells and of the committed reports in ``include``."""
    sources = [(relative_to_repo(root), collect(root))]
    for p in include:
        p = Path(p)
        if not p.is_file():
            raise SystemExit(f"--include {p}: no such report; expected a quality report's JSON, e.g. "
                             "benchmarks/reports/quality-prior-22k/quality-fashion-mnist.json")
        data = json.loads(p.read_text())
        if "cells" not in data:
            raise SystemExit(f"--include {p}: not a quality report (no 'cells')")
        sources.append((relative_to_repo(p), data["cells"]))
    rows, notes = merge_rows(sources)
    return rows, notes, [s for s, _ in sources]


def _with_gains(rows: list[dict]) -> None:
    """Gains paired against random-real and MGD3 of the same IPC and protocol."""
    base = {(r["ipc"], r["protocol"]): r for r in rows if r["cell"] == "random-real"}
    mgd3 = {(r["ipc"], r["protocol"]): r for r in rows if r["cell"] == "mgd3"}
    for r in rows:
        b, m = base.get((r["ipc"], r["protocol"])), mgd3.get((r["ipc"], r["protocol"]))
        r["gain_vs_random"] = paired_gain(r, b) if b else float("nan")
        r["gain_vs_random_per_seed"] = seed_gains(r, b) if b else {}
        r["gain_vs_mgd3"] = paired_gain(r, m) if m else float("nan")


def full_table(rows: list[dict], protocol: str) -> list[str]:
    """The main methods x every IPC of one protocol: final % and the paired gain over random real."""
    main_names = [n for n, _ in MAIN]
    sel = [r for r in rows if r["protocol"] == protocol and r["cell"] in main_names]
    ipcs = sorted({r["ipc"] for r in sel})
    if not sel:
        return []
    by = {(r["cell"], r["ipc"]): r for r in sel}
    t = []
    for name in main_names:
        if not any((name, i) in by for i in ipcs):
            continue
        row = {"cell": f"{name} ({VARIANT_OF[name]})" if name in VARIANT_OF else name}
        for i in ipcs:
            r = by.get((name, i))
            if r is None:
                row[f"IPC {i}"] = "not run"
                continue
            txt = _pm(r["final_mean"], r["final_std"])
            if name != "random-real" and r["gain_vs_random"] == r["gain_vs_random"]:
                txt += f" ({r['gain_vs_random']:+.1f})"
            if len(r["seeds"]) != 3:
                txt += f" [seeds {','.join(map(str, r['seeds']))}]"
            row[f"IPC {i}"] = txt
        t.append(row)
    ep = sorted({r["epochs"] for r in sel})
    return [f"## Full table, {protocol} (epochs {ep}): final % (gain over random real, paired on the same seeds)", "",
            md_table(t, ["cell"] + [f"IPC {i}" for i in ipcs]), ""]


def make_report(root: Path, dataset: str, out_dir: Path | None = None,
                include: list[Path] = ()) -> tuple[Path, Path]:
    out_dir = Path(out_dir) if out_dir else REPORTS
    rows, notes, sources = load_rows(root, list(include))
    if not rows:
        raise SystemExit(f"no finished cells under {root}; run `python -m benchmarks.quality run ...` first")
    _with_gains(rows)
    main_names = [n for n, _ in MAIN]
    protocols = sorted({r["protocol"] for r in rows})
    md = [f"# Quality benchmark: {dataset}", "",
          "Produced by `python -m benchmarks.quality report` from "
          f"{', '.join(f'`{s}`' for s in sources)} (each cell a real `mgd_ray.distill` job; a row's `source` "
          f"in the JSON says where it was read). Protocol: {' + '.join(protocols)}"
          f"{SOFT_NOTE if 'soft-label' in protocols else ''}; ConvNet-3 "
          "(width 128, instance norm), every number the mean ± std over generation seeds "
          "(one training seed each unless `runs` says more). Gains are paired: the same generation "
          "seeds of both cells, per seed in `per seed`.", ""]
    if notes:
        md += ["Rows read twice (a rerun in a later source) keep the first source's:", ""]
        md += [f"- {n}" for n in notes] + [""]
    for protocol in protocols:
        md += full_table(rows, protocol)
    ipcs = sorted({r["ipc"] for r in rows})
    sections = (("methods", lambda r: r["cell"] in main_names, lambda r: main_names.index(r["cell"])),
                ("ManifoldGD variants, one change each from paper-strict "
                 "(var-mgd3-*: MGD3 at a variant's λ, its control)",
                 lambda r: r["cell"].startswith("var-"), lambda r: r["cell"]))
    for protocol in protocols:
        for ipc in ipcs:
            for title, keep, order in sections:
                sel = sorted((r for r in rows if r["ipc"] == ipc and r["protocol"] == protocol and keep(r)), key=order)
                if not sel:
                    continue
                ep = sorted({r["epochs"] for r in sel})
                what = f"{protocol}, " if len(protocols) > 1 else ""
                md += [f"## IPC {ipc}: {what}{title} (epochs {ep}, n_evals {sel[0]['n_evals']})", ""]
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
    data = {"dataset": dataset, "root": relative_to_repo(root), "sources": sources,
            "machine": machine(), "cells": rows, "published": PUBLISHED_FMNIST}
    return write_report(f"quality-{dataset}", data, "\n".join(md), out_dir)


