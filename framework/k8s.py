"""Render a spec as a KubeRay ``RayJob``: worker groups follow the spec's per-stage resources.

The spec travels in a ConfigMap as written (interpolations kept), so credentials stay
in the pods' environment instead of the manifest, and the job runs the same spec.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from typing import Any

import ray
import yaml
from omegaconf import OmegaConf

from framework import __version__
from framework.cli_args import at_least, dns_label, not_empty
from framework.plugins import load_registry
from framework.spec import Spec, load_spec, validate_spec

SPEC_DIR = "/home/ray/spec"


class _BlockDumper(yaml.SafeDumper):
    """Writes multi-line strings (the spec in the ConfigMap) as readable ``|`` blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str)


def _group(
    name: str,
    image: str,
    replicas: int,
    cpus: float,
    memory: str,
    params: dict[str, str],
    gpus: int = 0,
    node_selector: dict[str, str] | None = None,
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
        # KubeRay passes this through to `ray start --resources='{...}'`.
        params["resources"] = '"' + json.dumps(custom).replace('"', '\\"') + '"'
    return params


def worker_groups(
    spec: Spec,
    image: str,
    cpu_workers: int,
    worker_cpus: int,
    worker_memory: str,
    gpu_selector_label: str,
) -> list[dict[str, Any]]:
    """A CPU group for CPU stages, a GPU group per model that wants GPUs, custom resources kept."""
    groups = []
    cpu_custom: dict[str, float] = {}
    for stage in (spec.reader, *spec.stages, spec.writer):
        if stage.kind != "model" or stage.resources.num_gpus == 0:
            for key, value in stage.resources.custom.items():
                cpu_custom[key] = max(cpu_custom.get(key, 0.0), value * worker_cpus)
    for i, model in enumerate(spec.models):
        r = model.resources
        if r.num_gpus == 0:
            continue
        per_actor = r.num_gpus if r.num_gpus is not None else 1.0
        actors = r.actors if r.actors is not None else 1
        pool = actors if isinstance(actors, int) else actors[-1]
        gpus_per_pod = max(1, math.ceil(per_actor))
        replicas = max(1, math.ceil(pool * per_actor / gpus_per_pod))
        custom = {k: v * max(1, int(gpus_per_pod / per_actor)) for k, v in r.custom.items()}
        selector = {gpu_selector_label: r.accelerator_type} if r.accelerator_type else None
        cpus = max(2.0, float(r.num_cpus or 1) * max(1, int(gpus_per_pod / per_actor)) + 1)
        groups.append(
            _group(
                f"gpu-{i}",
                image,
                replicas,
                cpus,
                "32Gi",
                _custom_params(custom, {"num-gpus": str(gpus_per_pod)}),
                gpus_per_pod,
                selector,
            )
        )
    groups.insert(
        0,
        _group(
            "cpu", image, cpu_workers, worker_cpus, worker_memory, _custom_params(cpu_custom, {})
        ),
    )
    return groups


def render(
    spec_path: str,
    overrides: list[str],
    image: str,
    namespace: str,
    cpu_workers: int,
    worker_cpus: int,
    worker_memory: str,
    gpu_selector_label: str,
) -> str:
    cfg = load_spec(spec_path, overrides)
    spec = validate_spec(cfg, load_registry(), spec_path)
    name = re.sub(r"[^a-z0-9-]+", "-", spec.run.name.lower()).strip("-") or "infer-run"
    spec_text = OmegaConf.to_yaml(cfg)  # unresolved: ${oc.env:...} is read in the pod
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
                "image": image,
                "resources": {
                    "requests": {"cpu": "2", "memory": "8Gi"},
                    "limits": {"cpu": "2", "memory": "8Gi"},
                },
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
                "workerGroupSpecs": worker_groups(
                    spec, image, cpu_workers, worker_cpus, worker_memory, gpu_selector_label
                ),
            },
        },
    }
    return yaml.dump_all([config_map, job], Dumper=_BlockDumper, sort_keys=False)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="the YAML spec file")
    p.add_argument("overrides", nargs="*", help="key=value to set, ~key to delete")
    p.add_argument(
        "--image",
        type=not_empty,
        default=f"rayproject/ray:{ray.__version__}-py311-gpu",
        help="container image with infer-run and the spec's plugin packages installed",
    )
    p.add_argument("--namespace", type=dns_label, default="default")
    p.add_argument(
        "--cpu-workers", type=at_least(0), default=1, help="pods in the CPU worker group"
    )
    p.add_argument("--worker-cpus", type=at_least(1), default=8, help="CPUs per CPU worker pod")
    p.add_argument(
        "--worker-memory", type=not_empty, default="32Gi", help="memory per CPU worker pod"
    )
    p.add_argument(
        "--gpu-selector-label",
        default="nvidia.com/gpu.product",
        help="node label matched against a model's accelerator_type",
    )


def main(args: argparse.Namespace) -> int:
    print(
        render(
            args.spec,
            args.overrides,
            args.image,
            args.namespace,
            args.cpu_workers,
            args.worker_cpus,
            args.worker_memory,
            args.gpu_selector_label,
        ),
        end="",
    )
    return 0
