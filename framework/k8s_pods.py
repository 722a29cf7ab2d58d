"""The worker groups of a KubeRay ``RayJob``, sized from the spec's per-stage resources
and the pod flags."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from framework import cli_args
from framework.cluster import ACCELERATOR_PREFIX
from framework.errors import ExitCode, InferError
from framework.spec import Spec, StageConfig

GIB = 2**30
WORKER_CPUS = 8
POD_MEMORY = 32 * GIB
# KubeRay starts Ray with --memory set to the pod's limit, so a task asking more never
# starts; Ray's object store (30% of the pod by default) and its own processes share that
# limit, so pods sized for stages' `memory` leave room for them.
OBJECT_STORE_SHARE = 0.3
RAY_PROCESSES = GIB


class FlagError(InferError):
    """A flag the spec contradicts (a pod too small for a stage): bad flags, exit code 2."""

    exit_code = ExitCode.USAGE_ERROR


@dataclass(frozen=True)
class Pods:
    """The worker pods the flags ask for; sizes left None follow the spec's stages."""

    image: str
    cpu_workers: int = 1
    worker_cpus: int | None = None
    worker_memory: str | None = None
    gpu_node_selector: dict[str, str] = field(default_factory=dict)
    # ``--gpu-node-selector TYPE:LABEL=VALUE``: the nodes of one accelerator type; these
    # labels go on the groups of stages asking that type (GPU or not), over the ones above.
    typed_node_selectors: dict[str, dict[str, str]] = field(default_factory=dict)
    # ``--gpu-node-taint``: tolerations for every pod on GPU nodes (AKS's sku=gpu taint;
    # GKE's nvidia.com/gpu one is tolerated by its admission controller for GPU pods).
    gpu_node_tolerations: list[dict[str, str]] = field(default_factory=list)

    def node_selector(self, stage: StageConfig) -> dict[str, str]:
        """The labels a pod for ``stage`` on GPU (or typed) nodes must find there."""
        typed = self.typed_node_selectors.get(stage.resources.accelerator_type or "", {})
        return {**self.gpu_node_selector, **typed}


def _pod_memory(task_bytes: float) -> int:
    """Whole GiB holding ``task_bytes`` of tasks beside the object store and Ray itself."""
    needed = task_bytes / (1 - OBJECT_STORE_SHARE) + RAY_PROCESSES
    return max(POD_MEMORY, math.ceil(needed / GIB) * GIB)


def on_gpu_nodes(stage: StageConfig) -> bool:
    """Stages asking GPUs get GPU groups: models unless num_gpus is 0 (unset: one per actor
    on Kubernetes), and any other stage that sets num_gpus (a CPU group has none)."""
    gpus = stage.resources.num_gpus
    return bool(gpus) if stage.kind != "model" else gpus != 0


def gpu_stages(spec: Spec) -> list[StageConfig]:
    return [s for s in spec.stages if on_gpu_nodes(s)]


def on_typed_nodes(stage: StageConfig) -> bool:
    """A CPU stage asking ``accelerator_type``: Ray runs it only on a node offering
    ``accelerator_type:TYPE``, which the CPU group never does, so it gets a group of its own
    on that type's nodes (a GPU node offers the type only to pods given a GPU)."""
    return not on_gpu_nodes(stage) and bool(stage.resources.accelerator_type)


def typed_stages(spec: Spec) -> list[StageConfig]:
    """The stages whose pods go to the nodes of the accelerator_type they ask."""
    return [s for s in spec.stages if s.resources.accelerator_type]


def check_typed_selectors(spec: Spec, pods: Pods) -> None:
    """A ``TYPE:`` selector no stage asks for is a typo or a stale flag: refused,
    as its node pool would otherwise get no pods, silently."""
    asked = sorted({s.resources.accelerator_type or "" for s in typed_stages(spec)})
    for accelerator, labels in pods.typed_node_selectors.items():
        if accelerator not in asked:
            key, value = next(iter(labels.items()))
            raise FlagError(
                f"--gpu-node-selector {accelerator}:{key}={value}: no stage asks "
                f"accelerator_type {accelerator} "
                f"({'asked: ' + ', '.join(asked) if asked else 'none asks one'})"
            )


