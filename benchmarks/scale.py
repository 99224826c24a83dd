"""Scaling benchmark: the ImageNet-1K twin (jobs/imagenet1k-twin.yaml) at 10, 100 and 1,000
classes, then an extrapolation to the real 1,281,167 images on cluster/aws.yaml's fleet.

    python -m benchmarks.scale [--classes 10,100,1000] [--images-per-class 50] [--ipc50-at 1000]
                               [--no-evaluate 1000:50] [--note TEXT] [--steps 5] [--work out/scale]
    -> benchmarks/reports/scale.{json,md,png}

Each row is the real job (class list, levelwise/leaves coreset, IPC, 3 seeds, unit and batch
sizes, D = 4,096) with the twin's synthetic images and tiny random models, run end to end by a
fresh driver process (``--row``) on a local Ray with 4 logical CPUs. The row process samples its
own resident memory (peak = ``ru_maxrss``) and the object store's bytes in use (every second,
from the raylet), and counts Ray tasks and actors (state API), shards and files written.

Only the sampler's step count is cut (``--steps``; FLOPs, not sizes: a step costs the same at
every scale); the GPU FLOPs of the real models come from the dry run's FLOP model
(``mgd_ray.pipeline.plan``), and the measured per-item costs carry the rest. A finished row
stays in the work directory (``row-*.log``; delete one to run it again) and the reports are built
from every finished row, so the long 1,000-class rows can be added later by the same command.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
JOB = ROOT / "jobs" / "imagenet1k-twin.yaml"
REAL_JOB = ROOT / "jobs" / "imagenet1k.yaml"
REPORTS = Path(__file__).resolve().parent / "reports"
STAGES = ("encode", "coreset", "generate", "evaluate")
REAL_TRAIN_IMAGES = 1281167
MB = 1024 ** 2


# ---- one row, in its own driver process --------------------------------------------------------
def row_overrides(twin: Path, wnids: list[str], out: Path, ipc: int, steps: int,
                  evaluate: bool = True) -> list[str]:
    """The twin job at ``len(wnids)`` classes on one machine's CPUs. Everything else is the job's
    (``evaluate=False``: the row stops after generation; its evaluation is not measured)."""
    ov = [f"data.root={twin / 'imagefolder'}", f"model.generator={twin / 'models'}", f"output.dir={out}",
          f"generate.ipc={ipc}", f"generate.targets_per_unit={ipc}",      # as imagenet1k.yaml's ipc50 variant
          f"sampler.steps={steps}", f"guidance.t_stop={max(0, steps // 2 - 1)}", "guidance.warm=1",
          "encode.num_gpus=0", "generate.num_gpus=0", "evaluate.gpus_per_worker=0", "output.preview=false",
          "evaluate.metrics=false"]       # the control plane's cost: Inception over 10,000 real images is not it
    if not evaluate:
        ov.append("evaluate.enabled=false")
    if len(wnids) < 1000:
        ov.append(f"data.classes=[{', '.join(wnids)}]")
    return ov


class Sampler(threading.Thread):
    """Peak object-store bytes in use across the cluster, read from the raylet every second, and
    the machine's peak 1-minute load average (was the box shared while the row ran?)."""

    def __init__(self, gcs_address: str):
        super().__init__(daemon=True)
        self.gcs_address, self.peak, self.stop_flag = gcs_address, 0, threading.Event()
        self.load_peak = 0.0

    def run(self):
        from ray._private.internal_api import get_memory_info_reply, get_state_from_address
        state = get_state_from_address(self.gcs_address)
        while not self.stop_flag.wait(1.0):
            self.load_peak = max(self.load_peak, os.getloadavg()[0])
            try:
                used = get_memory_info_reply(state, timeout_seconds=10).store_stats.object_store_bytes_used
                self.peak = max(self.peak, int(used))
            except Exception:  # noqa: BLE001 - a missed sample is not a result
                pass


