"""``--plan --calibrate N``: each stage timed on N sample rows where and as the run would
run it, and from that the run's bottleneck and throughput, before the run starts.

Reading is timed by Ray Data's own figures for the sample's read tasks. Every stage is
built in a Ray actor asking for the stage's own resources (so a model lands on a GPU node
and picks its GPU, a CPU stage gets its torch threads), warmed up on the sample, then
timed on it. Each figure is scaled by the workers the plan lets the stage run at once;
reading and the stages that run as tasks share the CPUs that the actor pools leave. The
slowest stage bounds the run. Stages are timed one at a time on an idle cluster, and
writing is not timed, so the prediction is an upper bound.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import ray

from framework.allocator import hold_freed_memory
from framework.compile import EMITTERS, RunContext
from framework.components import ID_COLUMN, Batch
from framework.dead_letter import ErrorPolicy
from framework.errors import InputError, RunError
from framework.failures import user_cause
from framework.plan import MapNode, Plan, ReadNode
from framework.report import operator_figures
from framework.worker import SKIP_HINT, StageRunner

# The best of a few timed passes over the sample, after one untimed warm-up pass.
TIMED_PASSES = 2


def read_sample(head: Sequence[Any], rows: int, what: str) -> tuple[Batch, list[dict[str, Any]]]:
    """The reader (and any stages in ``head`` after it) run by Ray Data on ``rows`` rows,
    less the rows the reader flagged; and Ray Data's figures per operator that ran
    (``operator_figures``). ``what`` names the setting, for errors."""
    read = head[0]
    limit = min(rows, read.limit) if read.limit else rows
    # The read tasks set flagged rows (and rows without an id) aside, as in a run; a
    # calibration records nothing and stops for none of them.
    context = RunContext(errors=ErrorPolicy(policy="skip"))
    dataset: Any = None
    for node in (dataclasses.replace(read, limit=limit), *head[1:]):
        dataset = EMITTERS[type(node)](node, dataset, context)
    sample = dataset.materialize()  # kept, with the stats of making it
    if not sample.count():
        raise InputError(
            f"{what}: the reader produced no rows to time (none, or only rows it flagged "
            "or that have no id)"
        )
    batch = sample.take_batch(limit, batch_format="numpy")
    return batch, operator_figures(sample.get_stats_summary())


def _read_timing(read: ReadNode, ops: list[dict[str, Any]]) -> StageTiming | None:
    """Reading from Ray Data's own figures: rows its read tasks produced over their time
    (file listing, a one-off, left out). None when no read operator reported."""
    reads = [op for op in ops if op["name"].split("->")[0].startswith("Read")]
    rows, seconds = sum(op["rows_out"] for op in reads), sum(op["task_time_s"] for op in reads)
    if not rows or seconds <= 0:
        return None
    return StageTiming(
        path=read.stage.path,
        type=read.stage.type,
        compute="tasks",
        cpus=float(read.num_cpus if read.num_cpus is not None else 1),
        rows=rows,
        seconds=seconds,
        tasks=sum(op["tasks"] for op in reads),
    )


@dataclasses.dataclass(frozen=True)
class StageTiming:
    """One stage on the sample, in one worker with the stage's resources."""

    path: str
    type: str
    compute: str  # "tasks" or "actors"
    cpus: float  # per worker
    rows: int
    seconds: float  # the best timed pass
    gpus: float = 0.0
    build_s: float = 0.0  # building the stage (loading a model)
    torch_threads: int | None = None
    node_id: str = ""  # empty for reading, which Ray Data spreads over the nodes
    tasks: int = 0  # reading only: the read tasks Ray Data made for the sample

    @property
    def rows_per_s(self) -> float:
        return self.rows / max(self.seconds, 1e-9)


