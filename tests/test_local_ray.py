"""A local Ray started by a job while another Ray runs on the same machine: the job's workers
(Ray Train's PlacementGroupCleaner among them) reach the job's own State API, not "the" local Ray."""

import json
import os
import subprocess
import sys

SECOND_RAY = """
import sys, ray
ray.init(num_cpus=1, include_dashboard=False)
print("up", flush=True)
sys.stdin.read()
ray.shutdown()
"""

JOB_RAY = """
import json, os, ray
from mgd_ray.config import JobConfig
from mgd_ray.pipeline.runner import init_ray
init_ray(JobConfig(ray={"num_cpus": 1}))

@ray.remote(num_cpus=0)
def ask():
    from ray.util.state import list_nodes   # what the cleaner's is_actor_alive does: address None
    return {"api": os.environ.get("RAY_API_SERVER_ADDRESS"), "nodes": [n.node_id for n in list_nodes()]}

print("RESULT " + json.dumps({**ray.get(ask.remote()), "mine": ray.get_runtime_context().get_node_id()}))
"""


def test_workers_reach_their_own_state_api_beside_another_ray(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env.update(RAY_USAGE_STATS_ENABLED="0", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE="disabled")
    other = subprocess.Popen([sys.executable, "-c", SECOND_RAY], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, env=env)
    try:
        assert other.stdout.readline().strip() == "up"
        r = subprocess.run([sys.executable, "-c", JOB_RAY], capture_output=True, text=True, timeout=300, env=env)
    finally:
        other.communicate("", timeout=120)
    found = [ln[7:] for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    assert found, r.stdout[-2000:] + r.stderr[-4000:]
    got = json.loads(found[0])
    assert got["api"].startswith("http://127.0.0.1:")
    assert got["nodes"] == [got["mine"]]          # the job's own one-node cluster, not the other Ray
