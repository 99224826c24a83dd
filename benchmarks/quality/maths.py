"""The quality benchmark's report maths: read a finished cell into a row, the paired gain over
random-real on the same generation seeds, and the ablation centre on the ablation's seeds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from benchmarks import relative_to_repo
from benchmarks.quality.cells import cell_variant

DIST_KEYS = ["fid", "mean_l2", "mmd2_rbf_unbiased", "diversity", "representativeness", "recall", "coverage",
             "prior_fidelity"]


def read_cell(d: Path) -> dict | None:
    if not (d / "results.json").is_file():
        return None
    res = json.loads((d / "results.json").read_text())
    man = json.loads((d / "manifest.json").read_text())
    cfg = yaml.safe_load((d / "config.yaml").read_text())
    kind, by_student = next(iter(res["results"].items()))
    student, cell = next(iter(by_student.items()))
    dist = res.get("distribution", {})
    row = {"cell": d.name, "dir": relative_to_repo(d), "ipc": res["ipc"], "method": kind, "student": student,
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


def seed_finals(row: dict) -> dict[int, float]:
    """{generation seed: final accuracy %} of a cell (mean over its training seeds)."""
    out: dict[int, list] = {}
    for r in row["run_records"]:
        out.setdefault(int(r["set_seed"]), []).append(100 * r["final_acc"])
    return {k: float(np.mean(v)) for k, v in out.items()}


def seed_gains(row: dict, base: dict) -> dict[int, float]:
    """{generation seed: final-accuracy gain over ``base`` on that seed}, the seeds both cells have."""
    a, b = seed_finals(row), seed_finals(base)
    return {k: a[k] - b[k] for k in sorted(set(a) & set(b))}


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
