"""``mgd-ray status`` and ``mgd-ray export``: read a job's output files (no Ray needed)."""

from __future__ import annotations

import os

from .store import Store
from .units import decode_png


def _store(out: str, storage_options: dict | None) -> Store:
    st = Store(out, storage_options)
    if not st.exists("manifest.json"):
        raise FileNotFoundError(f"{out!r} has no manifest.json: not a mgd_ray output directory "
                                f"(expected the output.dir of a job)")
    return st


def status_text(out: str, storage_options: dict | None = None) -> str:
    st = _store(out, storage_options)
    m = st.read_json("manifest.json")
    shards = st.ls("shards", suffix=".parquet")
    c = m.get("counts", {})
    lines = [f"job {m.get('name')} ({m.get('method', {}).get('name')}) at {st.uri()}",
             f"  status: {m.get('status')}   runs: {m.get('runs')}   git: {m.get('git_commit')}",
             f"  model: {m.get('model', {}).get('source')}  classes: {len(m.get('classes', []))}",
             f"  shards committed: {len(shards)}" + (f" of {c['units']} units ({c.get('images')} images)"
                                                     if c.get("units") else ""),
             "  timings (s): " + ", ".join(f"{k} {v}" for k, v in m.get("timings", {}).items())]
    if st.exists("results.json"):
        r = st.read_json("results.json")
        lines.append(f"  results ({r['protocol']} v{r['protocol_version']}, ipc {r['ipc']}):")
        for kind, by in r["results"].items():
            for student, cell in by.items():
                gain = cell.get("gain_over_random_real")
                lines.append(f"    {kind:12s} {student:10s} final {100 * cell['final_acc_mean']:5.1f} "
                             f"± {100 * cell['final_acc_std']:.1f}  best {100 * cell['best_acc_mean']:5.1f} "
                             f"± {100 * cell['best_acc_std']:.1f}  (n={len(cell['runs'])})"
                             + (f"  gain {100 * gain:+.1f}" if gain is not None else ""))
        dist = r.get("distribution", {}).get("mean")
        if dist:
            lines.append("  distribution (mean over sets): " + ", ".join(
                f"{k} {v:.3g}" for k, v in dist.items() if k in ("fid", "mmd2_rbf_unbiased", "prior_fidelity",
                                                                  "coverage", "recall", "diversity")))
    if st.exists("failures.parquet"):
        lines.append(f"  unreadable input images: {st.read_table('failures.parquet').num_rows} (failures.parquet)")
    return "\n".join(lines)


def export_imagefolder(out: str, dest: str, storage_options: dict | None = None) -> int:
    st = _store(out, storage_options)
    n = 0
    for name in st.ls("shards", suffix=".parquet"):
        for r in st.read_table("shards", name, columns=["sample_id", "class_name", "image"]).to_pylist():
            d = os.path.join(dest, r["class_name"].replace("/", "_"))
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, f"{r['sample_id']}.png"), "wb") as f:
                f.write(r["image"])
            n += 1
    return n


__all__ = ["status_text", "export_imagefolder", "decode_png"]