@ray.remote
class _Probe:
    """One stage in a process holding the stage's resources, set up as the run's workers are."""

    def __init__(self, path: str, cls: type, params: dict[str, Any], actor: bool) -> None:
        if actor:
            hold_freed_memory()  # as the run's model actors do
        self.runner = StageRunner(path, cls, params)
        started = time.perf_counter()
        with contextlib.suppress(Exception):
            # An actor that died in __init__ says little: the first call builds again, and
            # its error reaches the driver whole.
            self.runner.build()
        self.build_s = time.perf_counter() - started

    def time(self, batches: list[Batch]) -> tuple[list[Batch], float, float, int | None, str]:
        outputs = [self.runner(dict(b)) for b in batches]  # warm-up: kernels, caches
        best = math.inf
        for _ in range(TIMED_PASSES):
            copies = [dict(b) for b in batches]  # stages add and drop columns of their dict
            started = time.perf_counter()
            for batch in copies:
                self.runner(batch)
            best = min(best, time.perf_counter() - started)
        torch = sys.modules.get("torch")
        threads = torch.get_num_threads() if torch else None
        node = ray.get_runtime_context().get_node_id()
        return outputs, best, self.build_s, threads, node


def _batches(batch: Batch, size: int | None) -> list[Batch]:
    rows = len(batch[ID_COLUMN])
    size = size or rows
    return [{k: v[i : i + size] for k, v in batch.items()} for i in range(0, rows, size)]


def _concat(batches: list[Batch]) -> Batch:
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def time_stage(node: MapNode, sample: Batch) -> tuple[StageTiming, Batch]:
    """``node``'s stage on ``sample`` in a Ray actor with its resources; its output too."""
    probe = _Probe.options(**node.ray_args).remote(
        node.stage.path,
        node.stage.cls,
        node.stage.cls.worker_params(node.stage.params),
        node.compute == "actors",
    )
    try:
        outputs, seconds, build_s, threads, node_id = ray.get(
            probe.time.remote(_batches(sample, node.batch_size))
        )
    except ray.exceptions.RayError as exc:
        reason = user_cause(exc)
        cause = getattr(exc, "cause", None)
        if reason is None and isinstance(exc, ray.exceptions.RayTaskError) and cause is not None:
            reason = f"{node.stage.path} failed on the sample: {type(cause).__name__}: {cause}"
        if reason is None:
            raise
        if reason.endswith(SKIP_HINT):  # calibration times every row, whatever the policy
            reason = reason.removesuffix(SKIP_HINT) + " - calibrate on rows every stage accepts"
        raise RunError(f"--calibrate: {reason}") from None
    finally:
        ray.kill(probe)
    timing = StageTiming(
        path=node.stage.path,
        type=node.stage.type,
        compute=node.compute,
        cpus=float(node.ray_args.get("num_cpus", 1)),
        gpus=float(node.ray_args.get("num_gpus", 0)),
        rows=len(sample[ID_COLUMN]),
        seconds=seconds,
        build_s=build_s,
        torch_threads=threads,
        node_id=node_id,
    )
    return timing, _concat(outputs)


def calibrate(plan: Plan, rows: int) -> tuple[list[StageTiming], int]:
    """Reading (from Ray Data's figures), then every stage of ``plan`` timed in order,
    each on the previous one's output; and the rows of the sample (reading's figures
    count all its tasks read, so a spec without stages has no other count of them)."""
    read = plan.nodes[0]
    assert isinstance(read, ReadNode)
    batch, ops = read_sample([read], rows, "--calibrate")
    reading = _read_timing(read, ops)
    timings = [reading] if reading else []
    sample_rows = len(batch[ID_COLUMN])
    maps = [n for n in plan.nodes if isinstance(n, MapNode)]
    for i, node in enumerate(maps):
        if i and not len(batch[ID_COLUMN]):
            raise InputError(
                f"--calibrate: {maps[i - 1].stage.path} kept none of the {rows} sample rows, "
                f"so {node.stage.path} has nothing to time; sample more rows"
            )
        timing, batch = time_stage(node, batch)
        timings.append(timing)
    return timings, sample_rows


__all__ = ["StageTiming", "calibrate", "read_sample", "time_stage"]
