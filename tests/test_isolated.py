"""The driver's model facts come from a child process (``mgd_ray.isolated``), so the driver never
imports torch: results and exceptions cross unchanged, a dead child is a clear error, a script
without a ``__main__`` guard is not run twice, and a whole job's driver ends with no torch loaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mgd_ray import isolated
from mgd_ray.models import ModelError

ROOT = Path(__file__).resolve().parents[1]


def test_results_and_exceptions_cross_unchanged():
    try:
        assert isolated.call(os.getpid) != os.getpid()                   # it ran elsewhere
        assert isolated.call(divmod, 17, 5) == (3, 2)
        with pytest.raises(ModelError, match="no config.json"):           # the caller's own error type
            isolated.call(_raise_model_error, "no config.json here")
        pid = isolated.call(os.getpid)
        assert isolated.call(os.getpid) == pid                            # one child serves the calls
    finally:
        isolated.shutdown()
    assert isolated.call(os.getpid) != pid                                # a new one after shutdown
    isolated.shutdown()


def _raise_model_error(msg):
    raise ModelError(msg)


def test_a_child_that_dies_is_a_clear_error():
    try:
        with pytest.raises(RuntimeError, match=r"ended without an answer \(exit code -9"):
            isolated.call(os.kill, isolated.call(os.getpid), 9)
        assert isolated.call(divmod, 7, 2) == (3, 1)                      # the next call starts a new child
    finally:
        isolated.shutdown()


def test_a_script_without_a_main_guard_runs_once(tmp_path):
    """multiprocessing's spawn would re-run this script in the child (and so its job)."""
    runs = tmp_path / "runs.txt"
    script = tmp_path / "user_script.py"
    script.write_text(textwrap.dedent(f"""
        import os
        from mgd_ray import isolated
        with open({str(runs)!r}, "a") as f:
            f.write("run\\n")
        print(isolated.call(os.getpid) != os.getpid())
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"
    assert runs.read_text().count("run") == 1


def test_the_driver_of_a_whole_job_never_imports_torch(tmp_path):
    """All four stages on the digits prior through the real CLI: the preflight's model facts and the
    plan's FLOP counts come from the child, the TorchTrainer is fitted in a Ray task and the
    distribution metrics run in one; torch is not in the driver's modules at the end."""
    probe = textwrap.dedent(f"""
        import atexit, runpy, sys
        atexit.register(lambda: print("DRIVER_TORCH", "torch" in sys.modules, "diffusers" in sys.modules))
        sys.argv = ["mgd_ray.distill", "jobs/digits.yaml", "--set", "output.dir={tmp_path / 'out'}",
                    "--set", "evaluate.train_seeds=1", "--set", "evaluate.epochs=1", "--set", "evaluate.n_evals=1",
                    "--set", "generate.ipc=1", "--set", "sampler.steps=2",
                    "--set", "guidance.t_stop=0", "--set", "data.limit_per_class=20", "--set", "ray.num_cpus=2"]
        runpy.run_module("mgd_ray.distill", run_name="__main__")
    """)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["protocols"][0]["results"] and "distribution" in results
    assert "DRIVER_TORCH False False" in out.stdout, out.stdout[-2000:]


def test_the_child_follows_the_callers_environment(monkeypatch):
    """Libraries read their settings (HF_HOME, HF_HUB_OFFLINE) when imported: a call made after the
    environment changed runs in a new child started with it."""
    try:
        monkeypatch.setenv("MGD_RAY_ISOLATED_PROBE", "one")
        first = isolated.call(os.getpid)
        assert isolated.call(_env, "MGD_RAY_ISOLATED_PROBE") == "one"
        assert isolated.call(os.getpid) == first                              # same environment: same child
        monkeypatch.setenv("MGD_RAY_ISOLATED_PROBE", "two")
        assert isolated.call(_env, "MGD_RAY_ISOLATED_PROBE") == "two"
        assert isolated.call(os.getpid) != first
    finally:
        isolated.shutdown()


def _env(name: str):
    return os.environ.get(name)
