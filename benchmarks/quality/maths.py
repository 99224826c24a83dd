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
    from mgd_ray.pipeline.evaluate import protocol_results
    pr = protocol_results(res)[0]             # a cell runs one protocol (either results.json layout)
    kind, by_student = next(iter(pr["results"].items()))
    student, cell = next(iter(by_student.items()))
    dist = res.get("distribution", {})
    row = {"cell": d.name, "dir": relative_to_repo(d), "ipc": res["ipc"], "method": kind, "student": student,
           "basis": cfg["guidance"]["basis"] if kind == "manifoldgd" else "",
           "selection": cfg["coreset"]["selection"] if kind == "manifoldgd" else "",
           "variant": cell_variant(d.name, kind), "protocol": pr.get("protocol", "hard-label"),
           "final_mean": 100 * cell["final_acc_mean"], "final_std": 100 * cell["final_acc_std"],
           "best_mean": 100 * cell["best_acc_mean"], "best_std": 100 * cell["best_acc_std"],
           "runs": len(cell["runs"]), "seeds": sorted({r["set_seed"] for r in cell["runs"]}),
           "run_records": cell["runs"], "dist_sets": dist.get("sets", {}),
           "epochs": cell["runs"][0]["epochs"], "n_evals": cfg["evaluate"]["n_evals"],
           "timings": man.get("timings", {}), "config": {k: cfg[k] for k in ("guidance", "sampler", "coreset")},
           "prior": ({k: man["model"].get(k) for k in ("source", "transformer_sha256", "vae_sha256")}
                     if man.get("model") else None)}
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


def _settings(row: dict, other: dict) -> dict:
    """What must agree before two rows' runs may be pooled into one cell; the prior's identity only where
    both rows record it (reports written before it was recorded do not)."""
    keys = ["method", "protocol", "epochs", "n_evals", "student", "config"]
    if row.get("prior") and other.get("prior"):
        keys.append("prior")
    return {k: row.get(k) for k in keys}


def _acc_stats(runs: list[dict]) -> dict:
    """final/best accuracy % mean and std (ddof 1; 0 for one run) of run records."""
    out = {}
    for k in ("final", "best"):
        v = np.array([100 * r[f"{k}_acc"] for r in runs])
        out[f"{k}_mean"], out[f"{k}_std"] = float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0
    return out


def _pool(a: dict, b: dict) -> dict:
    """One cell from two rows of the same settings on disjoint generation seeds."""
    runs = a["run_records"] + b["run_records"]
    dist = {**a["dist_sets"], **b["dist_sets"]}
    out = dict(a, **_acc_stats(runs), run_records=runs, dist_sets=dist, runs=len(runs),
               seeds=sorted(set(a["seeds"]) | set(b["seeds"])), dir=f"{a['dir']} + {b['dir']}",
               prior=a.get("prior") or b.get("prior"),
               timings={k: a["timings"].get(k, 0) + b["timings"].get(k, 0)
                        for k in set(a["timings"]) | set(b["timings"]) if k != "total_last_run"})
    for k in DIST_KEYS:
        v = [s[k] for s in dist.values() if k in s]
        out[k] = float(np.mean(v)) if v else float("nan")
    return out


def merge_rows(sources: list[tuple[str, list[dict]]]) -> tuple[list[dict], list[str]]:
    """Rows of several sources (a live root, then committed reports, in the order given) as one table,
    one row per (ipc, cell, protocol). The same cell on disjoint generation seeds with the same settings
    is pooled (a third seed run later joins the first two); on overlapping seeds the first source's row
    is kept and the later one named in the returned notes; the same cell with different settings on
    disjoint seeds is an error, never a silent mix."""
    merged: dict[tuple, dict] = {}
    notes = []
    for src, rows in sources:
        for r in rows:
            r = dict(r, source=src)
            key = (r["ipc"], r["cell"], r["protocol"])
            have = merged.get(key)
            if have is None:
                merged[key] = r
            elif set(have["seeds"]) & set(r["seeds"]):
                notes.append(f"{r['cell']} at IPC {r['ipc']} ({r['protocol']}, seeds {r['seeds']}) from {src}: "
                             f"not used, the same seeds come from {have['source']}")
            elif _settings(have, r) != _settings(r, have):
                a, b = _settings(have, r), _settings(r, have)
                diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
                raise SystemExit(f"{r['cell']} at IPC {r['ipc']} ({r['protocol']}): {have['source']} and {src} "
                                 f"differ in {', '.join(diff)}; their seeds cannot be pooled into one cell. "
                                 "Rename one of the cells or leave one source out.")
            else:
                merged[key] = dict(_pool(have, r), source=f"{have['source']} + {src}")
    return list(merged.values()), notes


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
    dist = c["dist_sets"]
    out = dict(c, **_acc_stats(runs), cell=f"{base} (seeds {sorted(seeds)})", seeds=sorted(seeds))
    for k in DIST_KEYS:
        v = [dist[str(s)][k] for s in seeds if str(s) in dist and k in dist[str(s)]]
        out[k] = float(np.mean(v)) if v else float("nan")
    return out
