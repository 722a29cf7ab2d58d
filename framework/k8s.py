"""Render a spec as a KubeRay ``RayJob``: worker groups follow the spec's per-stage resources.

The spec travels in a ConfigMap as written (interpolations kept), so credentials stay
in the pods' environment instead of the manifest, and the job runs the same spec.
"""

from __future__ import annotations

import argparse
import re
import sys

import ray
import yaml
from omegaconf import OmegaConf

from framework import __version__, cli_args
from framework.k8s_pods import WORKER_CPUS, Pods, on_gpu_nodes, typed_stages, worker_groups
from framework.plugins import load_registry
from framework.spec import Spec, load_spec, validate_spec

SPEC_DIR = "/home/ray/spec"
# KubeRay refuses longer RayJob names: its RayCluster and services take the name and suffixes.
JOB_NAME_MAX = 47
HEAD_SIZE = {"cpu": "2", "memory": "8Gi"}  # the driver only
SELECTOR_EXAMPLE = "nvidia.com/gpu.product=NVIDIA-A100-SXM4-80GB"


class _BlockDumper(yaml.SafeDumper):
    """Writes multi-line strings (the spec in the ConfigMap) as readable ``|`` blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str)


def job_name(run_name: str) -> str:
    """``run.name`` as a DNS-1035 label of at most 47 characters, as KubeRay requires."""
    name = re.sub(r"[^a-z0-9]+", "-", run_name.lower()).strip("-") or "infer-run"
    if not name[0].isalpha():  # DNS-1035: a letter first ("2024-nightly" is refused)
        name = f"run-{name}"
    return name[:JOB_NAME_MAX].rstrip("-")


def _accelerator_warning(spec: Spec, pods: Pods) -> str | None:
    # Ray still holds these stages to their accelerator_type, but without a node selector
    # Kubernetes may start their pods on other nodes: a GPU stage's actors never start there,
    # and a CPU stage's tasks run off the nodes it asked for.
    asking = typed_stages(spec)
    types = sorted({s.resources.accelerator_type for s in asking})
    # One untyped selector is right for one type; for several it sends all to one pool.
    untyped_fits = bool(pods.gpu_node_selector) and len(types) == 1
    unplaced = [
        s
        for s in asking
        if s.resources.accelerator_type not in pods.typed_node_selectors and not untyped_fits
    ]
    if not unplaced:
        return None
    names = ", ".join(f"{s.path} ({s.resources.accelerator_type})" for s in unplaced)
    where = "its GPU pods may land on other GPU nodes, where Ray never starts it"
    if not any(on_gpu_nodes(s) for s in unplaced):
        where = "its pods may land on nodes of another type"
    if len(types) == 1:
        return (
            f"infer-run k8s: warning: no --gpu-node-selector for the accelerator_type of "
            f"{names}: {where}; add e.g. --gpu-node-selector {SELECTOR_EXAMPLE}"
        )
    first = unplaced[0].resources.accelerator_type
    return (
        f"infer-run k8s: warning: no --gpu-node-selector TYPE:LABEL=VALUE for the "
        f"accelerator_type of {names} (the spec asks {', '.join(types)}): {where}; add "
        f"one per type, e.g. --gpu-node-selector {first}:{SELECTOR_EXAMPLE.split('=')[0]}=..."
    )


def render(spec_path: str, overrides: list[str], namespace: str, pods: Pods) -> str:
    cfg = load_spec(spec_path, overrides)
    # The pods reach the outputs with their own credentials, not this machine's.
    spec = validate_spec(cfg, load_registry(), spec_path, reach_outputs=False)
    name = job_name(spec.run.name)
    spec_text = OmegaConf.to_yaml(cfg)  # unresolved: ${oc.env:...} is read in the pod
    groups = worker_groups(spec, pods)
    warning = _accelerator_warning(spec, pods)
    if warning:
        print(warning, file=sys.stderr)
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"{name}-spec", "namespace": namespace},
        "data": {"spec.yaml": spec_text},
    }
    head_pod = {
        "containers": [
            {
                "name": "ray-head",
                "image": pods.image,
                "resources": {"requests": dict(HEAD_SIZE), "limits": dict(HEAD_SIZE)},
                "volumeMounts": [{"name": "spec", "mountPath": SPEC_DIR}],
            }
        ],
        "volumes": [{"name": "spec", "configMap": {"name": f"{name}-spec"}}],
    }
    job = {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/created-by": f"infer-run-{__version__}"},
        },
        "spec": {
            "entrypoint": f"infer-run {SPEC_DIR}/spec.yaml --address auto",
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": 3600,
            "rayClusterSpec": {
                "rayVersion": ray.__version__,
                # The head only runs the driver; work goes to the groups sized from the spec.
                "headGroupSpec": {
                    "rayStartParams": {"num-cpus": "0"},
                    "template": {"spec": head_pod},
                },
                "workerGroupSpecs": groups,
            },
        },
    }
    return yaml.dump_all([config_map, job], Dumper=_BlockDumper, sort_keys=False)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="the YAML spec file")
    p.add_argument("overrides", nargs="*", help="key=value to set, ~key to delete")
    p.add_argument(
        "--image",
        type=cli_args.not_empty,
        default=f"rayproject/ray:{ray.__version__}-py311-gpu",
        help="container image with infer-run and the spec's plugin packages installed",
    )
    p.add_argument("--namespace", type=cli_args.dns_label, default="default")
    p.add_argument(
        "--cpu-workers", type=cli_args.at_least(0), default=1, help="pods in the CPU worker group"
    )
    p.add_argument(
        "--worker-cpus",
        type=cli_args.at_least(1),
        help=f"CPUs per CPU worker pod (default: {WORKER_CPUS}, or the most a CPU stage asks)",
    )
    p.add_argument(
        "--worker-memory",
        type=cli_args.k8s_memory,
        help="memory per CPU worker pod, a Kubernetes quantity (default: 32Gi, or enough "
        "for the most a CPU stage asks)",
    )
    p.add_argument(
        "--gpu-node-selector",
        type=cli_args.gpu_node_label,
        action="append",
        default=[],
        metavar="[TYPE:]LABEL=VALUE",
        help=f"node label GPU pods must have (repeatable), e.g. {SELECTOR_EXAMPLE}; "
        "with TYPE: only the pods of stages asking accelerator_type TYPE",
    )
    p.add_argument(
        "--gpu-node-taint",
        type=cli_args.node_taint,
        action="append",
        default=[],
        metavar="KEY[=VALUE][:EFFECT]",
        help="a taint of the GPU nodes (repeatable), e.g. sku=gpu:NoSchedule: pods placed "
        "there tolerate it",
    )


def main(args: argparse.Namespace) -> int:
    untyped: dict[str, str] = {}
    typed: dict[str, dict[str, str]] = {}
    for accelerator, key, value in args.gpu_node_selector:
        (typed.setdefault(accelerator, {}) if accelerator else untyped)[key] = value
    pods = Pods(
        args.image,
        args.cpu_workers,
        args.worker_cpus,
        args.worker_memory,
        untyped,
        typed,
        args.gpu_node_taint,
    )
    print(render(args.spec, args.overrides, args.namespace, pods), end="")
    return 0
