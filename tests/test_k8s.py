"""`infer-run k8s`: the RayJob manifest's shape follows the spec's resources."""

from __future__ import annotations

import json
import re
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
    # No universal label names the A100: without --gpu-node-selector none is guessed.
    assert "nodeSelector" not in gpu["template"]["spec"]


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


def test_a_cpu_stage_asking_gpus_gets_a_gpu_group(tmp_path, data, capsys):
    # On the CPU group, which has no GPU, its tasks would never start.
    spec = write(
        tmp_path,
        f"""
reader: {{type: parquet, path: {data}}}
preprocessors:
  - {{type: select_columns, resources: {{num_gpus: 1, num_cpus: 2}}}}
models:
  - {{type: echo, resources: {{num_gpus: 0, num_cpus: 4}}}}
writer: {{type: parquet, path: /out}}
""",
    )
    _, job = render(capsys, str(spec))
    cpu, gpu = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert (cpu["groupName"], gpu["groupName"], gpu["replicas"]) == (
        "cpu",
        "gpu-preprocessors-0",
        1,
    )
    assert gpu["rayStartParams"]["num-gpus"] == "1"
    assert gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1


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


GPU_SPEC = """
reader: {{type: parquet, path: {data}}}
models:
  - type: echo
    resources: {{num_gpus: 1, actors: 2, accelerator_type: A100{extra}}}
writer: {{type: parquet, path: /out}}
"""
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def refused(capsys, *args: str) -> str:
    """The one line ``infer-run k8s`` refuses with, exit code 2 and no manifest."""
    try:
        code = main(["k8s", *args])
    except SystemExit as exc:  # argparse refuses bad flag values itself
        code = exc.code
    out, err = capsys.readouterr()
    assert (code, out) == (ExitCode.USAGE_ERROR, "")
    assert err.count("\n") == 1, err
    return err.rstrip("\n")


def groups(job: dict) -> dict[str, dict]:
    return {g["groupName"]: g for g in job["spec"]["rayClusterSpec"]["workerGroupSpecs"]}


def limits(group: dict) -> dict:
    resources = group["template"]["spec"]["containers"][0]["resources"]
    assert resources["requests"] == resources["limits"]
    return resources["limits"]


def test_gpu_node_selector_goes_on_gpu_groups_only(tmp_path, data, capsys):
    # NVIDIA GPU Feature Discovery's label and GKE's: the selector is what the cluster uses.
    spec = write(tmp_path, GPU_SPEC.format(data=data, extra=""))
    _, job = render(
        capsys,
        str(spec),
        "--gpu-node-selector",
        "nvidia.com/gpu.product=NVIDIA-A100-SXM4-80GB",
        "--gpu-node-selector=cloud.google.com/gke-accelerator=nvidia-tesla-a100",
    )
    by_name = groups(job)
    assert by_name["gpu-0"]["template"]["spec"]["nodeSelector"] == {
        "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB",
        "cloud.google.com/gke-accelerator": "nvidia-tesla-a100",
    }
    assert "nodeSelector" not in by_name["cpu"]["template"]["spec"]


