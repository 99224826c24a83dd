"""Benchmarks (scripts, not tests), run from a checkout of the repository; not part of the
installed ``mgd_ray`` package, which reads none of their reports. Each writes
``benchmarks/reports/<name>.{json,md}``:

    python -m benchmarks.guidance_cost
    python -m benchmarks.coreset_speed [--quick] [--sizes 1300,100000]
    python -m benchmarks.pipeline_throughput [--images 20000]
    python -m benchmarks.eval_data [--images 6000] [--runs 3]
    python -m benchmarks.guidance_strength --cell out/bench-quality/ipc10/manifoldgd-expected-leaves
    python -m benchmarks.guidance_strength --synthetic --name latent4096
    python -m benchmarks.quality {run,diagnose,report} ...
    python -m benchmarks.eval_throughput     # needs torchvision (torch 2.14.1 + torchvision 0.29.1)
"""
from __future__ import annotations

import json
import os
import platform
import resource
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REPORTS = Path(__file__).parent / "reports"


def relative_to_repo(path) -> str:
    """A path as recorded in a committed report: relative to the repository root when it is inside
    the checkout (reports must not carry this machine's absolute paths), else its last two parts."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(REPO))
    except ValueError:
        return str(Path(*p.parts[-2:]))


def peak_rss_mb(children: bool = False) -> float:
    """Peak resident set size of this process (or of its waited-for children), MiB (Linux: KiB units)."""
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    """Current resident set size from /proc/self/status, MiB (0 if unavailable)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def machine() -> dict:
    """What the numbers were measured on."""
    import numpy as np
    import torch

    info = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "numpy": np.__version__,
            "loadavg_at_start": open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else None,
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        import faiss
        info["faiss"] = faiss.__version__
    except ImportError:
        pass
    return info


def md_table(rows: list[dict], cols: list[str]) -> str:
    """Markdown table of the given columns."""
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |")
    return "\n".join(out)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.4e}"
    return str(v)


def write_report(name: str, data: dict, markdown: str, directory: Path | None = None) -> tuple[Path, Path]:
    """Write reports/<name>.json and reports/<name>.md (or under ``directory``); -> their paths."""
    d = Path(directory) if directory else REPORTS
    d.mkdir(parents=True, exist_ok=True)
    pj, pm = d / f"{name}.json", d / f"{name}.md"
    pj.write_text(json.dumps(data, indent=2, default=str) + "\n")
    pm.write_text(markdown.rstrip() + "\n")
    return pj, pm
