"""Fill in the resources a spec leaves out, from what the cluster has, and say why.

Nothing the spec (or a plugin's ``default_resources``) sets is changed. The rules:
with GPUs, each model gets one GPU per actor and one actor per GPU, and CPU work
spreads over every CPU at one CPU per task; on CPUs only, the models get most of
each node (torch threads follow the grant) and a small share is kept for reading,
CPU stages and writing, whose tasks are sized to fit in it. Beside GPU models, the stages
after the models and the writer ask for no CPU.
"""

from __future__ import annotations

import dataclasses
import math

from framework.cluster import Cluster
from framework.spec.schema import Resources, RunSection, Spec, StageConfig

# torch's intra-op scaling flattens out past this many threads; more CPUs → more actors.
MAX_THREADS_PER_ACTOR = 8


@dataclasses.dataclass(frozen=True)
class Sized:
    resources: Resources
    reason: str
    max_tasks: int | None = None  # tasks of this stage at once (reader, task stages, writer)


def _cpu_reserve(node_cpus: float) -> float:
    return 0.5 if node_cpus <= 4 else float(max(1, round(0.1 * node_cpus)))


def size_resources(spec: Spec, cluster: Cluster) -> dict[str, Sized]:
    """Resources per stage path (reader, stages, writer) with every unset key decided."""
    models = [s for s in spec.stages if s.kind == "model"]
    gpus = cluster.gpus
    given = [m for m in models if (m.resources.num_gpus or 0) > 0]
    unset_gpu = [m for m in models if m.resources.num_gpus is None] if gpus else []
    sharing = max(1, len(given) + len(unset_gpu))

    def even_pool(share: float) -> int:
        """Actors of ``share`` GPU each in an even split of the GPUs among GPU models."""
        return max(1, int(gpu_slots(cluster, share) / sharing + 1e-6)) if gpus else 1

    # The GPUs the spec's models hold (their pools' minimums, or the pools given them
    # below) are not shared out again among the models left to us.
    held = sum(
        m.resources.num_gpus
        * (m.resources.pool_sizes()[0] if m.resources.actors else even_pool(m.resources.num_gpus))
        for m in given
    )
    free = max(0.0, gpus - held)
    gpu_share = 0.0
    if unset_gpu:
        basis = free or gpus  # none left: asked as if alone, and the check names the pools
        # Ray places a fraction of a GPU on one GPU: 3 models on 2 GPUs get half of one
        # each, not 0.66 (two of which never share a GPU, so the third pool waited).
        per_gpu = math.ceil(len(unset_gpu) / basis - 1e-6)
        share = max(0.01, math.floor(100 / per_gpu) / 100)
        gpu_share = 1.0 if basis >= len(unset_gpu) else share

    def gpus_of(stage: StageConfig) -> float:
        r = stage.resources
        return r.num_gpus if r.num_gpus is not None else gpu_share

    gpu_models = [m for m in models if gpus_of(m) > 0]
    cpu_models = [m for m in models if gpus_of(m) == 0]
    cpu_nodes = [n for n in cluster.nodes if n.cpus > 0]
    node_cpus = min((n.cpus for n in cpu_nodes), default=1.0)
    spare = min((n.spare_cpus for n in cpu_nodes), default=0.0)
    # Ray Data's listing task needs one whole logical CPU beside the actors.
    reserve = max(_cpu_reserve(node_cpus), 1.0 - spare) if cpu_models else 0.0
    task_cpus = reserve / 2 if cpu_models else 1.0

    out: dict[str, Sized] = {}
    # An actor needs its CPUs too: the GPU nodes' CPUs, less one for the tasks feeding
    # them, are shared among the GPU models.
    gpu_node_cpus = sum(max(1.0, n.cpus - 1) for n in cluster.nodes if n.gpus)
    for model in gpu_models:
        share = gpus_of(model)
        if model.resources.num_gpus is not None:
            pool = even_pool(share)
        else:
            pool = max(1, int(free / len(unset_gpu) / share + 1e-6))
        cpus = model.resources.num_cpus if model.resources.num_cpus is not None else 1.0
        cpu_room = max(1, int(gpu_node_cpus / len(gpu_models) / cpus + 1e-6)) if cpus else pool
        why = f"{share:g} GPU per actor, {pool} actor(s) for the cluster's {gpus:g} GPUs"
        if cpu_room < pool:
            pool, why = cpu_room, f"{why}, held to {cpu_room} by the GPU nodes' CPUs"
        out[model.path] = _fill(model.resources, num_gpus=share, num_cpus=1.0, actors=pool, why=why)
    if cpu_models:
        avail = (node_cpus - reserve) / len(cpu_models)
        per_node = max(1, math.ceil(avail / MAX_THREADS_PER_ACTOR))
        auto_cpus = max(0.25, math.floor(avail / per_node * 4) / 4)
        for model in cpu_models:
            cpus_each = _cpus_per_actor(model.resources, avail, len(cpu_nodes), auto_cpus)
            # As many actors as fit on the CPU nodes beside the reserve, at least one; the
            # epsilon as in Ray's 1e-4 units: 7 // 0.1 is 69.0 in floats, 70 actors for Ray.
            fits = sum(
                int((n.cpus - reserve) / len(cpu_models) / cpus_each + 1e-6) if cpus_each else 1
                for n in cpu_nodes
            )
            pool = max(1, fits)
            # The pool the spec gave, if any: the reason must not name another one.
            shown = pool if model.resources.actors is None else model.resources.pool_sizes()[1]
            out[model.path] = _fill(
                model.resources,
                num_gpus=0.0,
                num_cpus=cpus_each,
                actors=pool,
                why=(
                    f"no GPU: {shown} actor(s) of {cpus_each:g} CPUs (torch threads follow), "
                    f"{reserve:g} CPU per node kept for reading, CPU stages and writing"
                ),
            )
    why_tasks = (
        f"{task_cpus:g} CPU per task, to fit beside the model actors"
        if cpu_models
        else "1 CPU per task, spread over every node with CPUs"
    )
    # Only beside GPU models: beside CPU models the freed share let more read tasks start
    # at once, each a process importing torch on the model's cores (first batch 5 s later).
    after = set() if cpu_models else {s.path for s in _after_actors(spec)}
    before = {s.path for s in _before_actors(spec)} if cpu_models else set()
    capped = TASKS_PER_NODE_BESIDE_CPU_MODELS * max(1, len(cpu_nodes))
    light_cap = NO_CPU_TASKS_PER_NODE * max(1, len(cpu_nodes))
    for stage in (spec.reader, *(s for s in spec.stages if s.kind != "model"), spec.writer):
        if stage.path in after:
            sized = _fill(stage.resources, num_cpus=0.0, why=WHY_NO_CPU)
            if sized.resources.num_cpus == 0:
                sized = dataclasses.replace(sized, max_tasks=light_cap)
            out[stage.path] = sized
        elif stage.path in before and stage.resources.num_cpus is None:
            sized = _fill(stage.resources, num_cpus=task_cpus, why=f"{why_tasks}; {capped} at once")
            out[stage.path] = dataclasses.replace(sized, max_tasks=capped)
        else:
            why = why_tasks.replace("per task", "per actor") if stage.in_actors else why_tasks
            out[stage.path] = _fill(stage.resources, num_cpus=task_cpus, why=why)
    return out


