"""Per-stage placement on a real multi-node Ray cluster started outside the test process."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from framework.errors import ExitCode
from tests import helpers

pytestmark = pytest.mark.ray
ROOT = Path(__file__).parent.parent
MIB = 1024**2


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A head with CPUs only (custom resource cpu_node) and a node advertising a GPU."""
    nodes = [
        {"num_cpus": 2, "resources": {"cpu_node": 4}, "object_store_memory": 200 * MIB},
        {
            "num_cpus": 2,
            "num_gpus": 1,
            "resources": {"gpu_node": 1},
            "object_store_memory": 200 * MIB,
        },
    ]
    with helpers.ray_cluster(nodes) as address:
        yield address


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cluster-input")
    for part in range(8):
        ids = [f"r{part}-{i:03d}" for i in range(100)]
        pq.write_table(pa.table({"id": ids, "x": np.arange(100.0)}), root / f"p{part}.parquet")
    return root


def run_cli(
    spec: Path, *args: str, timeout: float = 180, cwd: Path = ROOT
) -> subprocess.CompletedProcess:
    return helpers.run_cli(
        str(spec), *args, plugins="tests.plugins.probe", cwd=cwd, timeout=timeout
    )


def write_spec(tmp_path: Path, dataset: Path, model_resources: str) -> Path:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"""
reader: {{type: parquet, path: {dataset}}}
preprocessors:
  - type: slow_copy
    delay_s: 0.2
    resources: {{custom: {{cpu_node: 1}}, batch_size: 25}}
models:
  - type: probe
    delay_s: 0.05
    resources: {model_resources}
writer: {{type: parquet, path: {tmp_path / "out"}}}
"""
    )
    return spec


def test_cpu_stage_on_cpu_node_model_on_gpu_node_and_they_stream(cluster, dataset, tmp_path):
    spec = write_spec(tmp_path, dataset, "{num_gpus: 1, custom: {gpu_node: 1}, batch_size: 25}")
    done = run_cli(spec, "--address", cluster)
    assert done.returncode == ExitCode.OK, done.stderr[-3000:]
    rows = pq.read_table(tmp_path / "out").to_pylist()
    assert sorted(r["id"] for r in rows) == sorted(
        f"r{p}-{i:03d}" for p in range(8) for i in range(100)
    )

    report = json.loads((tmp_path / "out" / "_infer_run_report.json").read_text())
    pre, model = report["stages"]["preprocessors[0]"], report["stages"]["models[0]"]
    assert [n["resources"].get("cpu_node") for n in pre["nodes"]] == [4.0]
    assert [n["resources"].get("GPU") for n in model["nodes"]] == [1.0]
    assert pre["nodes"][0]["node_id"] != model["nodes"][0]["node_id"]
    # Streaming: the model was already busy before the CPU stage had finished.
    assert model["first_start_s"] < pre["last_end_s"]
    # Inside the workers: the model's actor holds the GPU, the CPU stage none, and nobody
    # initialised CUDA (there is no real GPU behind the advertised one).
    assert {r["gpu_ids"] for r in rows} == {"0"}
    assert not any(r["cuda_initialized"] for r in rows)
    assert {w["gpus"] for w in pre["workers"]} == {0.0}
    assert {w["gpu_ids"] == [] for w in pre["workers"]} == {True}
    # Which stage used the memory: each worker's peak, the stage's the largest of them.
    for stage in (pre, model):
        peaks = [w["peak_rss_bytes"] for w in stage["workers"]]
        assert min(peaks) > 20 * 2**20 and stage["peak_rss_bytes"] == max(peaks)


@pytest.mark.slow
def test_threads_follow_the_cpu_grant(cluster, dataset, tmp_path):
    spec = write_spec(
        tmp_path, dataset, "{num_cpus: 2, num_gpus: 0, custom: {gpu_node: 1}, batch_size: 50}"
    )
    done = run_cli(spec, "--address", cluster)
    assert done.returncode == ExitCode.OK, done.stderr[-3000:]
    rows = pq.read_table(tmp_path / "out").to_pylist()
    assert {r["threads"] for r in rows} == {2}
    assert {r["gpu_ids"] for r in rows} == {""}
    report = json.loads((tmp_path / "out" / "_infer_run_report.json").read_text())
    assert {w["torch_threads"] for w in report["stages"]["models[0]"]["workers"]} == {2}


