"""Run (or resume) the quality benchmark's cells: one real ``mgd_ray.distill`` job per cell, all
cells sharing one latent cache. A finished cell (its ``results.json``) is skipped, an interrupted
one resumes from its committed shards and trials."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import yaml

from benchmarks.quality.cells import cell_dir, cell_overrides, cells_for

log = logging.getLogger("mgd_ray")


def base_raw(job_file: str) -> dict:
    return yaml.safe_load(Path(job_file).read_text())


def ensure_latents(root: Path, raw: dict, args) -> Path:
    """Encode the training set once (a job with only the encode stage); cells link to it."""
    from mgd_ray.config import job_from_dict
    from mgd_ray.pipeline.driver import run_job
    enc = root / "_encode"
    if not (enc / "latents" / "_COMPLETE.json").is_file():
        run_job(job_from_dict(raw, [f"output.dir={enc}", "name=q-encode", *(args.set or [])]), ["encode"])
    return enc / "latents"


def run_cells(args) -> None:
    from mgd_ray.config import job_from_dict
    from mgd_ray.pipeline.driver import run_job, setup_logging
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


