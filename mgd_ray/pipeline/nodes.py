"""Where each stage's work ran (``manifest.json`` -> ``nodes``).

A worker of a stage (encoder actor, coreset task, generator actor, Train worker) calls
``record_node(store, stage)``: one small file ``_nodes/<stage>/<node id>.json`` per node (workers
on the same node write the same bytes). After the stage the driver lists them with ``stage_nodes``, adding what Ray
knows of each node (its node type, resources, whether it is the driver's node), so a platform
engineer (or a test) can see that GPU work ran on GPU nodes and nothing heavy on the head.
"""

from __future__ import annotations

import os

from .store import Store

NODE_TYPE_LABEL = "ray.io/node-group"   # Ray's label for the cluster launcher / KubeRay node type


def record_node(store: Store, stage: str):
    """Record this process's Ray node for ``stage``."""
    import ray
    node_id = ray.get_runtime_context().get_node_id()
    store.write_json({"node_id": node_id, "node_type": os.environ.get("RAY_NODE_TYPE_NAME", "")},
                     "_nodes", stage, f"{node_id}.json")


def stage_nodes(store: Store, stage: str) -> list[dict]:
    """-> one entry per node the stage's work ran on: node_id, node_type, resources, head."""
    import ray
    known = {n["NodeID"]: n for n in ray.nodes()}
    here = ray.get_runtime_context().get_node_id()
    out = []
    for name in store.ls("_nodes", stage, suffix=".json"):
        rec = store.read_json("_nodes", stage, name)
        n = known.get(rec["node_id"], {})
        out.append({"node_id": rec["node_id"],
                    "node_type": (n.get("Labels") or {}).get(NODE_TYPE_LABEL) or rec.get("node_type") or "",
                    "resources": {k: v for k, v in (n.get("Resources") or {}).items()
                                  if k in ("CPU", "GPU") or not k.startswith("node:")},
                    "driver_node": rec["node_id"] == here})
    return sorted(out, key=lambda r: r["node_id"])


def clear_nodes(store: Store, stage: str):
    store.rm("_nodes", stage)
