"""`infer-run k8s`: the RayJob manifest's shape follows the spec's resources."""

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

ROOT = Path(__file__).parent.parent


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": ["a"], "x": np.arange(1.0)}), path)
    return path


def render(capsys, *args: str) -> tuple[dict, dict]:
    assert main(["k8s", *args]) == ExitCode.OK
    config_map, job = yaml.safe_load_all(capsys.readouterr().out)
    return config_map, job


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


def test_gpu_model_gets_a_gpu_group_and_custom_resources(tmp_path, data, capsys):
    spec = write(
        tmp_path,
        f"""
run: {{name: Nightly_Scoring}}
reader:
  type: parquet
  path: {data}
  storage: {{secret_access_key: "${{oc.env:AWS_SECRET_ACCESS_KEY,none}}"}}
preprocessors:
  - {{type: select_columns, resources: {{custom: {{cpu_node: 1}}}}}}
models:
  - type: echo
    resources: {{num_gpus: 0.5, actors: [1, 4], accelerator_type: A100, custom: {{gpu_node: 1}}}}
writer: {{type: parquet, path: s3://bucket/out}}
""",
    )
    config_map, job = render(capsys, str(spec), "--image", "me/infer:1", "--cpu-workers", "3")
    assert config_map["kind"] == "ConfigMap"
    assert config_map["metadata"]["name"] == "nightly-scoring-spec"
    carried = yaml.safe_load(config_map["data"]["spec.yaml"])
    # Interpolations travel unresolved: the secret is read in the pod, never written here.
    assert (
        carried["reader"]["storage"]["secret_access_key"] == "${oc.env:AWS_SECRET_ACCESS_KEY,none}"
    )

    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert job["spec"]["entrypoint"] == "infer-run /home/ray/spec/spec.yaml --address auto"
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["headGroupSpec"]["rayStartParams"] == {"num-cpus": "0"}
    head = cluster["headGroupSpec"]["template"]["spec"]
    assert head["volumes"] == [{"name": "spec", "configMap": {"name": "nightly-scoring-spec"}}]
    cpu, gpu = cluster["workerGroupSpecs"]
    assert (cpu["groupName"], cpu["replicas"]) == ("cpu", 3)
    assert json.loads(json.loads(cpu["rayStartParams"]["resources"])) == {"cpu_node": 8.0}
    assert "nvidia.com/gpu" not in cpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    # Four actors of half a GPU: two one-GPU pods, each advertising gpu_node for both actors.
    assert (gpu["groupName"], gpu["replicas"]) == ("gpu-0", 2)
    assert gpu["rayStartParams"]["num-gpus"] == "1"
    assert json.loads(json.loads(gpu["rayStartParams"]["resources"])) == {"gpu_node": 2.0}
    container = gpu["template"]["spec"]["containers"][0]
    assert container["image"] == "me/infer:1"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu["template"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "A100"}


def test_cpu_only_spec_has_no_gpu_group(tmp_path, data, capsys):
    spec = write(
        tmp_path,
        f"""
reader: {{type: parquet, path: {data}}}
models:
  - {{type: echo, resources: {{num_gpus: 0, num_cpus: 4}}}}
writer: {{type: parquet, path: /out}}
""",
    )
    _, job = render(capsys, str(spec), "--worker-cpus", "16")
    groups = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert [g["groupName"] for g in groups] == ["cpu"]
    limits = groups[0]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits == {"cpu": "16", "memory": "32Gi"}
    assert groups[0]["rayStartParams"] == {}


def test_resnet50_spec_manifest(capsys, tmp_path):
    data = tmp_path / "imagenet-like"
    from framework.datagen import generate

    generate(data, 4, "parquet", seed=0)
    spec = str(ROOT / "specs" / "resnet50_imagenet.yaml")
    overrides = [f"vars.input={data}", "models.0.weights=random", "models.0.resources.actors=2"]
    config_map, job = render(capsys, spec, *overrides, "--image", "me/infer-run:0.1")
    carried = yaml.safe_load(config_map["data"]["spec.yaml"])
    assert carried["models"][0]["name"] == "resnet50"
    assert carried["preprocessors"][0]["from_model"] == "${models.0}"  # kept, not expanded
    assert config_map["metadata"]["name"] == "resnet50-imagenet-spec"
    cpu, gpu = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert cpu["groupName"] == "cpu"
    # The spec leaves num_gpus to the cluster: on Kubernetes each model actor gets a GPU.
    assert (gpu["groupName"], gpu["replicas"], gpu["rayStartParams"]) == (
        "gpu-0",
        2,
        {"num-gpus": "1"},
    )
    assert gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
