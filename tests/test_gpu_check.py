"""benchmarks.gpu_check in its CPU dry mode: the report's structure, figures measured by the run,
and that a section's failure or timeout is recorded while the others still run."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(600)


def _num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def test_dry_run_writes_a_complete_report(tmp_path):
    committed = [ROOT / "benchmarks" / "reports" / f"gpu.{ext}" for ext in ("json", "md")]
    before = {p: p.stat().st_mtime_ns for p in committed if p.exists()}
    out = tmp_path / "report"
    r = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--dry", "--out", str(out),
                        "--workdir", str(tmp_path / "work")],
                       cwd=ROOT, capture_output=True, text=True, timeout=540,
                       env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    data = json.loads((out / "gpu.json").read_text())
    md = (out / "gpu.md").read_text()
    # the dry run never writes the committed report
    assert {p: p.stat().st_mtime_ns for p in committed if p.exists()} == before

    from benchmarks.gpu_check import DRY, SECTIONS
    assert data["mode"].startswith("dry") and data["device"] == "cpu"
    assert list(data["sections"]) == list(SECTIONS)
    for name, sec in data["sections"].items():
        assert sec["status"] == "ok", (name, sec.get("error"), sec.get("traceback"))
        assert _num(sec["seconds"]) and 0 <= sec["seconds"] <= sec["budget_s"] + 5, name
        assert f"| {name} | ok |" in md
    env = data["sections"]["env"]["figures"]
    assert env["torch"] and env["device_name"] and env["diffusers"][0].isdigit()

    dit = data["sections"]["dit_generation"]["figures"]
    assert dit["batch"] == DRY.batch and dit["steps"] == DRY.steps and dit["finite"] is True
    assert dit["guidance"]["basis"] == "members" and dit["guidance"]["d"] == 8 and dit["guidance"]["K"] == 16
    assert dit["steps_guided"] == 2 and dit["steps_unguided"] == 2      # t_stop 1 of 4: t = 3, 2 guided
    for k in ("images_per_s", "cfg_only_images_per_s", "step_ms_guided", "step_ms_unguided",
              "guidance_ms_per_step", "sample_s", "params_M"):
        assert _num(dit[k]) and dit[k] > 0, k
    assert dit["images_per_s"] == pytest.approx(dit["batch"] / dit["sample_s"])
    assert 0 < dit["guidance_share_of_guided_step"] < 1
    assert dit["guidance_ms_per_step"] < dit["step_ms_guided"]

    vae = data["sections"]["vae_encode"]["figures"]
    assert vae["latent_shape"] == [4, 16, 16] and vae["finite"] is True     # 32 px, one downsampling
    assert vae["encode_images_per_s"] > 0 and vae["decode_images_per_s"] > 0
    assert vae["encode_images_per_s"] == pytest.approx(vae["encode_batch"] * DRY.encode_batches / vae["encode_s"])

    st = data["sections"]["student_epoch"]["figures"]
    from mgd_ray.config import load_job
    # every student of both protocols of the job file, each at its protocol's settings
    job = load_job(ROOT / "jobs" / "imagenet1k.yaml")
    assert list(st["students"]) == [f"{n}/{s}" for n, v in job.evaluations() for s in v.evaluate.students]
    assert {s["protocol"] for s in st["students"].values()} == {"soft-label-imagenet", "hard-label",
                                                                  "hard-label-imagenet"}
    for name, s in st["students"].items():
        assert s["train_images_per_s"] > 0 and s["epoch_s"] == pytest.approx(st["images"] / s["train_images_per_s"])

    twin = data["sections"]["twin_e2e"]["figures"]
    assert twin["exit_status"] == 0 and twin["plan_only"] is True and twin["wall_s"] > 0
    assert "jobs/imagenet1k-twin.yaml" in twin["command"] and "model.device=cpu" in twin["command"]

    rows = data["summary"]
    assert {r["section"] for r in rows} >= {"dit_generation", "vae_encode", "student_epoch", "twin_e2e"}
    assert all(_num(r["value"]) and r["value"] > 0 for r in rows if r["unit"] != "per step")
    assert "## Figures" in md and "guidance share of a guided step" in md


def test_a_failed_or_slow_section_is_recorded_and_the_rest_run(tmp_path, monkeypatch):
    import benchmarks.gpu_check as gc

    def broken(ctx, fig):
        fig["partial"] = 1.0
        raise RuntimeError("planted failure")

    def slow(ctx, fig):
        fig["started"] = 1.0
        t_end = time.time() + 30
        while time.time() < t_end:
            time.sleep(0.02)
    monkeypatch.setattr(gc, "section_vae_encode", broken)
    monkeypatch.setattr(gc, "section_student_epoch", slow)
    monkeypatch.setattr(gc, "MIN_SECTION_S", 0.1)
    monkeypatch.setitem(gc.BUDGET_S, "student_epoch", 1.0)
    outer = signal.getitimer(signal.ITIMER_REAL)[0]                     # pytest-timeout's, if any
    ctx = gc.Ctx("cpu", gc.DRY, tmp_path, True)
    t0 = time.time()
    secs = gc.run_sections(ctx, 60, only=("env", "vae_encode", "student_epoch"))
    assert time.time() - t0 < 20                                       # the slow section was cut at 1 s
    assert secs["env"]["status"] == "ok"
    assert secs["vae_encode"]["status"] == "failed" and "planted failure" in secs["vae_encode"]["error"]
    assert secs["vae_encode"]["figures"] == {"partial": 1.0}            # what was measured is kept
    assert secs["student_epoch"]["status"] == "timeout" and secs["student_epoch"]["figures"] == {"started": 1.0}
    assert secs["dit_generation"]["status"] == secs["twin_e2e"]["status"] == "skipped"
    if outer > 0:                                                       # the outer timer still runs
        assert signal.getitimer(signal.ITIMER_REAL)[0] > 0
    gc.write(tmp_path / "r", {"date": "now", "mode": "dry", "total_s": 1.0, "budget_s": 60, "command": "x",
                              "sections": secs, "summary": gc.summary_rows(secs)})
    md = (tmp_path / "r" / "gpu.md").read_text()
    assert "| vae_encode | failed |" in md and "| student_epoch | timeout |" in md
