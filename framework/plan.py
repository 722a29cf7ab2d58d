"""Spec → plan: a short tuple of read, map and write nodes with every Ray argument decided.

Building a plan never starts Ray, so ``--plan`` and the tests can inspect it cheaply.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from framework.cluster import Cluster
from framework.sizing import Sized, size_resources
from framework.spec.schema import Spec, StageConfig

# Models keep an accelerator busy only with batches; tasks use Ray Data's own default.
DEFAULT_MODEL_BATCH_SIZE = 64
# Ray Data hands a task, or an actor of a pool, whole blocks, and sizes blocks by bytes: a
# 16 MB block of small rows (numbers, short texts) held 20,000 rows, which one task, or one
# actor, then worked through alone while the other CPUs or actors idled. A stage with a
# batch size gets blocks of at most this many of its batches, where that costs no extra
# pass over the data: cut in the task before it (the reader's, or a CPU stage's before a
# model's pool). Image rows fill a block long before that (16 MB: about 100 photos).
BATCHES_PER_BLOCK = 4


@dataclass(frozen=True)
class ReadNode:
    stage: StageConfig
    limit: int | None = None
    num_cpus: float | None = None  # per read task
    reason: str = ""
    max_tasks: int | None = None  # read tasks at once; None: as many as Ray Data starts


@dataclass(frozen=True)
class MapNode:
    stage: StageConfig
    compute: str  # "tasks" or "actors"
    batch_size: int | None
    pool: tuple[int, int] | None = None  # (min, max) actors
    max_tasks_in_flight_per_actor: int | None = None
    ray_args: dict[str, Any] = field(default_factory=dict)  # num_cpus, num_gpus, memory, ...
    reason: str = ""
    max_tasks: int | None = None  # compute "tasks": at once; None: as many as Ray Data starts
    block_rows: int | None = None  # rows per input block at most (BATCHES_PER_BLOCK); None: any

    @property
    def name(self) -> str:
        """The Ray Data operator's name shows as ``MapBatches(<name>)``."""
        return f"{self.stage.path}:{self.stage.type}".replace("[", "_").replace("]", "")


@dataclass(frozen=True)
class WriteNode:
    stage: StageConfig
    num_cpus: float | None = None  # per write task
    reason: str = ""
    max_tasks: int | None = None  # write tasks at once; None: as many as Ray Data starts


PlanNode = ReadNode | MapNode | WriteNode


@dataclass(frozen=True)
class Plan:
    nodes: tuple[PlanNode, ...]
    spec: Spec
    cluster: Cluster

    def describe(self) -> str:
        """The human-readable plan printed by ``--plan``: what each stage gets, and why."""
        lines = [f"cluster: {self.cluster.describe()}"]
        for i, node in enumerate(self.nodes):
            stage = node.stage
            head = f"{i}. {stage.kind:<12} {stage.path:<18} {stage.type}"
            if isinstance(node, ReadNode):
                limit = f" limit={node.limit}" if node.limit else ""
                tasks = f" tasks<={node.max_tasks}" if node.max_tasks else ""
                lines.append(f"{head}  num_cpus={node.num_cpus:g}{tasks}{limit}")
            elif isinstance(node, MapNode):
                pool = "tasks"
                if node.pool:  # a fixed pool as the spec says it, `actors=3`, not `3..3`
                    low, high = node.pool
                    pool = f"actors={low}" if low == high else f"actors={low}..{high}"
                pool += f"<={node.max_tasks}" if node.max_tasks else ""
                queued = node.max_tasks_in_flight_per_actor
                pool += f" max_tasks_in_flight_per_actor={queued}" if queued else ""
                args = " ".join(
                    f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in node.ray_args.items()
                )
                cut = f" block_rows<={node.block_rows}" if node.block_rows else ""
                batch = node.batch_size or "ray-default"
                lines.append(f"{head}  {pool} batch_size={batch}{cut} {args}")
            else:
                tasks = f" tasks<={node.max_tasks}" if node.max_tasks else ""
                where = stage.params.get("path", "")
                lines.append(f"{head}  num_cpus={node.num_cpus:g}{tasks} -> {where}")
            lines.append(f"{'':<3}{node.reason}")
        return "\n".join(lines)


def build_plan(spec: Spec, cluster: Cluster) -> Plan:
    """The plan for ``spec`` on ``cluster``: unset resources chosen by ``size_resources``."""
    sized = size_resources(spec, cluster)
    read = sized[spec.reader.path]
    nodes: list[PlanNode] = [
        ReadNode(spec.reader, spec.run.limit, read.resources.num_cpus, read.reason, read.max_tasks)
    ]
    for stage in spec.stages:
        node = _map_node(stage, sized[stage.path])
        previous = nodes[-1]
        after_a_task = isinstance(previous, ReadNode) or (
            isinstance(previous, MapNode)
            and previous.compute == "tasks"
            and node.compute == "actors"
        )
        if node.batch_size and after_a_task:
            node = dataclasses.replace(node, block_rows=BATCHES_PER_BLOCK * node.batch_size)
        nodes.append(node)
    write = sized[spec.writer.path]
    nodes.append(WriteNode(spec.writer, write.resources.num_cpus, write.reason, write.max_tasks))
    return Plan(tuple(nodes), spec, cluster)


def _map_node(stage: StageConfig, sized: Sized) -> MapNode:
    r = sized.resources
    pool = None
    if stage.in_actors:
        pool = r.pool_sizes()
    ray_args: dict[str, Any] = {"num_cpus": r.num_cpus if r.num_cpus is not None else 1}
    if r.num_gpus:
        ray_args["num_gpus"] = r.num_gpus
    if r.memory:
        ray_args["memory"] = r.memory
    if r.accelerator_type:
        ray_args["accelerator_type"] = r.accelerator_type
    if r.custom:
        ray_args["resources"] = dict(r.custom)
    batch_size = r.batch_size
    # Ray Data refuses GPU tasks without a batch size, so a CPU stage given GPUs gets one too.
    if batch_size is None and (stage.kind == "model" or r.num_gpus):
        batch_size = DEFAULT_MODEL_BATCH_SIZE
    return MapNode(
        stage=stage,
        compute="actors" if stage.in_actors else "tasks",
        batch_size=batch_size,
        pool=pool,
        max_tasks_in_flight_per_actor=r.max_tasks_in_flight_per_actor,
        ray_args=ray_args,
        reason=sized.reason,
        max_tasks=None if stage.in_actors else sized.max_tasks,
    )