def gpu_slots(cluster: Cluster, share: float) -> int:
    """How many actors of ``share`` GPU the cluster holds at once: as Ray places them, a
    fraction on one GPU (two of 0.4 on each), whole GPUs on one node (never spanning two)."""
    return sum(gpu_room(n.gpus, share) for n in cluster.nodes)


def gpu_room(gpus: float, share: float) -> int:
    """Actors of ``share`` GPU that a node of ``gpus`` GPUs holds (Ray's units of 1e-4)."""
    if share < 1:
        whole = math.floor(gpus + 1e-6)
        rest = max(0.0, gpus - whole)  # a node declaring part of a GPU: one more of it
        return whole * math.floor(1 / share + 1e-6) + math.floor(rest / share + 1e-6)
    return math.floor(gpus / share + 1e-6)


def _cpus_per_actor(r: Resources, avail: float, nodes: int, auto_cpus: float) -> float:
    """CPUs for each actor of a CPU model: the spec's, else a share of a node's ``avail``
    for as many actors as the spec's pool (its maximum) puts on a node, else ``auto_cpus``."""
    if r.num_cpus is not None:
        return r.num_cpus
    if r.actors is None:
        return auto_cpus
    per_node = math.ceil(r.pool_sizes()[1] / max(1, nodes))
    return max(0.25, math.floor(avail / per_node * 4) / 4)