def test_accelerator_type_without_selector_warns_in_one_line(tmp_path, data, capsys):
    spec = write(tmp_path, GPU_SPEC.format(data=data, extra=""))
    assert main(["k8s", str(spec)]) == ExitCode.OK
    out, err = capsys.readouterr()
    _, job = yaml.safe_load_all(out)
    assert "nodeSelector" not in groups(job)["gpu-0"]["template"]["spec"]
    assert err.count("\n") == 1
    assert err.startswith("infer-run k8s: warning: no --gpu-node-selector")
    assert "models[0] (A100)" in err
    assert "--gpu-node-selector nvidia.com/gpu.product=NVIDIA-A100-SXM4-80GB" in err
    # Without an accelerator_type nothing is said.
    spec = write(
        tmp_path, GPU_SPEC.format(data=data, extra="").replace(", accelerator_type: A100", "")
    )
    assert main(["k8s", str(spec)]) == ExitCode.OK
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "value",
    [
        "nvidia.com/gpu.product",  # no value
        "Bad_Prefix.com/gpu=x",  # the prefix is a DNS subdomain
        "/gpu=x",
        "example.com/=x",
        "-gpu=x",
        "g" * 64 + "=x",
        "gpu=A100 SXM",
        "gpu=" + "a" * 64,
        ":gpu=x",  # no type before the ':'
        "A100:gpu",  # no value
        "A100:-gpu=x",
    ],
)
def test_bad_gpu_node_selector_is_refused(tmp_path, data, capsys, value):
    spec = write(tmp_path, GPU_SPEC.format(data=data, extra=""))
    line = refused(capsys, str(spec), "--gpu-node-selector", value)
    assert line.startswith("infer-run k8s: error: argument --gpu-node-selector: ")


def test_the_old_selector_label_flag_is_gone(tmp_path, data, capsys):
    spec = write(tmp_path, GPU_SPEC.format(data=data, extra=""))
    assert "unrecognized arguments: --gpu-selector-label" in refused(
        capsys, str(spec), "--gpu-selector-label", "x"
    )


SIZED_SPEC = """
reader: {{type: parquet, path: {data}}}
preprocessors:
  - {{type: select_columns, resources: {{num_cpus: 12.5, memory: 40000000000, custom: {{cpu_node: 1}}}}}}
models:
  - {{type: echo, resources: {{num_gpus: 0.5, actors: 4, memory: 20000000000}}}}
writer: {{type: parquet, path: /out}}
"""


def test_pods_hold_what_the_stages_ask(tmp_path, data, capsys):
    spec = write(tmp_path, SIZED_SPEC.format(data=data))
    _, job = render(capsys, str(spec))
    cpu, gpu = groups(job)["cpu"], groups(job)["gpu-0"]
    # 12.5 CPUs per task: pods of 13; 40e9 bytes per task plus the object store's 30%
    # and 1Gi for Ray: 40e9 / 0.7 + 2**30 = 54.2Gi, so 55Gi.
    assert limits(cpu) == {"cpu": "13", "memory": "55Gi"}
    assert json.loads(json.loads(cpu["rayStartParams"]["resources"])) == {"cpu_node": 13.0}
    # Two half-GPU actors per pod, 20e9 bytes each: the same 55Gi.
    assert limits(gpu) == {"cpu": "3", "memory": "55Gi", "nvidia.com/gpu": 1}
    assert gpu["replicas"] == 2

    # Explicit sizes large enough are kept as written.
    _, job = render(capsys, str(spec), "--worker-cpus", "16", "--worker-memory", "40e9")
    assert limits(groups(job)["cpu"]) == {"cpu": "16", "memory": "40e9"}


def test_small_stages_keep_the_default_pod_sizes(tmp_path, data, capsys):
    spec = write(tmp_path, GPU_SPEC.format(data=data, extra=", memory: 1000000000"))
    _, job = render(capsys, str(spec), "--gpu-node-selector", "gpu=a100")
    assert limits(groups(job)["cpu"]) == {"cpu": "8", "memory": "32Gi"}
    assert limits(groups(job)["gpu-0"]) == {"cpu": "2", "memory": "32Gi", "nvidia.com/gpu": 1}


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (
            ["--worker-cpus", "12"],
            "infer-run: error: --worker-cpus 12: preprocessors[0] asks num_cpus 12.5 per task, "
            "more than a pod has",
        ),
        (
            ["--worker-memory", "37Gi"],
            "infer-run: error: --worker-memory 37Gi: preprocessors[0] asks memory 40000000000 "
            "(37.3Gi) per task, more than a pod has",
        ),
        (
            ["--cpu-workers", "0"],
            "infer-run: error: --cpu-workers 0: no pod for the tasks of reader, preprocessors[0], "
            "writer (the head runs none); give at least 1",
        ),
    ],
)
def test_pods_smaller_than_a_stage_are_refused(tmp_path, data, capsys, flags, expected):
    spec = write(tmp_path, SIZED_SPEC.format(data=data))
    assert refused(capsys, str(spec), *flags) == expected