def count_ray_work(address: str, dashboard: bool) -> dict:
    """Actors (by class, from the GCS) and tasks (by function, from the state API: only when the
    dashboard came up) that this row's Ray ran."""
    from ray._private.state import actors
    by_class: dict[str, int] = {}
    table = actors()
    for a in table.values():
        name = a.get("ActorClassName") or a.get("class_name") or "?"
        by_class[name] = by_class.get(name, 0) + 1
    out = {"tasks": None, "actors": len(table), "tasks_by_name": {}, "actors_by_class": by_class}
    if dashboard:
        from ray.util.state import summarize_tasks
        tasks = summarize_tasks(address=address, raise_on_missing_output=False)
        out["tasks_by_name"] = {k: sum(v["state_counts"].values()) for k, v in tasks["cluster"]["summary"].items()}
        out["tasks"] = sum(out["tasks_by_name"].values())
    return out


def run_row(classes: int, images_per_class: int, ipc: int, steps: int, work: Path,
            evaluate: bool = True) -> dict:
    import socket

    import ray

    from benchmarks.imagenet_twin import make_twin
    from mgd_ray.config import load_job
    from mgd_ray.pipeline.driver import run_job

    twin = work / f"twin-{classes}x{images_per_class}"
    t0 = time.time()
    wnids = make_twin(twin, classes, images_per_class, 2, formats=("imagefolder",))["wnids"]
    twin_s = time.time() - t0
    out = work / f"run-{classes}-ipc{ipc}"
    if out.exists():
        shutil.rmtree(out)
    job = load_job(JOB, row_overrides(twin, wnids, out, ipc, steps, evaluate))

    temps = []
    for attempt in range(3):   # a busy machine can miss Ray's fixed 30 s start-up waits
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            dash = s.getsockname()[1]
        dashboard = attempt < 2   # the last try without the dashboard (tasks are then not counted)
        temps.append(tempfile.mkdtemp(prefix="rsc", dir="/tmp"))
        try:
            ray.init(num_cpus=4, include_dashboard=dashboard, dashboard_host="127.0.0.1", dashboard_port=dash,
                     object_store_memory=1024 * MB, log_to_driver=False, _temp_dir=temps[-1])
            break
        except Exception:  # noqa: BLE001
            ray.shutdown()
            if attempt == 2:
                raise
    sampler = Sampler(ray.get_runtime_context().gcs_address)
    sampler.start()
    status, error = "failed", ""
    try:
        man = run_job(job)
        status = man["status"]
    except Exception as e:  # noqa: BLE001 - a failed row is reported, not hidden
        error = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
        man = json.loads((out / "manifest.json").read_text()) if (out / "manifest.json").is_file() else {}
    sampler.stop_flag.set()
    try:
        counts = count_ray_work(ray.get_runtime_context().gcs_address, dashboard)
    except Exception as e:  # noqa: BLE001 - keep the row's measurements
        counts = {"tasks": None, "actors": None, "tasks_by_name": {}, "actors_by_class": {}}
        error = error or f"counting tasks/actors failed: {type(e).__name__}: {str(e)[:200]}"
    ray.shutdown()
    for t in temps:
        shutil.rmtree(t, ignore_errors=True)
    files = [p for p in out.rglob("*") if p.is_file()]
    timings = man.get("timings", {})
    n_gen = classes * ipc * len(job.generate.seeds)
    stage = {s: timings.get(s) for s in STAGES}
    items = {"encode": classes * images_per_class, "coreset": classes * images_per_class,
             "generate": n_gen, "evaluate": 2 * n_gen}   # evaluate: distilled + random-real sets
    return {
        "classes": classes, "images_per_class": images_per_class, "ipc": ipc, "seeds": len(job.generate.seeds),
        "latent_dim": 4 * 32 * 32, "status": status,
        "driver_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "object_store_peak_mb": round(sampler.peak / MB, 1),
        "stage_seconds": stage,
        "shards": len(list((out / "shards").glob("*.parquet"))) if (out / "shards").is_dir() else 0,
        # ---- beyond the required keys ----
        "error": error, "sampler_steps": steps, "evaluate_measured": evaluate,
        "load_average_peak": round(sampler.load_peak, 1), "machine_cpus": os.cpu_count(), "twin_seconds": round(twin_s, 1),
        "images_generated": n_gen, "targets": n_gen, "files_written": len(files),
        "bytes_written_mb": round(sum(p.stat().st_size for p in files) / MB, 1),
        "tasks": counts["tasks"], "actors": counts["actors"],
        "tasks_by_name": counts["tasks_by_name"], "actors_by_class": counts["actors_by_class"],
        "seconds_per_item": {s: (round(stage[s] / items[s], 5) if stage[s] else None) for s in STAGES},
        "items": items,
    }


