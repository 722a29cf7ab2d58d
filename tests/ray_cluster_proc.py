"""Run a multi-node Ray cluster in its own process until stdin closes (a test helper).

The test process keeps its own local Ray; this cluster lives outside it, as a user's
cluster would, and is reached with ``--address``.
"""

from __future__ import annotations

import json
import sys

from ray.cluster_utils import Cluster


def main() -> None:
    nodes = json.loads(sys.argv[1])  # add_node kwargs; the first one is the head
    cluster = Cluster(initialize_head=True, connect=False, head_node_args=nodes[0])
    for node in nodes[1:]:
        cluster.add_node(**node)
    cluster.wait_for_nodes()
    print(cluster.address, flush=True)
    try:
        sys.stdin.read()
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    main()