def test_no_cpu_workers_when_no_stage_needs_them(tmp_path, data, capsys):
    spec = write(
        tmp_path,
        f"""
reader: {{type: parquet, path: {data}, resources: {{num_cpus: 0}}}}
models: [{{type: echo, resources: {{num_gpus: 1}}}}]
writer: {{type: parquet, path: /out, resources: {{num_cpus: 0}}}}
""",
    )
    _, job = render(capsys, str(spec), "--cpu-workers", "0")
    assert groups(job)["cpu"]["replicas"] == 0
    line = refused(capsys, str(spec), "--cpu-workers", "0", "writer.resources.num_cpus=1")
    assert line.startswith("infer-run: error: --cpu-workers 0: no pod for the tasks of writer (")


@pytest.mark.parametrize(
    ("run_name", "expected"),
    [
        ("2024-nightly", "run-2024-nightly"),
        ("Nightly scoring of all the product images, every day of 2024", None),
        ("a" * 46 + "_b", "a" * 46),  # cut at 47 on the '-': dropped
        ("__", "infer-run"),
    ],
)
def test_names_are_dns_1035_labels_kuberay_accepts(tmp_path, data, capsys, run_name, expected):
    spec = write(
        tmp_path,
        f"reader: {{type: parquet, path: {data}}}\nwriter: {{type: parquet, path: /out}}\n",
    )
    config_map, job = render(capsys, str(spec), f"run.name={run_name}")
    name = job["metadata"]["name"]
    assert DNS_1035.match(name) and len(name) <= 47
    if expected:
        assert name == expected
    else:
        assert name == "nightly-scoring-of-all-the-product-images-every"
    assert config_map["metadata"]["name"] == f"{name}-spec"
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert head["volumes"] == [{"name": "spec", "configMap": {"name": f"{name}-spec"}}]


@pytest.mark.parametrize("value", ["32GB", "lots", "32 Gi", "0", "-1Gi", "1e", ""])
def test_worker_memory_must_be_a_kubernetes_quantity(tmp_path, data, capsys, value):
    spec = write(tmp_path, GPU_SPEC.format(data=data, extra=""))
    line = refused(capsys, str(spec), "--worker-memory", value, "--gpu-node-selector", "g=a")
    assert line.startswith("infer-run k8s: error: argument --worker-memory: ")


@pytest.mark.parametrize("value", ["32Gi", "500Mi", "1e9", "64G", "1.5Gi"])
def test_worker_memory_quantities_are_kept(tmp_path, data, capsys, value):
    spec = write(
        tmp_path,
        f"reader: {{type: parquet, path: {data}}}\nwriter: {{type: parquet, path: /out}}\n",
    )
    _, job = render(capsys, str(spec), "--worker-memory", value)
    assert limits(groups(job)["cpu"])["memory"] == value


def test_rendering_does_not_reach_the_outputs_buckets(tmp_path: Path) -> None:
    # The test machine cannot reach AWS; the pods would, with their own credentials.
    data = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": ["a"], "x": [1.0]}), data)
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"reader: {{type: parquet, path: {data}}}\nmodels: [{{type: echo}}]\n"
        "writer: {type: parquet, path: s3://no-such-bucket-for-infer-run/out}\n"
        "errors: {dead_letter: s3://no-such-bucket-for-infer-run/dl}\n"
    )
    assert main(["k8s", str(spec)]) == ExitCode.OK
    assert main([str(spec), "--validate"]) == ExitCode.SPEC_ERROR


