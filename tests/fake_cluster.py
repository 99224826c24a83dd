"""An autoscaling multi-node Ray cluster on this machine: Ray's fake multi-node provider.

Mirrors cluster/aws.yaml: a head with ``CPU: 0`` (only the job's driver and the autoscaler run
there) and worker types that all start at ``min_workers: 0``; the real autoscaler launches
"nodes" (extra raylets on this machine) when work waits for resources and removes them when idle.

Two traps of ``ray.cluster_utils.AutoscalingCluster`` on Ray 2.60 (field notes section 12) are
avoided: its config template is not in the wheel (we write the whole config), and its start/stop
run ``ray stop --force``, which kills every Ray on the machine. Here every port is a free random
one (GCS, dashboard, client server, agents, metrics; the provider is told the GCS address, else it
assumes 6379), the head runs with ``--block`` in its own session under a private temp dir, and
``stop()`` ends only the processes of this cluster: the head's process tree, plus any process
whose command line names the private temp dir (worker raylets the autoscaler started).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from ray.util.state.exception import RayStateApiException

HEAD_TYPE = "ray.head.default"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_env() -> dict:
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
           "RAY_USAGE_STATS_ENABLED": "0", "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
           # a SIGTERMed head would first try to drain its node through the GCS (30 s by default), but
           # the GCS gets the same signal: the drain only times out
           "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
    env.pop("RAY_ADDRESS", None)
    return env


class FakeCluster:
    """``worker_types``: name -> {"resources": {...}, "max_workers": n} (min_workers is 0)."""

    def __init__(self, worker_types: dict, idle_timeout_minutes: float = 0.2, max_workers: int = 4):
        self.worker_types = worker_types
        self.idle_timeout_minutes = idle_timeout_minutes
        self.max_workers = max_workers
        self.ray_bin = str(Path(sys.executable).parent / "ray")
        self.head: subprocess.Popen | None = None
        self.temp = ""
        self.gcs_port = self.dash_port = 0

    # ---- config ------------------------------------------------------------------------------
    def config(self) -> dict:
        types = {HEAD_TYPE: {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0}}
        for name, t in self.worker_types.items():
            types[name] = {"resources": dict(t["resources"]), "node_config": {}, "min_workers": 0,
                           "max_workers": int(t["max_workers"])}
        return {
            "cluster_name": f"fake-{self.gcs_port}",
            "max_workers": self.max_workers,
            "upscaling_speed": 2.0,
            "idle_timeout_minutes": self.idle_timeout_minutes,
            "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                         "disable_launch_config_check": True, "gcs_address": f"127.0.0.1:{self.gcs_port}"},
            "auth": {"ssh_user": "ray"},
            "available_node_types": types,
            "head_node_type": HEAD_TYPE,
            "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
            "rsync_exclude": [], "rsync_filter": [],
            "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
            "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
        }

    @property
    def address(self) -> str:
        """The job server (``ray job submit --address``)."""
        return f"http://127.0.0.1:{self.dash_port}"

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self, timeout: float = 240, attempts: int = 3):
        """Start the head; a head that dies while starting (on a busy machine Ray's fixed 30 s
        raylet start-up wait can run out) is cleaned up and started again on fresh ports."""
        for attempt in range(attempts):
            try:
                return self._start_once(timeout)
            except (RuntimeError, TimeoutError) as e:
                tail = Path(self.log.name).read_text()[-1500:] if getattr(self, "log", None) else ""
                self.stop()
                if attempt == attempts - 1:
                    raise RuntimeError(f"{e}\n--- head log ---\n{tail}") from None
            except BaseException:   # interrupted while starting: leave nothing behind
                self.stop()
                raise

    def _start_once(self, timeout: float):
        self.temp = tempfile.mkdtemp(prefix="rfk", dir="/tmp")  # short: unix socket paths are limited
        self.gcs_port, self.dash_port = free_port(), free_port()
        cfg = Path(self.temp) / "autoscaling.json"
        cfg.write_text(json.dumps(self.config()))
        ports = {"--port": self.gcs_port, "--dashboard-port": self.dash_port,
                 "--ray-client-server-port": free_port(), "--dashboard-agent-listen-port": free_port(),
                 "--dashboard-agent-grpc-port": free_port(), "--metrics-export-port": free_port(),
                 "--runtime-env-agent-port": free_port(), "--node-manager-port": free_port(),
                 "--object-manager-port": free_port()}
        cmd = [self.ray_bin, "start", "--head", "--block", "--num-cpus=0", f"--autoscaling-config={cfg}",
               "--dashboard-host=127.0.0.1", "--node-ip-address=127.0.0.1", f"--temp-dir={self.temp}",
               "--disable-usage-stats", *[f"{k}={v}" for k, v in ports.items()]]
        env = ray_env()
        env["PATH"] = f"{Path(self.ray_bin).parent}{os.pathsep}{env.get('PATH', '')}"  # the provider calls `ray`
        self.log = open(Path(self.temp) / "head.log", "w")
        self.head = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

        def up():
            if self.head.poll() is not None:
                raise RuntimeError(f"ray start --head exited ({self.head.returncode})")
            return self.job_server_up() and any(n["is_head"] for n in self.nodes())

        self.wait_for(up, timeout, "the fake cluster's head and job server")
        return self

    def job_server_up(self) -> bool:
        r = subprocess.run([self.ray_bin, "job", "list", "--address", self.address], env=ray_env(),
                           capture_output=True, text=True)
        return r.returncode == 0

    def processes(self) -> list[psutil.Process]:
        """Every live process of this cluster (and nothing else)."""
        found = {}
        if self.head is not None:
            try:
                root = psutil.Process(self.head.pid)
                for p in [root, *root.children(recursive=True)]:
                    found[p.pid] = p
            except psutil.NoSuchProcess:
                pass
        if self.temp:
            me = os.getuid()
            for p in psutil.process_iter(["pid", "cmdline", "uids"]):
                try:
                    if p.info["uids"] and p.info["uids"].real == me and any(
                            self.temp in a for a in (p.info["cmdline"] or [])):
                        found.setdefault(p.pid, p)
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
        found.pop(os.getpid(), None)
        return list(found.values())

    def stop(self):
        """End this cluster's processes only (never ``ray stop``)."""
        procs = self.processes()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for p in procs:
                try:
                    p.send_signal(sig)
                except psutil.NoSuchProcess:
                    pass
            _, procs = psutil.wait_procs(procs, timeout=20)
            if not procs:
                break
        procs = self.processes()  # anything started while we were stopping
        for p in procs:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        if self.head is not None:
            self.head.wait(timeout=30)
        if getattr(self, "log", None):
            self.log.close()
        shutil.rmtree(self.temp, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # ---- what the cluster looks like -----------------------------------------------------------
    def nodes(self) -> list[dict]:
        """Alive nodes: [{"node_id", "node_type", "resources", "is_head"}] (from the dashboard)."""
        from ray.util.state import list_nodes
        out = []
        for n in list_nodes(address=self.address, filters=[("state", "=", "ALIVE")], raise_on_missing_output=False):
            out.append({"node_id": n.node_id, "node_type": (n.labels or {}).get("ray.io/node-group", ""),
                        "resources": dict(n.resources_total or {}), "is_head": bool(n.is_head_node)})
        return out

    def workers(self) -> list[dict]:
        return [n for n in self.nodes() if not n["is_head"]]

    def wait_for(self, pred, timeout: float, what: str, every: float = 2.0):
        """Poll ``pred`` until it returns something true; a connection error (a dashboard that is
        still starting on a busy machine) counts as not yet."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                v = pred()
            except (OSError, RayStateApiException):
                v = None
            if v:
                return v
            time.sleep(every)
        raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
