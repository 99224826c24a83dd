"""`ray start --head` on loopback + `ray job submit -- python -m mgd_ray.distill JOB` + check the
outputs + stop THAT cluster (the `--block` head process owns it; `ray stop` would stop every Ray
on the machine, including the test session's)."""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from tests.test_pipeline import twin_dict

ROOT = Path(__file__).resolve().parents[1]
# slow: flaky on a loaded 2-core box (the job agent sometimes never registers); run with -m slow
pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(900)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_job_submit(tiny_prior, tmp_path):
    ray_bin = str(Path(sys.executable).parent / "ray")
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
           "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    gcs, dash = _free_port(), _free_port()
    temp = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: unix socket paths have a length limit
    head = subprocess.Popen([ray_bin, "start", "--head", "--block", f"--port={gcs}", "--num-cpus=4",
                             "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--temp-dir={temp}",
                             "--disable-usage-stats", "--node-ip-address=127.0.0.1"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            r = subprocess.run([ray_bin, "job", "list", "--address", address], env=env, capture_output=True,
                               text=True)
            if r.returncode == 0:
                break
            assert head.poll() is None, "ray start --head exited"
            time.sleep(2)
        else:
            pytest.fail("the Ray job server did not come up")
        out = tmp_path / "out"
        job = tmp_path / "job.yaml"
        job.write_text(yaml.safe_dump(twin_dict(out, tiny_prior, evaluate={"enabled": False})))
        for _ in range(30):  # the job agent can lag behind the job server on a busy machine
            r = subprocess.run([ray_bin, "job", "submit", "--address", address, "--",
                                sys.executable, "-m", "mgd_ray.distill", str(job)],
                               env=env, capture_output=True, text=True, timeout=700, cwd=ROOT)
            if "No available agent" not in r.stdout + r.stderr:
                break
            time.sleep(4)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert "succeeded" in (r.stdout + r.stderr)
        assert "attached to Ray cluster" in r.stdout  # it used the submitted-to cluster, not a new one
        man = json.loads((out / "manifest.json").read_text())
        assert man["status"] == "complete" and man["counts"]["images"] == 20
        assert len(list((out / "shards").glob("*.parquet"))) == 10
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # --block: stopping the head process stops its cluster
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
