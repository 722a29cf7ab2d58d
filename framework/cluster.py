"""What the cluster offers: nodes with CPUs, GPUs, memory, accelerator types and custom resources.

The planner sizes stages from this and refuses a stage that no node could ever run,
instead of letting Ray wait forever for resources that do not exist.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field

import psutil

ACCELERATOR_PREFIX = "accelerator_type:"
# Ray Data's own bookkeeping tasks (file listing) each ask for one whole logical CPU for
# a few milliseconds. A local Ray started by infer-run counts one such spare CPU on top
# of the machine's cores, marked by this resource, so listing never waits behind model
# actors that were sized to the real cores.
SPARE_CPU = "infer_run_spare_cpu"
_STANDARD = {"CPU", "GPU", "memory", "object_store_memory", SPARE_CPU}


@dataclass(frozen=True)
class Node:
    node_id: str
    address: str
    cpus: float  # the CPUs to size stages by; Ray's logical count is cpus + spare_cpus
    gpus: float = 0.0
    memory: float = 0.0
    custom: dict[str, float] = field(default_factory=dict)
    spare_cpus: float = 0.0

    @property
    def accelerator_types(self) -> set[str]:
        return {
            k[len(ACCELERATOR_PREFIX) :] for k in self.custom if k.startswith(ACCELERATOR_PREFIX)
        }

    def describe(self) -> str:
        parts = [f"{self.cpus:g} CPUs", f"{self.gpus:g} GPUs"]
        if self.memory:
            parts.append(f"{self.memory / 2**30:.3g} GiB memory")
        parts += [f"{k}={v:g}" for k, v in sorted(self.custom.items())]
        return f"{self.address} ({', '.join(parts)})"


@dataclass(frozen=True)
class Cluster:
    nodes: tuple[Node, ...]
    source: str

    @property
    def cpus(self) -> float:
        return sum(n.cpus for n in self.nodes)

    @property
    def gpus(self) -> float:
        return sum(n.gpus for n in self.nodes)

    @property
    def logical_cpus(self) -> float:
        return sum(n.cpus + n.spare_cpus for n in self.nodes)

    def describe(self) -> str:
        count = len(self.nodes)
        nodes = "; ".join(n.describe() for n in self.nodes)
        return f"{self.source}: {count} node{'s' if count != 1 else ''}: {nodes}"


def _local_gpus() -> int:
    # Counted without importing torch or creating a CUDA context on the driver.
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    if not shutil.which("nvidia-smi"):
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def local_cluster(num_cpus: float | None = None, num_gpus: float | None = None) -> Cluster:
    """This machine, as a local Ray started for the run would see it."""
    cpus = num_cpus if num_cpus is not None else len(os.sched_getaffinity(0))
    gpus = num_gpus if num_gpus is not None else _local_gpus()
    # The whole of this machine's memory: Ray grants tasks less, so only an ask that could
    # never fit is refused before Ray starts; the run checks again against Ray's figure.
    memory = float(psutil.virtual_memory().total)
    gpu_type = _local_gpu_type() if gpus else None
    custom = {f"{ACCELERATOR_PREFIX}{gpu_type}": 1.0} if gpu_type else {}
    node = Node("local", "localhost", float(cpus), float(gpus), memory, custom, spare_cpus=1.0)
    return Cluster((node,), "this machine")


def _local_gpu_type() -> str | None:
    """The ``accelerator_type`` Ray will offer for this machine's GPUs (its name read from
    NVML, as ``A100``), so that --plan and --validate accept a model asking for it."""
    try:
        from ray._private.accelerators import NvidiaGPUAcceleratorManager
    except ImportError:  # moved in another Ray: unknown, as before Ray starts
        return None
    return NvidiaGPUAcceleratorManager.get_current_node_accelerator_type()


def ray_cluster(address: str = "the Ray cluster") -> Cluster:
    """The alive nodes of the Ray cluster this process is connected to."""
    import ray

    nodes = []
    for n in ray.nodes():
        if not n.get("Alive"):
            continue
        res = n.get("Resources", {})
        custom = {
            k: float(v) for k, v in res.items() if k not in _STANDARD and not k.startswith("node:")
        }
        spare = float(res.get(SPARE_CPU, 0))
        nodes.append(
            Node(
                node_id=n["NodeID"],
                address=n.get("NodeManagerAddress", "?"),
                cpus=float(res.get("CPU", 0)) - spare,
                spare_cpus=spare,
                gpus=float(res.get("GPU", 0)),
                memory=float(res.get("memory", 0)),
                custom=custom,
            )
        )
    return Cluster(tuple(nodes), address)