def test_fractional_custom_resources_become_whole_ones_ray_start_accepts(tmp_path, data, capsys):
    # `ray start` refuses a node resource that is not a whole number: 0.3 per task on an
    # 8-CPU pod is 2.4, and a GPU pod of one 0.5-asking actor offered 0.5.
    spec = write(
        tmp_path,
        f"""
reader: {{type: parquet, path: {data}}}
preprocessors:
  - {{type: select_columns, resources: {{custom: {{cpu_node: 0.3}}}}}}
models:
  - {{type: echo, resources: {{num_gpus: 1, custom: {{gpu_node: 0.5}}}}}}
writer: {{type: parquet, path: /out}}
""",
    )
    _, job = render(capsys, str(spec))
    cpu, gpu = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert json.loads(json.loads(cpu["rayStartParams"]["resources"])) == {"cpu_node": 3.0}
    assert json.loads(json.loads(gpu["rayStartParams"]["resources"])) == {"gpu_node": 1.0}


def test_gpu_node_taints_are_tolerated_by_every_pod_on_gpu_nodes(tmp_path, data, capsys):
    # AKS taints GPU node pools `sku=gpu:NoSchedule`: unlike GKE's nvidia.com/gpu taint, no
    # admission controller adds its toleration to pods asking for a GPU, so they would pend.
    text = GPU_SPEC.format(data=data, extra="") + (
        "preprocessors:\n  - {type: select_columns, resources: {accelerator_type: A100}}\n"
    )
    spec = write(tmp_path, text)
    flags = ["--gpu-node-selector", "agentpool=gpu", "--gpu-node-taint", "sku=gpu:NoSchedule"]
    _, job = render(capsys, str(spec), *flags, "--gpu-node-taint", "example.com/dedicated")
    sku = {"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}
    dedicated = {"key": "example.com/dedicated", "operator": "Exists"}
    by_name = groups(job)
    assert by_name["gpu-0"]["template"]["spec"]["tolerations"] == [sku, dedicated]
    # The typed CPU group keeps tolerating the usual nvidia.com/gpu taint too.
    usual = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    typed = by_name["cpu-preprocessors-0"]["template"]["spec"]["tolerations"]
    assert typed == [usual, sku, dedicated]
    assert "tolerations" not in by_name["cpu"]["template"]["spec"]


def test_without_taints_gpu_pods_carry_no_tolerations(tmp_path, data, capsys):
    spec = write(tmp_path, GPU_SPEC.format(data=data, extra=""))
    _, job = render(capsys, str(spec), "--gpu-node-selector", "gpu=a100")
    assert "tolerations" not in groups(job)["gpu-0"]["template"]["spec"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("nvidia.com/gpu", {"key": "nvidia.com/gpu", "operator": "Exists"}),
        (
            "nvidia.com/gpu:NoExecute",
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoExecute"},
        ),
        ("sku=gpu", {"key": "sku", "operator": "Equal", "value": "gpu"}),
        (
            "sku=:PreferNoSchedule",
            {"key": "sku", "operator": "Equal", "value": "", "effect": "PreferNoSchedule"},
        ),
    ],
)
def test_gpu_node_taint_forms(tmp_path, data, capsys, value, expected):
    spec = write(tmp_path, GPU_SPEC.format(data=data, extra=""))
    _, job = render(capsys, str(spec), "--gpu-node-selector", "gpu=a100", "--gpu-node-taint", value)
    assert groups(job)["gpu-0"]["template"]["spec"]["tolerations"] == [expected]


@pytest.mark.parametrize(
    "value", ["sku=gpu:NoSchedul", ":NoSchedule", "Bad_Prefix.com/x", "sku=a b", "a:b:NoSchedule"]
)
def test_bad_gpu_node_taint_is_refused(tmp_path, data, capsys, value):
    spec = write(tmp_path, GPU_SPEC.format(data=data, extra=""))
    line = refused(capsys, str(spec), "--gpu-node-taint", value)
    assert line.startswith("infer-run k8s: error: argument --gpu-node-taint: "), line