# ---- the report --------------------------------------------------------------------------------
def fixed_and_per_item(rows: list[dict], stage: str, ipc: int = 10) -> tuple[float, float] | None:
    """Least-squares t = a + b * items over the complete rows at ``ipc`` (the coreset's and the
    generator's work per item depend on it): (a fixed seconds, b seconds/item)."""
    import numpy as np
    pts = [(r["items"][stage], r["stage_seconds"][stage]) for r in rows
           if r["status"] == "complete" and r["ipc"] == ipc and r["stage_seconds"].get(stage)]
    if len({n for n, _ in pts}) < 2:
        return None
    n, t = np.array(pts, dtype=float).T
    b, a = np.polyfit(n, t, 1)
    return float(a), float(b)


def extrapolate(rows: list[dict]) -> dict:
    """The real job (1,281,167 images, IPC 10, 3 seeds) on cluster/aws.yaml's fleet: the twin's
    measured per-item costs (pipeline work outside the model FLOPs) spread over the job's
    workers, plus the dry run's GPU FLOP model for the real DiT-XL/2, SD-VAE and students."""
    from mgd_ray.config import load_job
    from mgd_ray.pipeline.plan import dry_run_plan
    job = load_job(REAL_JOB)
    plan = dry_run_plan(job, list(STAGES))
    est = plan["estimate"]["stages"]
    n_gen = plan["images_to_generate"]
    workers = {"encode": job.encode.max_actors, "coreset": None, "generate": job.generate.num_actors,
               "evaluate": job.evaluate.num_workers}
    items = {"encode": REAL_TRAIN_IMAGES, "coreset": REAL_TRAIN_IMAGES, "generate": n_gen,
             "evaluate": 2 * n_gen}
    # the GPU hours of the real models (dry run), per stage
    gpu_h = {"encode": est["encode_vae"]["device_hours"], "coreset": 0.0,
             "generate": est["generate_dit"]["device_hours"] + est["generate_decode"]["device_hours"],
             "evaluate": est["evaluate"]["device_hours"]}
    # coreset tasks: one CPU each; the fleet's CPUs at full scale (4 x p5.48xlarge = 768 vCPUs)
    cpus = 4 * 192
    out = {}
    for s in STAGES:
        fit = fixed_and_per_item(rows, s)
        par = workers[s] or cpus
        pipe_h = None if fit is None else (fit[0] + fit[1] * items[s]) / 3600
        wall_h = None if pipe_h is None else (fit[0] + fit[1] * items[s] / par) / 3600 + gpu_h[s] / (workers[s] or 1)
        out[s] = {"items": items[s], "parallel_workers": par,
                  "twin_fixed_s": None if fit is None else round(fit[0], 2),
                  "twin_s_per_item": None if fit is None else round(fit[1], 6),
                  "pipeline_hours_one_worker": None if pipe_h is None else round(pipe_h, 2),
                  "gpu_hours_flop_model": round(gpu_h[s], 3),
                  "wall_hours_on_fleet": None if wall_h is None else round(wall_h, 2)}
    return {"job": str(REAL_JOB.relative_to(ROOT)), "train_images": REAL_TRAIN_IMAGES,
            "images_to_generate": n_gen, "stages": out,
            "flop_basis": plan["estimate"]["basis"], "total_gpu_hours_flop_model": plan["estimate"]["total_device_hours"]}


