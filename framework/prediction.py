"""From ``--calibrate``'s timings to the run's bottleneck and throughput: each stage's
rows/s scaled by the workers the plan lets it run at once, and the table and JSON that
show it."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from framework.calibrate import StageTiming
from framework.plan import MapNode, Plan, WriteNode


@dataclasses.dataclass(frozen=True)
class Prediction:
    """Rows/s each stage can do with all the workers the plan gives it, and the slowest."""

    capacity: dict[str, float]  # stage path → rows/s
    workers: dict[str, float]  # stage path → workers at once (task stages: CPUs' worth)
    task_cpus: float  # CPUs the actor pools leave to task stages
    bottleneck: str
    rows_per_s: float


def predict(plan: Plan, timings: Sequence[StageTiming]) -> Prediction:
    """Actor pools run at their maximum size; task stages share the CPUs the pools leave
    (their seconds per row add up), each task on ``min(1, cpus)`` of a core. The task
    stages between two actor stages are fused (one task runs them one after another), so
    a cap on how many run at once holds for them together."""
    maps = {n.stage.path: n for n in plan.nodes if isinstance(n, MapNode)}
    caps = {n.stage.path: n.max_tasks for n in plan.nodes if not isinstance(n, WriteNode)}
    fused: dict[str, int] = {}  # task stage path → actor stages before it
    actors_before = 0
    for node in plan.nodes:
        if isinstance(node, MapNode) and node.compute == "actors":
            actors_before += 1
        else:
            fused[node.stage.path] = actors_before
    held = sum(
        float(n.ray_args.get("num_cpus", 1)) * n.pool[1]
        for n in maps.values()
        if n.compute == "actors" and n.pool
    )
    task_cpus = max(plan.cluster.cpus - held, 0.0)
    capacity: dict[str, float] = {}
    workers: dict[str, float] = {}
    shared: dict[str, float] = {}  # workers before any cap: the CPUs' worth
    tasks = [t for t in timings if t.compute == "tasks"]
    for t in timings:
        if t.compute == "actors":
            pool = maps[t.path].pool
            workers[t.path] = float(pool[1] if pool else 1)
        else:
            slots = task_cpus / t.cpus if t.cpus else task_cpus
            # A task granted part of a core runs one thread on that part of it.
            core = min(1.0, t.cpus) if t.cpus else 1.0
            shared[t.path] = slots * core
            workers[t.path] = (min(slots, caps[t.path]) if caps[t.path] else slots) * core
        capacity[t.path] = workers[t.path] * t.rows_per_s
    if len(tasks) > 1:  # the CPUs run them in turn: their seconds per row add up
        together = min(shared.values()) / sum(1 / t.rows_per_s for t in tasks)
        for t in tasks:
            group = [u for u in tasks if fused.get(u.path) == fused.get(t.path)]
            in_turn = min(workers[u.path] for u in group) / sum(1 / u.rows_per_s for u in group)
            capacity[t.path] = min(together, in_turn)
    # Task stages sharing their CPUs tie: the one taking the most time per row is named.
    rates = {t.path: t.rows_per_s for t in timings}
    bottleneck = min(capacity, key=lambda p: (capacity[p], rates[p]))
    return Prediction(capacity, workers, task_cpus, bottleneck, capacity[bottleneck])


def as_json(
    plan: Plan, timings: Sequence[StageTiming], prediction: Prediction, sample_rows: int
) -> dict[str, Any]:
    """The figures ``--calibrate --report PATH`` writes: per stage and the prediction."""
    nodes = {n.node_id: n.describe() for n in plan.cluster.nodes}
    stages = [
        {
            **dataclasses.asdict(t),
            "node": nodes.get(t.node_id, t.node_id),
            "rows_per_s": round(t.rows_per_s, 3),
            "workers": prediction.workers[t.path],
            "capacity_rows_per_s": round(prediction.capacity[t.path], 3),
        }
        for t in timings
    ]
    return {
        "sample_rows": sample_rows,
        "stages": stages,
        "task_cpus": prediction.task_cpus,
        "bottleneck": prediction.bottleneck,
        "rows_per_s": round(prediction.rows_per_s, 3),
    }


def describe(timings: Sequence[StageTiming], prediction: Prediction, sample_rows: int) -> str:
    """The table ``--calibrate`` prints under the plan; ``sample_rows``: the rows the stages
    were timed on (reading reports what its tasks read, often more)."""
    lines = [
        f"calibration: {sample_rows} sample rows, each stage timed alone with its own resources"
    ]
    for t in timings:
        threads = f", {t.torch_threads} torch threads" if t.torch_threads else ""
        gpus = f", {t.gpus:g} GPU" if t.gpus else ""
        how = (
            f"built in {t.build_s:.2f}s"
            if t.node_id
            else f"Ray Data read {t.rows} rows in {t.tasks} task{'' if t.tasks == 1 else 's'}"
        )
        lines.append(
            f"  {t.path:<18} {t.type:<16} {t.rows_per_s:10.1f} rows/s per worker "
            f"({t.cpus:g} CPU{gpus}{threads}; {how}) "
            f"x {prediction.workers[t.path]:g} -> {prediction.capacity[t.path]:.1f} rows/s"
        )
    shared = [t.path for t in timings if t.compute == "tasks"]
    if len(shared) > 1:
        lines.append(
            f"  {', '.join(shared)} run as tasks in turn on the "
            f"{prediction.task_cpus:g} CPUs the actor pools leave: their rows/s is shared"
        )
    lines.append(
        f"expected: at most {prediction.rows_per_s:.1f} rows/s, bound by "
        f"{prediction.bottleneck} (writing not timed; stages sharing cores slow each other)"
    )
    return "\n".join(lines)


__all__ = ["Prediction", "as_json", "describe", "predict"]
