"""`infer-run k8s --gpu-node-selector TYPE:LABEL=VALUE`: each accelerator type's GPU
groups go to that type's nodes and offer Ray the type, so each model runs on its own pool."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from framework.cli import main
from framework.errors import ExitCode
from tests import helpers
from tests.test_k8s import GPU_SPEC, groups, limits, refused, render, write


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": ["a"], "x": np.arange(1.0)}), path)
    return path


TWO_TYPES_SPEC = """
reader: {{type: parquet, path: {data}}}
preprocessors:
  - {{type: select_columns, resources: {{num_gpus: 1}}}}
models:
  - {{type: echo, resources: {{num_gpus: 1, actors: 2, accelerator_type: A100-80G}}}}
  - {{type: echo, resources: {{num_gpus: 0.5, actors: 4, accelerator_type: T4}}}}
writer: {{type: parquet, path: /out}}
"""
GKE = "cloud.google.com/gke-accelerator"


def ray_resources(group: dict) -> dict:
    return json.loads(json.loads(group["rayStartParams"].get("resources", '"{}"')))


def test_each_accelerator_type_gets_its_own_node_selector(tmp_path, data, capsys):
    # An A100 pool and a T4 pool: one selector for all GPU pods fits neither model.
    spec = write(tmp_path, TWO_TYPES_SPEC.format(data=data))
    assert (
        main(
            [
                "k8s",
                str(spec),
                "--gpu-node-selector",
                "pool=gpu",
                "--gpu-node-selector",
                f"A100-80G:{GKE}=nvidia-a100-80gb",
                f"--gpu-node-selector=T4:{GKE}=nvidia-tesla-t4",
                "--gpu-node-selector",
                "T4:pool=inference",  # a typed label wins over the untyped one
            ]
        )
        == ExitCode.OK
    )
    out, err = capsys.readouterr()
    assert err == ""
    by_name = groups(list(yaml.safe_load_all(out))[1])
    a100, t4 = by_name["gpu-0"], by_name["gpu-1"]
    assert a100["template"]["spec"]["nodeSelector"] == {"pool": "gpu", GKE: "nvidia-a100-80gb"}
    assert t4["template"]["spec"]["nodeSelector"] == {"pool": "inference", GKE: "nvidia-tesla-t4"}
    # Ray places accelerator_type by the resource `accelerator_type:NAME`; its detection
    # names an A100-80GB "A100", so each group offers the spec's spelling itself.
    assert ray_resources(a100) == {"accelerator_type:A100-80G": 1.0}
    assert (a100["replicas"], limits(a100)["nvidia.com/gpu"]) == (2, 1)
    assert ray_resources(t4) == {"accelerator_type:T4": 1.0}
    assert (t4["replicas"], limits(t4)["nvidia.com/gpu"]) == (2, 1)
    # A GPU stage asking no type gets the untyped labels only and offers no type.
    pre = by_name["gpu-preprocessors-0"]
    assert pre["template"]["spec"]["nodeSelector"] == {"pool": "gpu"}
    assert ray_resources(pre) == {}
    assert "nodeSelector" not in by_name["cpu"]["template"]["spec"]


@pytest.mark.ray
@pytest.mark.slow
def test_each_stage_runs_on_the_nodes_of_its_type(tmp_path, capsys):
    """A real cluster with one node per group, each started as KubeRay starts it (the
    group's num-gpus, resources and CPU limit): each model's actors land on the nodes of
    its type, and so do a CPU stage's tasks that ask a type (its own group)."""
    data = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(8)], "x": np.arange(8.0)}), data)
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"""
reader: {{type: parquet, path: {data}}}
preprocessors:
  - {{type: select_columns, resources: {{accelerator_type: T4, num_cpus: 1}}}}
models:
  - {{type: echo, resources: {{num_gpus: 1, accelerator_type: A100-80G, batch_size: 4}}}}
  - {{type: echo, resources: {{num_gpus: 1, accelerator_type: T4, batch_size: 4}}}}
writer: {{type: parquet, path: {tmp_path / "out"}}}
"""
    )
    flags = ["--gpu-node-selector", "A100-80G:gpu=a100", "--gpu-node-selector", "T4:gpu=t4"]
    _, job = render(capsys, str(spec), *flags, "--worker-cpus", "2")
    by_name = groups(job)
    nodes = [{"num_cpus": 2, "object_store_memory": 200 * 2**20}]  # the CPU group, as head
    for name in ("gpu-0", "gpu-1", "cpu-preprocessors-0"):
        group = by_name[name]
        nodes.append(
            {
                "num_cpus": int(limits(group)["cpu"]),
                "num_gpus": int(group["rayStartParams"]["num-gpus"]),
                "resources": ray_resources(group),
                "object_store_memory": 200 * 2**20,
            }
        )
    with helpers.ray_cluster(nodes) as address:
        done = helpers.run_cli(str(spec), "--address", address)
    assert done.returncode == ExitCode.OK, done.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "_infer_run_report.json").read_text())
    placed = {
        path: [
            sorted(k for k in n["resources"] if k.startswith("accelerator_type:"))
            for n in report["stages"][path]["nodes"]
        ]
        for path in ("preprocessors[0]", "models[0]", "models[1]")
    }
    assert placed == {
        "preprocessors[0]": [["accelerator_type:T4"]],
        "models[0]": [["accelerator_type:A100-80G"]],
        "models[1]": [["accelerator_type:T4"]],
    }