# Ray Data sets CPUs aside for every operator by what its tasks ask and lends what is
# left to the last one first: a writer asking 1 CPU per task held back cores that the
# decoding before a GPU model waited for. Tasks asking none are set nothing aside.
WHY_NO_CPU = (
    "no CPU asked: light work after GPU models, which leaves the CPUs to the stages "
    "before them (set num_cpus for heavy work here)"
)

# Nothing else bounds tasks that ask no CPU: Ray Data started one per block at once and
# Ray a process for each, 16 starting together on a 2-CPU node held an 800-row run there
# for minutes. Two per node keep light work streaming.
NO_CPU_TASKS_PER_NODE = 2


# Beside CPU models, the share kept for reading and CPU stages runs two tasks per node
# (each half of it). Uncapped, Ray Data started a read task for every block of input at
# once, each in a new process importing torch on the model's cores: on 2 cores with 16
# input files, the first model batch came 3 s later.
TASKS_PER_NODE_BESIDE_CPU_MODELS = 2


def _before_actors(spec: Spec) -> list[StageConfig]:
    """The reader and the task stages before the first actor stage (a model)."""
    stages = list(spec.stages)
    first = next((i for i, s in enumerate(stages) if s.in_actors), len(stages))
    return [spec.reader, *stages[:first]]


def _after_actors(spec: Spec) -> list[StageConfig]:
    """The task stages after the last actor stage (a model), and the writer; none when
    every stage runs as tasks, for then they are all of the pipeline's work."""
    stages = list(spec.stages)
    actors = [i for i, s in enumerate(stages) if s.in_actors]
    return [*stages[actors[-1] + 1 :], spec.writer] if actors else []


# Ray Data's own default share of the object store (resource_manager.py, Ray 2.60).
RAY_DATA_STORE_FRACTION = 0.5


def inflight_bytes(
    run: RunSection, cluster: Cluster, object_store_bytes: float | None = None
) -> int | None:
    """Ray Data's object store budget for the run: per node, ``inflight_mb_per_node`` or
    ``inflight_mb_per_cpu`` per CPU, whichever is more; None leaves Ray Data's default.

    What the CPUs add is held to the share of the cluster's object store that Ray Data
    would take by itself (``object_store_bytes``, where known), so a big node with a small
    store spills no more than it would without infer-run.
    """
    if not run.inflight_mb_per_node:
        return None
    mb = 1024**2
    floor = run.inflight_mb_per_node * mb * max(1, len(cluster.nodes))
    grown = sum(
        max(run.inflight_mb_per_node, run.inflight_mb_per_cpu * n.cpus) for n in cluster.nodes
    )
    budget = grown * mb
    if object_store_bytes:
        budget = min(budget, RAY_DATA_STORE_FRACTION * object_store_bytes)
    return int(max(floor, budget))


def _fill(r: Resources, why: str, **chosen: float) -> Sized:
    """``r`` with only its unset keys taken from ``chosen``; the reason names what was chosen."""
    updates = {k: v for k, v in chosen.items() if getattr(r, k) is None}
    if not updates:
        return Sized(r, "as the spec says")
    return Sized(dataclasses.replace(r, **updates), f"auto ({', '.join(sorted(updates))}): {why}")