def _needs_cpu_node(stage: StageConfig) -> bool:
    # Unset num_cpus is Ray's one CPU per task, which the head (num-cpus 0) never offers;
    # custom resources of CPU stages are advertised by the CPU group only.
    return stage.resources.num_cpus != 0 or bool(stage.resources.custom)


def cpu_pod_size(spec: Spec, pods: Pods) -> tuple[int, str]:
    """CPUs and memory of a CPU worker pod: the flags, or enough for every CPU stage."""
    worker_cpus, worker_memory = pods.worker_cpus, pods.worker_memory
    # Typed CPU stages get pods of this size too, in groups of their own.
    stages = [s for s in (spec.reader, *spec.stages, spec.writer) if not on_gpu_nodes(s)]
    needy = [s.path for s in stages if _needs_cpu_node(s) and not on_typed_nodes(s)]
    if pods.cpu_workers == 0 and needy:
        raise FlagError(
            f"--cpu-workers 0: no pod for the tasks of {', '.join(needy)} "
            "(the head runs none); give at least 1"
        )
    cpus = WORKER_CPUS if worker_cpus is None else worker_cpus
    memory = POD_MEMORY if worker_memory is None else float(cli_args.quantity_value(worker_memory))
    for s in stages:
        asks = math.ceil(s.resources.num_cpus or 0)
        if worker_cpus is not None and asks > worker_cpus:
            raise FlagError(
                f"--worker-cpus {worker_cpus}: {s.path} asks num_cpus "
                f"{s.resources.num_cpus:g} per task, more than a pod has"
            )
        cpus = max(cpus, asks)
        task_bytes = s.resources.memory or 0
        if worker_memory is not None and task_bytes > memory:
            raise FlagError(
                f"--worker-memory {worker_memory}: {s.path} asks memory {task_bytes} "
                f"({task_bytes / GIB:.3g}Gi) per task, more than a pod has"
            )
        if worker_memory is None:
            memory = max(memory, _pod_memory(task_bytes))
    return cpus, worker_memory or f"{int(memory // GIB)}Gi"


