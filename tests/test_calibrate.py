"""``--plan --calibrate``: each stage timed where the run would place it, and the prediction."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf
from PIL import Image

from framework.calibrate import StageTiming, calibrate
from framework.cluster import Cluster, Node
from framework.errors import ExitCode
from framework.plan import MapNode, Plan, build_plan
from framework.plugins import load_registry
from framework.prediction import as_json, describe, predict
from framework.spec import validate_spec
from tests import helpers

GPU_BOX = Cluster((Node("n1", "10.0.0.1", cpus=8, gpus=2),), "test")
LAPTOP = Cluster((Node("n1", "10.0.0.1", cpus=2, spare_cpus=1),), "test")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> str:
    """What the plans read: the parquet reader checks that its path holds parquet data."""
    path = tmp_path_factory.mktemp("calibrate") / "in.parquet"
    pq.write_table(pa.table({"id": ["a"], "x": [1.0]}), path)
    return str(path)


def plan_for(data: str, cluster: Cluster, post: bool = False) -> Plan:
    spec = {
        "reader": {"type": "parquet", "path": data},
        "preprocessors": [{"type": "select_columns"}],
        "models": [{"type": "echo"}],
        "postprocessors": [{"type": "rename_columns", "mapping": {"x": "y"}}] if post else [],
        "writer": {"type": "parquet", "path": "/tmp/o"},
    }
    return build_plan(validate_spec(OmegaConf.create(spec), load_registry()), cluster)


def timing(plan: Plan, path: str, rows_per_s: float) -> StageTiming:
    node = next(n for n in plan.nodes if n.stage.path == path)
    mapped = isinstance(node, MapNode)
    return StageTiming(
        path=path,
        type=node.stage.type,
        compute=node.compute if mapped else "tasks",
        cpus=float(node.ray_args.get("num_cpus", 1) if mapped else node.num_cpus),
        gpus=float(node.ray_args.get("num_gpus", 0) if mapped else 0),
        rows=100,
        seconds=100 / rows_per_s,
        build_s=0.0,
        torch_threads=None,
        node_id="n1" if mapped else "",
    )


def test_pools_run_at_their_maximum_and_tasks_on_the_cpus_they_leave(data: str) -> None:
    plan = plan_for(data, GPU_BOX)  # echo: 2 actors of 1 GPU and 1 CPU; CPU stage: 1 CPU tasks
    pre, model = "preprocessors[0]", "models[0]"
    got = predict(plan, [timing(plan, pre, 100), timing(plan, model, 200)])
    assert got.task_cpus == 6
    assert got.workers == {pre: 6, model: 2}
    assert got.capacity == pytest.approx({pre: 600, model: 400})
    assert (got.bottleneck, got.rows_per_s) == (model, pytest.approx(400))

    got = predict(plan, [timing(plan, pre, 50), timing(plan, model, 200)])
    assert (got.bottleneck, got.rows_per_s) == (pre, pytest.approx(300))


def test_a_task_granted_part_of_a_core_counts_as_that_part(data: str) -> None:
    plan = plan_for(data, LAPTOP)  # model 1.5 CPUs; the CPU stage 0.25 CPU, 2 tasks at once
    pre, model = "preprocessors[0]", "models[0]"
    got = predict(plan, [timing(plan, pre, 100), timing(plan, model, 30)])
    assert got.task_cpus == 0.5
    assert got.workers[pre] == 0.5  # two tasks, each on a quarter of a core
    assert got.capacity[pre] == pytest.approx(50)
    assert got.bottleneck == model


def test_task_stages_share_their_cpus_one_after_another(data: str) -> None:
    plan = plan_for(data, GPU_BOX, post=True)
    pre, model, post = "preprocessors[0]", "models[0]", "postprocessors[0]"
    timings = [timing(plan, pre, 100), timing(plan, model, 1000), timing(plan, post, 100)]
    got = predict(plan, timings)
    # 6 CPUs, each spending 10 ms per row in each of the two stages: 300 rows/s. The
    # postprocessor, asking no CPU after a GPU model, runs 2 tasks at once: 200 rows/s.
    assert got.capacity[pre] == pytest.approx(300)
    assert got.capacity[post] == pytest.approx(200)
    assert got.bottleneck == post and got.rows_per_s == pytest.approx(200)
    # Reading takes its turn on the same CPUs: 5 ms more per row, in the same tasks as
    # the preprocessor (fused), not the postprocessor's.
    got = predict(plan, [timing(plan, "reader", 200), *timings])
    assert got.capacity["reader"] == got.capacity[pre] == pytest.approx(6 / 0.025)
    assert got.capacity[post] == pytest.approx(200)
    # Uncapped, of the stages sharing the CPUs the slowest per row is named.
    got = predict(plan, [timing(plan, "reader", 200), *timings[:2]])
    assert got.bottleneck == pre and got.rows_per_s == pytest.approx(6 / 0.015)


def write_input(tmp_path, rows: int = 40):
    ids = [f"r{i:02d}" for i in range(rows)]
    pq.write_table(pa.table({"id": ids, "x": np.arange(float(rows))}), tmp_path / "in.parquet")
    return tmp_path / "in.parquet"


@pytest.mark.ray
def test_calibrate_times_each_stage_in_its_worker_and_names_the_bottleneck(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"reader: {{type: parquet, path: {write_input(tmp_path)}}}\n"
        "preprocessors: [{type: slow_copy, delay_s: 0.2, resources: {batch_size: 10}}]\n"
        "models: [{type: probe, resources: {batch_size: 10}}]\n"
        f"writer: {{type: parquet, path: {tmp_path / 'out'}}}\n"
    )
    report = tmp_path / "calibration.json"
    done = helpers.run_cli(
        str(spec), "--calibrate", "40", "--report", str(report), plugins="tests.plugins.probe"
    )
    assert done.returncode == ExitCode.OK, done.stderr[-3000:]
    figures = json.loads(report.read_text())
    reader, pre, model = figures["stages"]
    assert [s["path"] for s in figures["stages"]] == ["reader", "preprocessors[0]", "models[0]"]
    # Reading, from Ray Data's figures for the sample's read tasks.
    assert reader["rows"] >= 40 and reader["seconds"] > 0 and reader["build_s"] == 0
    assert figures["sample_rows"] == pre["rows"] == model["rows"] == 40
    # The stage sleeps 0.2 s per batch of 10 rows: no worker of it can pass 50 rows/s.
    assert 0 < pre["rows_per_s"] <= 50
    assert figures["bottleneck"] == "preprocessors[0]"
    assert figures["rows_per_s"] == pre["capacity_rows_per_s"]
    # The model was built in an actor holding the CPUs the plan gives it, threads following.
    assert model["compute"] == "actors" and model["torch_threads"] == max(1, round(model["cpus"]))
    assert "calibration: 40 sample rows" in done.stdout
    assert "expected: at most" in done.stdout and "bound by preprocessors[0]" in done.stdout
    assert not (tmp_path / "out").exists()  # calibrating writes no output


@pytest.mark.ray
@pytest.mark.parametrize(
    ("block_mb", "tasks"), [pytest.param(16, 1, marks=pytest.mark.slow), (0.25, 4)]
)
def test_calibration_reads_its_sample_in_the_runs_read_tasks(tmp_path, block_mb, tasks):
    """Four files of ~0.5 MB: one read task at the default run.block_mb, one per file at a
    quarter MB, as a run would read them."""
    rows = 200
    rng = np.random.default_rng(0)
    for part in range(4):
        ids = [f"{part}-{i:02d}" for i in range(rows // 4)]
        blobs = [rng.bytes(10_000) for _ in ids]  # distinct: parquet would fold repeats
        pq.write_table(pa.table({"id": ids, "blob": blobs}), tmp_path / f"{part}.parquet")
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"run: {{block_mb: {block_mb}}}\n"
        f"reader: {{type: parquet, path: {tmp_path}/*.parquet}}\n"
        "preprocessors: [{type: slow_copy, delay_s: 0.0}]\n"
        f"writer: {{type: parquet, path: {tmp_path / 'out'}}}\n"
    )
    report = tmp_path / "calibration.json"
    done = helpers.run_cli(
        str(spec), "--calibrate", str(rows), "--report", str(report), plugins="tests.plugins.probe"
    )
    assert done.returncode == ExitCode.OK, done.stderr[-3000:]
    reader = json.loads(report.read_text())["stages"][0]
    assert (reader["path"], reader["rows"], reader["tasks"]) == ("reader", rows, tasks)
    assert f"Ray Data read {rows} rows in {tasks} task" in done.stdout


def image_parquet_spec(tmp_path: Path, table: pa.Table, stage: str, reader_extra: str = "") -> Path:
    """A spec reading ``table`` from one parquet file through ``image_parquet``."""
    pq.write_table(table, tmp_path / "in.parquet")
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"reader: {{type: image_parquet, path: {tmp_path / 'in.parquet'}{reader_extra}}}\n"
        f"preprocessors: [{stage}]\n"
        f"writer: {{type: parquet, path: {tmp_path / 'out'}}}\n"
    )
    return spec


@pytest.mark.ray
@pytest.mark.slow
def test_a_row_the_sample_breaks_or_a_stage_that_cannot_be_built_is_one_line(tmp_path):
    ids = ["good", "bad"]
    images = [helpers.encode(Image.new("RGB", (8, 8)), "PNG"), b"junk"]
    table = pa.table({"id": ids, "image": images})
    spec = image_parquet_spec(tmp_path, table, "{type: decode_image}")
    done = helpers.run_cli(str(spec), "--calibrate", "2")
    assert done.returncode == ExitCode.RUN_FAILED, done.stderr[-3000:]
    last = done.stderr.splitlines()[-1]
    assert last.startswith("infer-run: error: --calibrate: row 'bad' failed in preprocessors[0]")
    # errors.policy does not apply to a calibration: its hint would not help.
    assert last.endswith(" - calibrate on rows every stage accepts")
    assert "errors.policy" not in last

    done = helpers.run_cli(
        str(spec),
        "--calibrate",
        "2",
        "preprocessors.0.type=broken_build",
        plugins="tests.plugins.broken_build",
    )
    assert done.returncode == ExitCode.RUN_FAILED, done.stderr[-3000:]
    assert done.stderr.splitlines()[-1] == (
        "infer-run: error: --calibrate: preprocessors[0]: labels file has 3 lines for 1000 classes"
    )


@pytest.mark.ray
@pytest.mark.slow
def test_calibration_samples_past_rows_the_reader_flags_and_records_none(tmp_path):
    """Set aside in the read tasks as in a run, but neither recorded nor a reason to stop
    (the default policy is fail); a sample of nothing but such rows is one line."""
    good = list(range(12))
    pixels = pa.array([good, good[:5], good, good, good], pa.list_(pa.uint8()))
    ids = pa.array(["a", "short", None, "d", "e"])
    drop = "{type: select_columns, drop: [image]}"
    table = pa.table({"id": ids, "image": pixels})
    spec = image_parquet_spec(tmp_path, table, drop, ", shape: [2, 2, 3]")
    report = tmp_path / "calibration.json"
    done = helpers.run_cli(str(spec), "--calibrate", "5", "--report", str(report))
    assert done.returncode == ExitCode.OK, done.stderr[-3000:]
    assert json.loads(report.read_text())["sample_rows"] == 3
    assert not (tmp_path / "out").exists()

    pq.write_table(pa.table({"id": ids[1:3], "image": pixels[1:3]}), tmp_path / "in.parquet")
    done = helpers.run_cli(str(spec), "--calibrate", "5")
    assert done.returncode == ExitCode.INPUT_ERROR, done.stderr[-3000:]
    assert done.stderr.splitlines()[-1] == (
        "infer-run: error: --calibrate: the reader produced no rows to time (none, or only "
        "rows it flagged or that have no id)"
    )


@pytest.mark.ray
def test_a_spec_without_stages_says_how_many_rows_its_sample_had(ray_session, tmp_path) -> None:
    """Only reading is timed, from Ray Data's figures for all it read: the sample's own
    size still heads the table and the JSON (it said 0)."""
    spec = {
        "reader": {"type": "parquet", "path": str(write_input(tmp_path, rows=12))},
        "writer": {"type": "parquet", "path": str(tmp_path / "out")},
    }
    plan = build_plan(validate_spec(OmegaConf.create(spec), load_registry()), LAPTOP)
    timings, sample_rows = calibrate(plan, 5)
    assert [t.path for t in timings] == ["reader"] and timings[0].rows == 12
    prediction = predict(plan, timings)
    assert describe(timings, prediction, sample_rows).splitlines()[0] == (
        "calibration: 5 sample rows, each stage timed alone with its own resources"
    )
    assert as_json(plan, timings, prediction, sample_rows)["sample_rows"] == 5