@pytest.mark.slow
def test_ship_code_uploads_infer_run_and_the_plugins_to_the_workers(cluster, dataset, tmp_path):
    """Run from a directory without the code, as from a laptop's checkout: Ray puts the
    driver's directory first on the workers' path, so from ROOT they would import it there."""
    spec = write_spec(tmp_path, dataset, "{custom: {gpu_node: 1}, batch_size: 50}")
    # Every worker of a job with py_modules is a fresh process that unpacks them and imports
    # torch: on 2 cores over two minutes for the whole input, so a few batches do.
    args = ("--address", cluster, "ray.ship_code=true", "--limit", "100")
    done = run_cli(spec, *args, cwd=tmp_path, timeout=420)
    assert done.returncode == ExitCode.OK, done.stderr[-3000:]
    rows = pq.read_table(tmp_path / "out").to_pylist()
    framework_files = {Path(r["framework_file"]) for r in rows}
    probe_files = {Path(r["probe_file"]) for r in rows}
    assert len(framework_files) == len(probe_files) == 1
    # The copies Ray unpacked from the upload, not this checkout: infer-run, and the probe
    # plugin from tests/, which the workers could not have imported otherwise.
    for shipped in (*framework_files, *probe_files):
        assert not shipped.is_relative_to(ROOT) and "runtime_resources" in shipped.parts
    shipped_run = framework_files.pop().parent / "run.py"
    assert shipped_run.read_bytes() == (ROOT / "framework" / "run.py").read_bytes()


@pytest.mark.slow
def test_calibrate_times_each_stage_on_the_node_the_run_would_use(cluster, dataset, tmp_path):
    spec = write_spec(tmp_path, dataset, "{num_gpus: 1, custom: {gpu_node: 1}, batch_size: 25}")
    report = tmp_path / "calibration.json"
    done = run_cli(spec, "--address", cluster, "--calibrate", "50", "--report", str(report))
    assert done.returncode == ExitCode.OK, done.stderr[-3000:]
    _, pre, model = json.loads(report.read_text())["stages"]
    assert "cpu_node=4" in pre["node"] and "gpu_node=1" in model["node"]
    assert pre["node_id"] != model["node_id"]
    assert (pre["gpus"], model["gpus"]) == (0, 1)
    assert not (tmp_path / "out").exists()


def test_infeasible_spec_fails_fast_instead_of_waiting(cluster, dataset, tmp_path):
    spec = write_spec(tmp_path, dataset, "{num_gpus: 1, accelerator_type: H100}")
    # Far below the minutes Ray would wait for a resource nobody offers.
    done = run_cli(spec, "--address", cluster, timeout=60)
    assert done.returncode == ExitCode.RESOURCE_ERROR
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith(
        "infer-run: error: models[0]: asks for num_cpus=1, num_gpus=1, accelerator_type=H100 "
        "per actor, which no node has - "
    )
    # Each node with what it has, memory included (Ray's figure, which varies).
    assert re.search(r"\(2 CPUs, 1 GPUs, [\d.]+ GiB memory, gpu_node=1\)", line), line


def test_parquet_footer_readers_and_read_tasks_are_sized_while_reads_are_planned(
    monkeypatch,
) -> None:
    from framework.cluster import Cluster, Node
    from framework.ray_session import FOOTER_ACTORS, PARQUET_READ_TASK_BYTES, read_planning

    monkeypatch.delenv(FOOTER_ACTORS, raising=False)
    monkeypatch.delenv(PARQUET_READ_TASK_BYTES, raising=False)
    laptop = Cluster((Node("n", "h", cpus=2),), "test")
    big = Cluster(tuple(Node(f"n{i}", "h", cpus=64) for i in range(4)), "test")
    for cluster, expected in ((laptop, "1"), (big, "32")):  # one per 4 CPUs, Ray's 32 at most
        with read_planning(cluster, 16):
            assert os.environ[FOOTER_ACTORS] == expected
            assert os.environ[PARQUET_READ_TASK_BYTES] == str(16 * 1024**2)
        assert FOOTER_ACTORS not in os.environ  # only while the reads are planned
        assert PARQUET_READ_TASK_BYTES not in os.environ
    with read_planning(laptop, None):  # beside CPU models: Ray Data's own read task size
        assert PARQUET_READ_TASK_BYTES not in os.environ
    monkeypatch.setenv(FOOTER_ACTORS, "5")  # the user's own values win
    monkeypatch.setenv(PARQUET_READ_TASK_BYTES, "1000")
    with read_planning(laptop, 16):
        assert os.environ[FOOTER_ACTORS] == "5"
        assert os.environ[PARQUET_READ_TASK_BYTES] == "1000"
    assert os.environ[FOOTER_ACTORS] == "5"
    assert os.environ[PARQUET_READ_TASK_BYTES] == "1000"
    assert os.environ[FOOTER_ACTORS] == "5"