def _group(
    name: str,
    image: str,
    replicas: int,
    cpus: float,
    memory: str,
    params: dict[str, str],
    gpus: int = 0,
    node_selector: dict[str, str] | None = None,
    tolerations: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    limits: dict[str, Any] = {"cpu": f"{cpus:g}", "memory": memory}
    if gpus:
        limits["nvidia.com/gpu"] = gpus
    pod: dict[str, Any] = {
        "containers": [
            {
                "name": "ray-worker",
                "image": image,
                "resources": {"requests": dict(limits), "limits": limits},
            }
        ]
    }
    if node_selector:
        pod["nodeSelector"] = node_selector
    if tolerations:
        pod["tolerations"] = tolerations
    return {
        "groupName": name,
        "replicas": replicas,
        "minReplicas": replicas,
        "maxReplicas": replicas,
        "rayStartParams": params,
        "template": {"spec": pod},
    }


def _custom_params(custom: dict[str, float], extra: dict[str, str]) -> dict[str, str]:
    params = dict(extra)
    if custom:
        # `ray start` refuses a node resource that is not a whole number (0.3 x 8 CPUs =
        # 2.4): a pod offers the next whole one up, enough for every task it holds. Rounded
        # to Ray's 0.0001 unit first, so 0.1 x 3 stays 0.3 -> 1, not 0.30000000000000004.
        whole = {key: float(math.ceil(round(value, 4))) for key, value in custom.items()}
        # KubeRay passes this through to `ray start --resources='{...}'`.
        params["resources"] = '"' + json.dumps(whole).replace('"', '\\"') + '"'
    return params


def group_name(path: str, prefix: str = "gpu") -> str:
    """``models[0]`` -> ``gpu-0``, ``preprocessors[1]`` -> ``gpu-preprocessors-1``."""
    kind, _, index = path.rstrip("]").partition("[")
    return f"{prefix}-{index}" if kind == "models" else f"{prefix}-{kind}-{index}"


def typed_cpu_group(stage: StageConfig, pods: Pods, cpus: int, memory: str) -> dict[str, Any]:
    """A CPU pod's size on the nodes of the stage's accelerator_type, offering Ray the type
    itself (its detection offers it only where the pod holds a GPU) and no GPUs."""
    r = stage.resources
    per_task = r.num_cpus if r.num_cpus is not None else 1.0
    replicas = 1
    if stage.in_actors and per_task:
        replicas = max(1, math.ceil(r.pool_sizes()[1] * per_task / cpus))
    custom = {k: v * cpus for k, v in r.custom.items()}
    custom[f"{ACCELERATOR_PREFIX}{r.accelerator_type}"] = 1.0
    # GPU node pools are often tainted for pods without a GPU (GKE's nvidia.com/gpu).
    usual = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    tolerations = [usual, *(t for t in pods.gpu_node_tolerations if t != usual)]
    return _group(
        group_name(stage.path, "cpu"),
        pods.image,
        replicas,
        cpus,
        memory,
        _custom_params(custom, {"num-gpus": "0"}),
        node_selector=pods.node_selector(stage),
        tolerations=tolerations,
    )


def worker_groups(spec: Spec, pods: Pods) -> list[dict[str, Any]]:
    """A CPU group for CPU stages, a GPU group per stage that wants GPUs (models, and
    others asking num_gpus), a group per CPU stage asking accelerator_type, custom
    resources kept."""
    cpus, memory = cpu_pod_size(spec, pods)
    cpu_custom: dict[str, float] = {}
    for stage in (spec.reader, *spec.stages, spec.writer):
        if not on_gpu_nodes(stage) and not on_typed_nodes(stage):
            for key, value in stage.resources.custom.items():
                cpu_custom[key] = max(cpu_custom.get(key, 0.0), value * cpus)
    groups = [
        _group("cpu", pods.image, pods.cpu_workers, cpus, memory, _custom_params(cpu_custom, {}))
    ]
    check_typed_selectors(spec, pods)
    for stage in gpu_stages(spec):
        r = stage.resources
        per_actor = r.num_gpus if r.num_gpus is not None else 1.0
        pool = r.pool_sizes()[1]
        gpus_per_pod = max(1, math.ceil(per_actor))
        replicas = max(1, math.ceil(pool * per_actor / gpus_per_pod))
        per_pod = max(1, int(gpus_per_pod / per_actor))  # actors one pod holds
        custom = {k: v * per_pod for k, v in r.custom.items()}
        if r.accelerator_type in pods.typed_node_selectors:
            # The flag says these nodes are that type: the group offers Ray's resource for
            # it as spelt in the spec (Ray's own detection names an A100-80GB "A100", so
            # "A100-80G" would never be found), as Ray places accelerator_type by it.
            custom[f"{ACCELERATOR_PREFIX}{r.accelerator_type}"] = 1.0
        groups.append(
            _group(
                group_name(stage.path),
                pods.image,
                replicas,
                max(2.0, float(r.num_cpus or 1) * per_pod + 1),
                f"{_pod_memory(per_pod * (r.memory or 0)) // GIB}Gi",
                _custom_params(custom, {"num-gpus": str(gpus_per_pod)}),
                gpus_per_pod,
                pods.node_selector(stage),
                pods.gpu_node_tolerations,
            )
        )
    return groups + [
        typed_cpu_group(s, pods, cpus, memory) for s in spec.stages if on_typed_nodes(s)
    ]
