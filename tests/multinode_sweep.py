"""Run a sweep on a local multi-node Ray cluster (a CPU-less head and two 1-CPU worker nodes).

Used by tests/test_clusters.py in its own process:  python tests/multinode_sweep.py CONFIG STORAGE
Prints one JSON line: the node ids of the head and of the workers.
"""

from __future__ import annotations

import json
import sys

import ray
from ray.cluster_utils import Cluster

from repair_ray.sweep.config import load_config
from repair_ray.sweep.runner import run_sweep


def main(config_path: str, storage: str) -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    try:
        config = load_config(config_path, storage_override=storage)
        run_sweep(config, address=cluster.address, say=lambda m: print(m, file=sys.stderr))
        print(json.dumps({"head": cluster.head_node.node_id, "workers": [w.node_id for w in workers]}))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
