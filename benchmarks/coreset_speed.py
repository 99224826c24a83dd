"""Divisive coreset speed: our FAISS bisecting tree vs scikit-learn, on latent-sized data.

    python -m benchmarks.coreset_speed [--quick] [--sizes 1300,100000] [--ipcs 10,50]
                                          [--budget 150] [--threads 2] [--size-budget 600]

Data: synthetic clustered float32 rows of D = 4096 (10 super-clusters × 5 sub-clusters + noise).
Algorithms, each in its own subprocess (peak RSS = that process's ru_maxrss):
  faiss        build_coreset(method="divisive", selection="leaves", n_restarts=3, niter=20) (the default)
  numpy        the same tree with engine="numpy" (fused one-pass Lloyd 2-means, k-means++ seeding)
  faiss_r1     faiss with n_restarts=1 (sklearn BisectingKMeans' default is one init); small sizes only
  sk_bisecting sklearn BisectingKMeans(n_clusters=ipc, n_init=3, bisecting_strategy="biggest_inertia")
  reference    the published code's loop: split the largest-SSE cluster with
               sklearn KMeans(n_clusters=2, n_init=10) until ipc clusters
The faiss and reference runs grow to the largest ipc once and record time and SSE when they have
each smaller ipc's number of leaves (the tree for a smaller ipc is exactly that prefix); faiss
times are those of ``grow_tree`` (``build_coreset`` adds one pass for the leaf means). When its time passes
``--budget`` seconds it stops measuring: the remaining splits are done with FAISS only to learn
their node sizes, and their sklearn time is extrapolated at the measured seconds per point
(k-means cost is linear in the node size); such rows say "extrapolated" and give no SSE.
Writes benchmarks/reports/coreset_speed.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks import REPORTS, current_rss_mb, machine, md_table, peak_rss_mb, write_report

D = 4096
REPORT_JSON = REPORTS / "coreset_speed.json"


def make_data(n: int, seed: int = 0) -> np.ndarray:
    """(n, D) float32 clustered rows, generated in chunks (no float64 copy)."""
    rng = np.random.default_rng(seed)
    sup = rng.standard_normal((10, D), dtype=np.float32)
    sub = (np.repeat(sup, 5, axis=0) + 0.5 * rng.standard_normal((50, D), dtype=np.float32))
    lab = rng.integers(0, 50, size=n)
    Z = np.empty((n, D), dtype=np.float32)
    for s in range(0, n, 8192):
        e = min(n, s + 8192)
        Z[s:e] = sub[lab[s:e]] + 0.7 * rng.standard_normal((e - s, D), dtype=np.float32)
    return Z


def _data_path(n: int) -> str:
    return os.path.join(tempfile.gettempdir(), f"mgd_coreset_bench_{n}x{D}.npy")


def _partition_sse(Z: np.ndarray, groups) -> float:
    from mgd_ray.method.coreset import _sse
    return float(sum(_sse(Z[g]) for g in groups))


# ----------------------------------------------------------------------------------------
# workers (run in a subprocess each)
# ----------------------------------------------------------------------------------------
def _work_faiss(Z, ipc, threads, n_restarts=3, checkpoints=(), engine="faiss", **_):
    """Our tree (grow_tree, as build_coreset runs it) grown once to ipc; rows at each checkpoint."""
    from mgd_ray.method.coreset import _thread_limits, grow_tree

    out = []
    t0 = time.perf_counter()

    def record(nodes, leaves):
        if len(leaves) in checkpoints:
            out.append({"ipc": len(leaves), "seconds": time.perf_counter() - t0,
                        "sse": float(sum(nodes[i].sse for i in leaves))})

    with _thread_limits(threads):
        nodes, leaves = grow_tree(Z, ipc, split="sse", n_restarts=n_restarts, niter=20, seed=0, on_split=record,
                                  engine=engine)
    dt = time.perf_counter() - t0
    out.append({"ipc": ipc, "seconds": dt, "sse": _partition_sse(Z, [nodes[i].idx for i in leaves])})
    return out


def _work_sk_bisecting(Z, ipc, threads, **_):
    from sklearn.cluster import BisectingKMeans
    from threadpoolctl import threadpool_limits

    with threadpool_limits(threads):
        t0 = time.perf_counter()
        lab = BisectingKMeans(n_clusters=ipc, n_init=3, random_state=0,
                              bisecting_strategy="biggest_inertia").fit_predict(Z)
        dt = time.perf_counter() - t0
    return [{"ipc": ipc, "seconds": dt, "sse": _partition_sse(Z, [np.flatnonzero(lab == k) for k in range(ipc)])}]


def _work_reference(Z, ipc, threads, checkpoints=(), budget=1e9, **_):
    """The published loop (sklearn KMeans(2, n_init=10) per split), with a time budget."""
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    from mgd_ray.method.coreset import _sse, _two_means

    rng = np.random.RandomState(0)
    frng = np.random.default_rng(0)
    clusters = [np.arange(len(Z))]
    sses = [_sse(Z)]
    measured_s, measured_pts, est_s, n_measured = 0.0, 0, 0.0, 0
    out = []
    t_start = time.perf_counter()
    with threadpool_limits(threads):
        while len(clusters) < ipc:
            ci = int(np.argmax(sses))
            idx = clusters.pop(ci)
            sses.pop(ci)
            X = Z[idx]
            if measured_s < budget:
                t0 = time.perf_counter()
                lab = KMeans(n_clusters=2, n_init=10, random_state=rng.randint(1 << 31)).fit_predict(X)
                dt = time.perf_counter() - t0
                measured_s += dt
                measured_pts += len(idx)
                n_measured += 1
                left, right = idx[lab == 0], idx[lab == 1]
                if len(left) == 0 or len(right) == 0:
                    perm = rng.permutation(len(idx))
                    left, right = idx[perm[: len(idx) // 2]], idx[perm[len(idx) // 2:]]
            else:                                 # past the budget: FAISS split for the sizes only
                est_s += len(idx) * measured_s / max(1, measured_pts)
                assign, _ = _two_means(X, frng, 1, 10)
                left, right = idx[~assign], idx[assign]
            for part in (left, right):
                clusters.append(part)
                sses.append(_sse(Z[part]))
            k = len(clusters)
            if k in checkpoints or k == ipc:
                extrap = est_s > 0
                out.append({"ipc": k, "seconds": measured_s + est_s, "wall_measured_s": time.perf_counter() - t_start,
                            "sse": None if extrap else float(sum(sses)), "extrapolated": extrap,
                            "splits_measured": n_measured, "splits_total": k - 1})
    return out


WORKERS = {"faiss": _work_faiss, "numpy": lambda Z, **kw: _work_faiss(Z, **kw, engine="numpy"),
           "faiss_r1": lambda Z, **kw: _work_faiss(Z, **kw, n_restarts=1),
           "sk_bisecting": _work_sk_bisecting, "reference": _work_reference}


def worker_main(spec: dict) -> None:
    """Load the cached data, run one algorithm, print one JSON line with results and RSS."""
    Z = np.load(spec["data"])
    rss_data = current_rss_mb()
    for _ in range(1 + int(spec.get("warm", 0))):   # warm: time the last of these calls
        rows = WORKERS[spec["algo"]](Z, **spec)
    print(json.dumps({"rows": rows, "rss_data_mb": rss_data, "peak_rss_mb": peak_rss_mb()}), flush=True)


def _fastest(runs: list[dict]) -> dict:
    """The run with the smallest total time among successful ones (else the first error)."""
    ok = [r for r in runs if "error" not in r]
    return min(ok, key=lambda r: sum(q["seconds"] for q in r["rows"])) if ok else runs[0]


def run_worker(spec: dict, timeout: float) -> dict:
    """Run worker_main(spec) in a fresh interpreter; -> its JSON (or an error record)."""
    cmd = [sys.executable, "-m", "benchmarks.coreset_speed", "--worker", json.dumps(spec)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        return {"error": (p.stderr or p.stdout)[-800:]}
    return json.loads(lines[-1])


# ----------------------------------------------------------------------------------------
def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="1,300 rows only, short reference budget")
    ap.add_argument("--sizes", default="1300,100000")
    ap.add_argument("--ipcs", default="10,50")
    ap.add_argument("--budget", type=float, default=120.0,
                    help="seconds of measured reference splits for sizes > 10,000 rows (smaller: run fully)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="runs per algorithm for sizes <= 10,000 (fastest kept)")
    ap.add_argument("--render", action="store_true", help="rewrite the Markdown from the existing JSON")
    ap.add_argument("--merge", action="store_true", help="keep rows of other sizes from the existing report")
    ap.add_argument("--timeout", type=float, default=900.0, help="per-subprocess limit, seconds")
    ap.add_argument("--size-budget", type=float, default=900.0,
                    help="seconds for all algorithms on a size > 10,000 rows; later ones are skipped")
    args = ap.parse_args(argv)
    if args.worker:
        worker_main(json.loads(args.worker))
        return {}
    if args.render:
        data = json.loads(REPORT_JSON.read_text())
        write_report("coreset_speed", data, render(data))
        return data
    sizes = [1300] if args.quick else [int(s) for s in args.sizes.split(",")]
    ipcs = sorted(int(s) for s in args.ipcs.split(","))
    budget = min(args.budget, 30.0) if args.quick else args.budget
    info = machine()
    rows, t_all = [], time.perf_counter()
    for n in sizes:
        path = _data_path(n)
        if not os.path.exists(path):
            np.save(path, make_data(n))
        # sizes <= 10,000 (a class): each timed call is the second in its process, as in a coreset
        # task that builds many classes one after another (the first call pays allocator and BLAS warm-up)
        base = {"data": path, "threads": args.threads, "warm": 1 if n <= 10_000 else 0}
        top, small = ipcs[-1], ipcs[:-1]
        jobs = [("faiss", top, {"checkpoints": small}),
                ("reference", top, {"checkpoints": small,
                                    "budget": budget if (n > 10_000 or args.quick) else 1e9}),
                ("sk_bisecting", top, {})] + [("sk_bisecting", ipc, {}) for ipc in small[::-1]] + \
               [("numpy", top, {"checkpoints": small})]
        if n <= 10_000:
            jobs.append(("faiss_r1", top, {"checkpoints": small}))
        t_size = time.perf_counter()
        reps = args.repeats if n <= 10_000 else 1
        for algo, ipc, extra in jobs:
            t0 = time.perf_counter()
            left = args.timeout
            if n > 10_000 and args.size_budget:
                left = min(left, args.size_budget - (t0 - t_size))
                if left < 30:
                    rows.append({"n": n, "algo": algo, "ipc": ipc, "error": "skipped: size time budget used up"})
                    print(f"n={n} {algo} ipc={ipc}: skipped (size budget)", flush=True)
                    continue
            runs = [run_worker({**base, "algo": algo, "ipc": ipc, **extra}, left) for _ in range(reps)]
            res = _fastest(runs)
            if "error" in res:
                rows.append({"n": n, "algo": algo, "ipc": ipc, "error": res["error"]})
                print(f"n={n} {algo} ipc={ipc}: ERROR {res['error'][-300:]}", flush=True)
                continue
            for r in res["rows"]:
                rows.append({"n": n, "algo": algo, **r, "peak_rss_mb": res["peak_rss_mb"],
                             "rss_data_mb": res["rss_data_mb"], "runs": reps,
                             "all_runs_s": [round(q["rows"][res["rows"].index(r)]["seconds"], 3)
                                            for q in runs if "rows" in q]})
                print(f"n={n} {algo:12s} ipc={r['ipc']:3d}: {r['seconds']:9.2f} s  sse={r.get('sse')}  "
                      f"rss={res['peak_rss_mb']:.0f} MiB  (subprocess {time.perf_counter() - t0:.0f} s)", flush=True)
    if args.merge and (REPORT_JSON).exists():            # keep rows of sizes not measured now
        old_rows = json.loads(REPORT_JSON.read_text()).get("rows", [])
        rows = [r for r in old_rows if r["n"] not in sizes] + rows
        sizes = sorted({r["n"] for r in rows})
    # ratios against the reference approach
    for r in rows:
        ref = next((q for q in rows if q["n"] == r["n"] and q.get("ipc") == r.get("ipc")
                    and q["algo"] == "reference" and "seconds" in q), None)
        if ref and "seconds" in r:
            r["speedup_vs_reference"] = ref["seconds"] / r["seconds"]
            if r.get("sse") and ref.get("sse"):
                r["sse_vs_reference_pct"] = 100.0 * (r["sse"] / ref["sse"] - 1.0)
        r["note"] = ("extrapolated: " + f"{r['splits_measured']}/{r['splits_total']} splits measured"
                     if r.get("extrapolated") else r.get("error", "")[:80])
    data = {"config": {"D": D, "sizes": sizes, "ipcs": ipcs, "threads": args.threads, "reference_budget_s": budget,
                       "size_budget_s": args.size_budget,
                       "faiss": "n_restarts=3, niter=20, max_points_per_centroid=n (no subsampling)",
                       "numpy": "grow_tree(engine='numpy'): restarts batched into one BLAS pass per iteration, "
                                "n_restarts=3, niter=20 (stops when stable); what engine: auto runs on CPU",
                       "faiss_r1": "as faiss with n_restarts=1",
                       "sk_bisecting": "n_init=3, biggest_inertia, max_iter=300",
                       "reference": "KMeans(2, n_init=10, max_iter=300) per split, largest-SSE leaf"},
            "machine": info, "rows": rows, "total_wall_s": time.perf_counter() - t_all,
            "target": ">= 10x faster than the reference approach at equal SSE (±1 %)"}
    md = render(data)
    write_report("coreset_speed", data, md)
    print(md)
    return data


def render(data: dict) -> str:
    """The Markdown report for a result dict (also: python -m benchmarks.coreset_speed --render)."""
    info, cfg, rows = data["machine"], data["config"], data["rows"]
    cols = ["n", "ipc", "algo", "seconds", "speedup_vs_reference", "sse", "sse_vs_reference_pct",
            "peak_rss_mb", "rss_data_mb", "note"]
    ordered = sorted(rows, key=lambda r: (r["n"], r.get("ipc", 0), r["algo"]))
    algos = [f"- `{k}`: {cfg[k]}" for k in ("faiss", "numpy", "faiss_r1", "sk_bisecting", "reference") if k in cfg]
    md = [f"# Coreset speed: FAISS divisive vs scikit-learn ({info['date']})", "",
          f"D = {cfg['D']} float32, synthetic clustered data (10 super-clusters × 5 sub-clusters + noise); "
          f"{cfg['threads']} thread(s) for FAISS / BLAS / sklearn; load average at start "
          f"{info['loadavg_at_start']} (shared 2-core machine: times are noisy). Each algorithm ran in its own "
          "subprocess (sizes <= 10,000: fastest of `runs`, all times in the JSON, each timed call the second of "
          "its process, warm as in a coreset task that builds class after class); peak RSS includes the data "
          "(`rss_data_mb` = RSS right after loading it). SSE = total within-leaf sum of squares.", "",
          "Algorithms:", *algos, "",
          md_table(ordered, cols), "",
          "faiss / numpy / faiss_r1 / reference rows: one run grown to the largest IPC; the smaller IPC is the "
          "prefix of that run (same tree, cumulative time). Extrapolated rows: the sklearn time of the unmeasured "
          "splits is estimated at the measured seconds per point; no SSE is given for them "
          f"(reference budget {cfg['reference_budget_s']:.0f} s of measured splits for sizes > 10,000).", "",
          f"Target: {data['target']}.", f"Total wall time: {data['total_wall_s']:.0f} s.", "",
          "`coreset.engine: auto` (the default) runs numpy on CPU and FAISS where its build sees a GPU "
          "(`mgd_ray.method.coreset.resolve_engine`). Fastest of the two engines per size here:", "",
          *_engine_winners(rows)]
    return "\n".join(md)


def _engine_winners(rows: list[dict]) -> list[str]:
    """One line per (n, ipc): which of the pipeline's engines (faiss, numpy) was faster, by how much."""
    out = []
    for n, ipc in sorted({(r["n"], r.get("ipc")) for r in rows if "seconds" in r}):
        t = {r["algo"]: r["seconds"] for r in rows if r["n"] == n and r.get("ipc") == ipc and "seconds" in r}
        if "faiss" in t and "numpy" in t:
            fast, slow = sorted(("faiss", "numpy"), key=t.get)
            out.append(f"- n = {n:,}, ipc {ipc}: {fast} ({t[fast]:.3g} s; {t[slow] / t[fast]:.2f}x faster than {slow})")
    return out


if __name__ == "__main__":
    main()