def test_an_untyped_selector_for_one_type_offers_no_resource(tmp_path, data, capsys):
    # As before typed selectors: the label may be generic, so Ray's detection decides.
    spec = write(tmp_path, GPU_SPEC.format(data=data, extra=""))
    _, job = render(capsys, str(spec), "--gpu-node-selector", "pool=gpu")
    assert ray_resources(groups(job)["gpu-0"]) == {}
    _, job = render(capsys, str(spec), "--gpu-node-selector", f"A100:{GKE}=nvidia-tesla-a100")
    gpu = groups(job)["gpu-0"]
    assert gpu["template"]["spec"]["nodeSelector"] == {GKE: "nvidia-tesla-a100"}
    assert ray_resources(gpu) == {"accelerator_type:A100": 1.0}


@pytest.mark.parametrize(
    ("flags", "unplaced", "first"),
    [
        ([], "models[0] (A100-80G), models[1] (T4)", "A100-80G"),
        # One untyped selector sends both types' pods to one pool.
        (["--gpu-node-selector", "pool=gpu"], "models[0] (A100-80G), models[1] (T4)", "A100-80G"),
        (["--gpu-node-selector", "A100-80G:gpu=a100"], "models[1] (T4)", "T4"),
    ],
)
def test_a_type_without_its_selector_warns_in_one_line(
    tmp_path, data, capsys, flags, unplaced, first
):
    spec = write(tmp_path, TWO_TYPES_SPEC.format(data=data))
    assert main(["k8s", str(spec), *flags]) == ExitCode.OK
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(
        f"infer-run k8s: warning: no --gpu-node-selector TYPE:LABEL=VALUE for the "
        f"accelerator_type of {unplaced} (the spec asks A100-80G, T4): "
    )
    assert f"add one per type, e.g. --gpu-node-selector {first}:nvidia.com/gpu.product=" in err


@pytest.mark.parametrize(
    ("spec_text", "flag", "expected"),
    [
        (
            TWO_TYPES_SPEC,
            "A100:gpu=a100",
            "infer-run: error: --gpu-node-selector A100:gpu=a100: no stage asks "
            "accelerator_type A100 (asked: A100-80G, T4)",
        ),
        (
            GPU_SPEC.replace(", accelerator_type: A100", ""),
            "T4:gpu=t4",
            "infer-run: error: --gpu-node-selector T4:gpu=t4: no stage asks "
            "accelerator_type T4 (none asks one)",
        ),
    ],
)
def test_a_type_no_stage_asks_is_refused(tmp_path, data, capsys, spec_text, flag, expected):
    spec = write(tmp_path, spec_text.format(data=data, extra=""))
    assert (
        refused(capsys, str(spec), "--gpu-node-selector", "pool=gpu", "--gpu-node-selector", flag)
        == expected
    )


CPU_TYPED_SPEC = """
reader: {{type: parquet, path: {data}}}
preprocessors:
  - {{type: select_columns, resources: {{accelerator_type: T4, custom: {{near_t4: 1}}}}}}
  - {{type: select_columns, resources: {{custom: {{anywhere: 1}}}}}}
models:
  - {{type: echo, resources: {{num_gpus: 1, accelerator_type: A100}}}}
writer: {{type: parquet, path: /out}}
"""


def test_a_cpu_stage_asking_a_type_gets_pods_on_that_types_nodes(tmp_path, data, capsys):
    # Ray places it on a node offering accelerator_type:T4, which the CPU group never
    # offers: it gets a group of its own there, with no GPU, offering the type itself.
    spec = write(tmp_path, CPU_TYPED_SPEC.format(data=data))
    flags = ["--gpu-node-selector", f"T4:{GKE}=nvidia-tesla-t4", "--gpu-node-selector", "A100:a=b"]
    _, job = render(capsys, str(spec), *flags)
    assert capsys.readouterr().err == ""
    by_name = groups(job)
    assert sorted(by_name) == ["cpu", "cpu-preprocessors-0", "gpu-0"]
    typed = by_name["cpu-preprocessors-0"]
    pod = typed["template"]["spec"]
    assert pod["nodeSelector"] == {GKE: "nvidia-tesla-t4"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert "nvidia.com/gpu" not in limits(typed)
    assert typed["rayStartParams"]["num-gpus"] == "0"
    assert ray_resources(typed) == {"accelerator_type:T4": 1.0, "near_t4": 8.0}
    assert (typed["replicas"], limits(typed)["cpu"]) == (1, "8")
    # The CPU group keeps the untyped stage's resources only.
    assert ray_resources(by_name["cpu"]) == {"anywhere": 8.0}
    assert "tolerations" not in by_name["cpu"]["template"]["spec"]


def test_a_cpu_stage_asking_a_type_without_its_selector_warns(tmp_path, data, capsys):
    # One type for the model and the CPU stage: its one selector places both.
    spec = write(tmp_path, CPU_TYPED_SPEC.format(data=data).replace("A100", "T4"))
    render(capsys, str(spec), "--gpu-node-selector", "gpu=t4")
    assert capsys.readouterr().err == ""
    spec = write(tmp_path, CPU_TYPED_SPEC.format(data=data))
    assert main(["k8s", str(spec), "--gpu-node-selector", "A100:gpu=a100"]) == ExitCode.OK
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "accelerator_type of preprocessors[0] (T4) (the spec asks A100, T4): " in err
    assert "its pods may land on nodes of another type" in err