REQUIRED = ("classes", "images_per_class", "ipc", "seeds", "latent_dim", "status", "driver_peak_rss_mb",
            "object_store_peak_mb", "stage_seconds", "shards")


def write_reports(rows: list[dict], extra: dict, cmd: str):
    REPORTS.mkdir(parents=True, exist_ok=True)
    rows = sorted(rows, key=lambda r: (r["classes"], r["ipc"]))
    (REPORTS / "scale.json").write_text(json.dumps({"rows": [{k: r[k] for k in REQUIRED} for r in rows],
                                                    "details": rows, **extra}, indent=1))
    lines = ["# Scaling: the ImageNet-1K twin at 10 -> 1,000 classes\n",
             f"Command: `{cmd}` (one driver process per row, local Ray with 4 logical CPUs on a shared "
             f"2-core machine; sampler steps cut to {rows[0]['sampler_steps'] if rows else '?'}; "
             "D = 4,096, 3 generation seeds).\n",
             "| classes | img/class | IPC | status | encode s | coreset s | generate s | evaluate s | driver peak RSS MB "
             "| object store peak MB | tasks | actors | shards | files | s/item enc / cor / gen / eval |",
             "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        spi = r["seconds_per_item"]
        lines.append(f"| {r['classes']} | {r['images_per_class']} | {r['ipc']} | {r['status']}"
                     + "".join(f" | {_stage_cell(r, s)}" for s in STAGES)
                     + f" | {r['driver_peak_rss_mb']} | {r['object_store_peak_mb']} | {r['tasks']} | {r['actors']}"
                     f" | {r['shards']} | {r['files_written']} | "
                     + " / ".join(f"{spi[s]:.4f}" if spi[s] is not None else "-" for s in STAGES) + " |")
    cmds = sorted({r.get("measured_by") or cmd for r in rows})
    if len(cmds) > 1:
        lines.append("\nRows measured by more than one invocation (each row's `measured_by` in the JSON): "
                     + "; ".join(f"`{c}`" for c in cmds) + ".")
    fit = fixed_and_per_item(rows, "evaluate")
    for r in rows:
        if not r.get("evaluate_measured", True):
            est = "" if fit is None else (f" At the fit over the rows that measured it ({fit[0]:.1f} s + "
                                          f"{fit[1]:.4f} s/item) its {r['items']['evaluate']:,} items would take "
                                          f"~{(fit[0] + fit[1] * r['items']['evaluate']) / 3600:.1f} h on this box.")
            lines.append(f"\nRow {r['classes']} classes x IPC {r['ipc']}: evaluation off (`evaluate.enabled=false`, "
                         f"`--no-evaluate {r['classes']}:{r['ipc']}`); encode, coreset and generation are the "
                         f"job's, and its driver and object-store peaks cover them.{est}")
    failed = [r for r in rows if r["status"] != "complete"]
    for r in failed:
        lines.append(f"\nRow {r['classes']} classes x IPC {r['ipc']}: {r['status']} {r['error']}")
    ex = extra.get("extrapolation")
    if ex:
        lines += ["\n## Extrapolation to ImageNet-1K on cluster/aws.yaml's fleet\n",
                  f"{ex['train_images']:,} train images, {ex['images_to_generate']:,} generated (IPC 10 x 3 seeds); "
                  f"twin fit t = fixed + per_item x items over the complete IPC 10 rows; GPU hours from the dry run's "
                  f"FLOP model ({ex['flop_basis']}).\n",
                  "| stage | items | workers | twin fixed s | twin s/item | pipeline h (1 worker) | GPU h (FLOPs) "
                  "| wall h on fleet |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for s, v in ex["stages"].items():
            lines.append(f"| {s} | {v['items']:,} | {v['parallel_workers']} | {v['twin_fixed_s']} | "
                         f"{v['twin_s_per_item']} | {v['pipeline_hours_one_worker']} | {v['gpu_hours_flop_model']} | "
                         f"{v['wall_hours_on_fleet']} |")
        lines.append("\n" + dominates(ex))
    if extra.get("notes"):
        lines += ["\n## Notes\n", *[f"- {n}" for n in extra["notes"]]]
    (REPORTS / "scale.md").write_text("\n".join(lines) + "\n")
    plot(rows)


def _stage_cell(r: dict, stage: str) -> str:
    v = r["stage_seconds"][stage]
    if v is not None:
        return str(v)
    return "off" if stage == "evaluate" and not r.get("evaluate_measured", True) else "-"


def dominates(ex: dict) -> str:
    """One sentence from the extrapolation table: which stage dominates the wall time, and
    whether its pipeline work (measured) or its model FLOPs (modelled) dominate that stage."""
    st = {s: v for s, v in ex["stages"].items() if v["wall_hours_on_fleet"] is not None}
    if not st:
        return "No stage has two complete rows yet: nothing to extrapolate."
    s, v = max(st.items(), key=lambda kv: kv[1]["wall_hours_on_fleet"])
    gpu = v["gpu_hours_flop_model"] / (v["parallel_workers"] or 1)
    part = "the model FLOPs" if gpu > v["wall_hours_on_fleet"] - gpu else "the pipeline's per-item work"
    total = sum(x["wall_hours_on_fleet"] for x in st.values())
    return (f"Dominant stage: **{s}**, {v['wall_hours_on_fleet']} of {total:.2f} wall hours over the stages with "
            f"a fit ({', '.join(st)}), mostly {part} ({gpu:.2f} h of it is the FLOP model on "
            f"{v['parallel_workers']} workers).")


def plot(rows: list[dict]):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ok = [r for r in rows if r["status"] == "complete" and r["ipc"] == 10]
    if len(ok) < 2:
        return
    x = [r["classes"] for r in ok]
    series = {**{f"{s} s": [r["stage_seconds"][s] for r in ok] for s in STAGES},
              "driver peak RSS MB": [r["driver_peak_rss_mb"] for r in ok],
              "object store peak MB": [max(r["object_store_peak_mb"], 0.1) for r in ok],
              "tasks": [r["tasks"] for r in ok], "actors": [r["actors"] for r in ok],
              "shards": [r["shards"] for r in ok], "files": [r["files_written"] for r in ok]}
    fig, ax = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, y in series.items():
        a = ax[0] if name.endswith(" s") else ax[1]
        a.loglog(x, y, marker="o", label=name)
    for a, t in zip(ax, ("stage wall time (s)", "memory (MB) and counts")):
        a.set_xlabel("classes (IPC 10, 3 seeds, D = 4,096)")
        a.set_title(t)
        a.grid(True, which="both", alpha=0.3)
        a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(REPORTS / "scale.png", dpi=110)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--classes", default="10,100,1000")
    ap.add_argument("--images-per-class", type=int, default=50)
    ap.add_argument("--ipc50-at", default="1000", help="class counts that also get an IPC 50 row")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--work", type=Path, default=ROOT / "out" / "scale")
    ap.add_argument("--rerun", action="store_true", help="measure rows the committed report already has")
    ap.add_argument("--no-evaluate", default="", help="rows 'classes:ipc,...' run with evaluation off "
                    "(reported as such; e.g. 1000:50, whose evaluation is hours of CPU on a laptop)")
    ap.add_argument("--note", action="append", default=[], help="a note for the report's Notes (kept with it)")
    ap.add_argument("--row", default=None, help=argparse.SUPPRESS)   # "classes:ipc[:noeval]", in this process
    a = ap.parse_args(argv)
    a.work.mkdir(parents=True, exist_ok=True)
    if a.row:
        c, ipc, *flag = a.row.split(":")
        print("ROW " + json.dumps(run_row(int(c), a.images_per_class, int(ipc), a.steps, a.work,
                                          evaluate=flag != ["noeval"])), flush=True)
        return
    wanted = [(int(c), 10) for c in a.classes.split(",")]
    wanted += [(int(c), 50) for c in a.ipc50_at.split(",") if c and c in a.classes.split(",")]
    args = list(argv if argv is not None else sys.argv[1:])
    for i in reversed([i for i, v in enumerate(args) if v == "--note"]):   # a note measures nothing
        del args[i:i + 2]
    cmd = "python -m benchmarks.scale " + " ".join(args)
    no_eval = {tuple(int(v) for v in x.split(":")) for x in a.no_evaluate.split(",") if x}
    committed = {_row_key(r) for r in committed_rows()}
    for c, ipc in wanted:
        log = a.work / f"row-{c}x{a.images_per_class}-ipc{ipc}.log"
        if row_from_log(log):
            print(f"row {c} classes x IPC {ipc}: done before ({log}), kept")
            continue
        if (c, a.images_per_class, ipc) in committed and not a.rerun:
            print(f"row {c} classes x IPC {ipc}: in the committed report, kept (--rerun to measure it again)")
            continue
        print(f"row {c} classes x IPC {ipc} ...", flush=True)
        t0 = time.time()
        row = f"{c}:{ipc}" + (":noeval" if (c, ipc) in no_eval else "")
        p = subprocess.run([sys.executable, "-m", "benchmarks.scale", "--row", row,
                            "--images-per-class", str(a.images_per_class), "--steps", str(a.steps),
                            "--work", str(a.work)], cwd=ROOT, capture_output=True, text=True,
                           env={**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
                                "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
        log.write_text(f"CMD {cmd}\n" + p.stdout + p.stderr)   # the row remembers what measured it
        r = row_from_log(log)
        if r is None:
            print(f"  row process failed (exit {p.returncode}); log in {log}")
            continue
        print(f"  {r['status']} in {time.time() - t0:.0f}s: stages {r['stage_seconds']}, driver peak "
              f"{r['driver_peak_rss_mb']} MB, object store peak {r['object_store_peak_mb']} MB", flush=True)
        report(a.work, cmd, a.note)
    report(a.work, cmd, a.note)


def row_from_log(log: Path) -> dict | None:
    """A row's result: the ``ROW {json}`` line its process printed (kept in the work directory),
    with ``measured_by`` from the log's ``CMD`` line when it has one."""
    if not log.is_file():
        return None
    lines = log.read_text().splitlines()
    found = [ln[4:] for ln in lines if ln.startswith("ROW ")]
    if not found:
        return None
    row = json.loads(found[-1])
    cmd = [ln[4:] for ln in lines if ln.startswith("CMD ")]
    return {**row, "measured_by": cmd[0]} if cmd else row


def _row_key(r: dict) -> tuple:
    return r["classes"], r["images_per_class"], r["ipc"]


def committed_report() -> dict:
    """The committed ``scale.json``: its rows (``details``; a row finished by an earlier session
    stays in the report after its work directory is gone, with the command that measured it,
    ``measured_by``) and its ``notes``; {} before the first report."""
    path = REPORTS / "scale.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def committed_rows() -> list[dict]:
    return committed_report().get("details", [])


def report(work: Path, cmd: str, notes: list[str] = ()):
    """The reports from every row finished in ``work`` (rows of other invocations included),
    plus the committed report's rows that were not run again; ``notes`` (what the person who ran
    it says of the conditions) are added to the committed report's."""
    prev = committed_report()
    committed = {_row_key(r): r for r in prev.get("details", [])}
    rows = [r for r in (row_from_log(p) for p in sorted(work.glob("row-*.log"))) if r]
    for r in rows:   # a log from before logs named their command: the committed row's, else this one
        r.setdefault("measured_by", committed.get(_row_key(r), {}).get("measured_by") or cmd)
    have = {_row_key(r) for r in rows}
    rows += [r for k, r in committed.items() if k not in have]
    notes = prev.get("notes", []) + [n for n in notes if n not in prev.get("notes", [])]
    if rows:
        write_reports(rows, {"extrapolation": extrapolate(rows), "command": cmd, "notes": notes}, cmd)


if __name__ == "__main__":
    main()
