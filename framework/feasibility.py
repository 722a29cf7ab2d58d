"""Refuse, before anything runs, a plan that the cluster could never schedule.

Ray waits silently for resources that no node offers; a user on a CPU-only cluster
who asked for a GPU should get one line naming the stage, not a hang.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from framework.cluster import ACCELERATOR_PREFIX, Cluster, Node
from framework.errors import ExitCode, InferError
from framework.plan import MapNode, Plan
from framework.sizing import gpu_room

log = logging.getLogger("infer_run")


class ResourceError(InferError):
    """A stage asks for resources that no node of the cluster has."""

    exit_code = ExitCode.RESOURCE_ERROR


def _asks(node: Any) -> dict[str, Any]:
    if isinstance(node, MapNode):
        return node.ray_args
    return {"num_cpus": node.num_cpus or 0}


def _fits(node: Node, asks: dict[str, Any]) -> bool:
    if node.cpus < (asks.get("num_cpus") or 0) or node.gpus < (asks.get("num_gpus") or 0):
        return False
    if asks.get("memory") and node.memory and node.memory < asks["memory"]:
        return False
    accelerator = asks.get("accelerator_type")
    if accelerator and accelerator not in node.accelerator_types:
        return False
    return all(node.custom.get(k, 0) >= v for k, v in (asks.get("resources") or {}).items())


def _room(node: Node, asks: dict[str, Any]) -> float:
    """How many of one actor asking ``asks`` fit on an empty ``node`` (inf: it asks nothing)."""
    if not _fits(node, asks):
        return 0
    have = {"num_cpus": node.cpus + node.spare_cpus, "memory": node.memory}
    wanted = [(have[k], asks.get(k) or 0) for k in have] + [
        (node.custom.get(k, 0), v) for k, v in (asks.get("resources") or {}).items()
    ]
    # Ray counts fractions in units of 1e-4; 1.0 // 0.1 is 9.0 in floats, 10 actors for Ray.
    rooms = [math.floor(h / w + 1e-6) for h, w in wanted if w and h]
    if asks.get("num_gpus"):  # GPU by GPU: a fraction never spans two
        rooms.append(gpu_room(node.gpus, asks["num_gpus"]))
    return min(rooms, default=math.inf)


def _describe(asks: dict[str, Any]) -> str:
    parts = []
    for key, value in asks.items():
        if key == "resources":
            parts += [f"{k}={v:g}" for k, v in value.items()]
        elif key == "memory" and value:
            parts.append(f"memory={value / 2**30:.3g} GiB")
        elif value:
            parts.append(f"{key}={value:g}" if isinstance(value, float | int) else f"{key}={value}")
    return ", ".join(parts) or "nothing"


def infeasible(plan: Plan) -> list[str]:
    """One line per stage that cannot run on ``plan.cluster``; [] when all can."""
    cluster: Cluster = plan.cluster
    problems = []
    for node in plan.nodes:
        asks = _asks(node)
        unit = "actor" if isinstance(node, MapNode) and node.pool else "task"
        if not any(_fits(n, asks) for n in cluster.nodes):
            problems.append(
                f"{node.stage.path}: asks for {_describe(asks)} per {unit}, which no node has "
                f"- {cluster.describe()}"
            )
    if problems:
        return problems
    actors = [n for n in plan.nodes if isinstance(n, MapNode) and n.pool]
    for node in actors:
        # Ray Data waits, silently, until a pool's minimum of actors is placed; an actor
        # runs on one node, so the room counts per node (2-GPU actors on 1-GPU nodes: none).
        asks, wanted = node.ray_args, node.pool[0]
        room = sum(_room(n, asks) for n in cluster.nodes)
        if room < wanted:
            problems.append(
                f"{node.stage.path}: its pool needs at least {wanted} actors asking for "
                f"{_describe(asks)} each, and the nodes have room for {room:g} - lower the "
                f"pool's minimum or the per-actor ask - {cluster.describe()}"
            )
    if problems:
        return problems
    held_gpus = sum(n.pool[0] * (n.ray_args.get("num_gpus") or 0) for n in actors)
    if held_gpus > cluster.gpus:
        auto = [n.stage.path for n in actors if n.stage.resources.num_gpus is None]
        hint = (
            f" - {', '.join(auto)} sized automatically: give them num_gpus (0 runs a model "
            "on CPUs) or the others fewer"
            if auto
            else ""
        )
        problems.append(
            f"{', '.join(n.stage.path for n in actors)}: the actor pools' minimum sizes need "
            f"{held_gpus:g} GPUs together, the cluster has {cluster.gpus:g}{hint}"
        )
    held_cpus = sum(n.pool[0] * (n.ray_args.get("num_cpus") or 0) for n in actors)
    tasks = [n for n in plan.nodes if not (isinstance(n, MapNode) and n.pool)]
    # Ray Data's file-listing task always asks for one whole CPU.
    task_cpus = max([1.0, *(_asks(n).get("num_cpus") or 0 for n in tasks)])
    if actors and held_cpus + task_cpus > cluster.logical_cpus:
        problems.append(
            f"{', '.join(n.stage.path for n in actors)}: the actor pools hold {held_cpus:g} of the "
            f"cluster's {cluster.logical_cpus:g} logical CPUs, leaving less than the {task_cpus:g} "
            "CPU that Ray Data's read, CPU-stage and write tasks need - lower the actors' "
            "num_cpus or pool size"
        )
    return problems or joint_problems(plan, actors)


# Ray Data's file-listing task, which runs beside the actors.
LISTING = ("Ray Data's file listing", {"num_cpus": 1.0})


def joint_problems(plan: Plan, actors: list[MapNode]) -> list[str]:
    """Ray Data starts every pool's minimum of actors first, and they keep what they hold:
    a task stage left no room on any node (a CPU stage asking for the custom resource or
    the GPU a pool took) waits forever, and so does the run. Checked node by node."""
    if not actors:
        return []
    nodes = list(plan.cluster.nodes)
    if not _placed(nodes, actors):
        # Not a hang: Ray Data starts the next pool once the one before it has finished
        # and let go, so the run completes, though nothing streams between them.
        log.warning(
            "%s: the actor pools' minimum sizes do not fit on the nodes together, so they "
            "will run one after the other, each stage's whole output held in between - "
            "lower a pool's minimum or per-actor ask to run them at once",
            ", ".join(n.stage.path for n in actors),
        )
        return []
    tasks = [
        (n.stage.path, _asks(n)) for n in plan.nodes if not (isinstance(n, MapNode) and n.pool)
    ]
    problems = []
    for path, asks in [*tasks, LISTING]:
        # The most lenient case: this task placed first, the actors around it.
        if not any(
            _fits(n, asks) and _placed(nodes, actors, (i, asks)) for i, n in enumerate(nodes)
        ):
            pools = ", ".join(n.stage.path for n in actors)
            problems.append(
                f"{path}: asks for {_describe(asks)} per task, and once the actor pools of "
                f"{pools} hold their minimum of actors no node has room for one, so the run "
                "would wait forever - lower the actors' asks or pool minimum, or this "
                f"stage's ask - {plan.cluster.describe()}"
            )
    return problems


# What is left of each GPU of a node, one key per GPU: Ray places a fraction of a GPU on
# one GPU, so three 0.66 actors need three GPUs, though 1.98 is less than 2.
GPU_SLOT = "GPU#"


def _capacity(node: Node) -> dict[str, float]:
    held = {"CPU": node.cpus + node.spare_cpus, **node.custom}
    whole = math.floor(node.gpus + 1e-6)
    held.update({f"{GPU_SLOT}{i}": 1.0 for i in range(whole)})
    if node.gpus - whole > 1e-6:  # a node declaring part of a GPU
        held[f"{GPU_SLOT}{whole}"] = node.gpus - whole
    if node.memory:  # unknown (0) for this machine before Ray starts: not counted
        held["memory"] = node.memory
    return held


def _demand(asks: dict[str, Any]) -> dict[str, float]:
    wanted = {
        "CPU": asks.get("num_cpus") or 0,
        "GPU": asks.get("num_gpus") or 0,
        "memory": asks.get("memory") or 0,
        **(asks.get("resources") or {}),
    }
    if asks.get("accelerator_type"):
        wanted[f"{ACCELERATOR_PREFIX}{asks['accelerator_type']}"] = 0.001  # what Ray asks
    return {k: float(v) for k, v in wanted.items() if v}


def _take(held: dict[str, float], wanted: dict[str, float]) -> bool:
    return _take_many(held, wanted, 1) == 1


def _placed(
    nodes: list[Node], actors: list[MapNode], first: tuple[int, dict[str, Any]] | None = None
) -> bool:
    """Whether every pool's minimum of actors finds room, after ``first`` (node index, a
    task's asks) if given: the pools fitting the fewest nodes first, each actor on the
    first node with room."""
    held = [_capacity(n) for n in nodes]
    if first is not None and not _take(held[first[0]], _demand(first[1])):
        return False
    pools = sorted(actors, key=lambda a: sum(_fits(n, a.ray_args) for n in nodes))
    for pool in pools:
        wanted = _demand(pool.ray_args)
        left = pool.pool[0] if pool.pool else 0
        for h in held:
            left -= _take_many(h, wanted, left)
        if left > 0:
            return False
    return True


def _take_many(held: dict[str, float], wanted: dict[str, float], most: int) -> int:
    """Up to ``most`` actors asking ``wanted`` taken from ``held`` at once: as many as
    ``_take`` one by one would, without a step per actor (a pool sized for 1e20 CPUs had
    1e19 of them, and --plan hung)."""
    counted = {k: v for k, v in wanted.items() if k != "GPU" and (k != "memory" or k in held)}
    fits = [math.floor((held.get(k, 0) + 1e-9) / v) for k, v in counted.items() if v > 0]
    taken = max(0, min([most, *fits]))
    if wanted.get("GPU"):
        taken = _take_gpus(held, wanted["GPU"], taken)
    for k, v in counted.items():
        held[k] = held.get(k, 0) - taken * v
    return taken


def _take_gpus(held: dict[str, float], share: float, most: int) -> int:
    """Up to ``most`` actors of ``share`` GPU taken from the GPUs left in ``held``: a
    fraction from one GPU, a whole number of GPUs from as many whole ones."""
    slots = [k for k in held if k.startswith(GPU_SLOT)]
    taken = 0
    if share < 1:
        for k in slots:
            n = min(most - taken, math.floor((held[k] + 1e-9) / share))
            held[k] -= n * share
            taken += n
        return taken
    free = [k for k in slots if held[k] + 1e-9 >= 1]
    need = math.ceil(share - 1e-9)
    taken = min(most, len(free) // need)
    for k in free[: taken * need]:
        held[k] = 0.0
    return taken


def check_feasible(plan: Plan) -> None:
    problems = infeasible(plan)
    if problems:
        raise ResourceError("\n".join(problems))


__all__ = ["ResourceError", "check_feasible", "infeasible"]
