"""End to end on a local Ray: parquet → stages → model → writer, checked row by row."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import ray.data
from omegaconf import OmegaConf

from framework.cli import main
from framework.errors import ExitCode
from tests.helpers import run_cli

pytestmark = pytest.mark.ray

ROWS = 300


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("input")
    ids = np.array([f"row-{i:04d}" for i in range(ROWS)])
    rng = np.random.default_rng(0)
    values = rng.normal(size=ROWS)
    for part in range(3):  # several files, so Ray reads several blocks
        sl = slice(part * 100, (part + 1) * 100)
        pq.write_table(
            pa.table({"id": ids[sl], "x": values[sl], "junk": ["j"] * 100}),
            root / f"part-{part}.parquet",
        )
    return root


def spec_file(tmp_path: Path, dataset: Path, writer: str = "parquet") -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(
        f"""
reader: {{type: parquet, path: {dataset}}}
preprocessors:
  - {{type: select_columns, columns: [x]}}
models:
  - type: echo
    scale: 3
    resources: {{actors: [1, 2], batch_size: 64}}
writer: {{type: {writer}, path: {tmp_path / "out"}}}
"""
    )
    return path


def read_input(dataset: Path) -> dict[str, float]:
    table = pq.read_table(dataset)
    return dict(zip(table["id"].to_pylist(), table["x"].to_pylist(), strict=True))


def test_parquet_to_echo_to_parquet_keeps_every_id_once(ray_session, tmp_path, dataset, capsys):
    report_copy = tmp_path / "report.json"
    spec = spec_file(tmp_path, dataset)
    code = main([str(spec), "--report", str(report_copy), f"writer.rows_per_file={ROWS}"])
    assert code == ExitCode.OK
    files = (tmp_path / "out").glob("[!_]*.parquet")
    assert [pq.read_metadata(path).num_rows for path in files] == [ROWS]  # two without it
    out = pq.read_table(tmp_path / "out").to_pydict()
    expected = read_input(dataset)
    assert sorted(out["id"]) == sorted(expected)  # each id exactly once
    assert len(out["id"]) == len(set(out["id"])) == ROWS
    for row_id, x, y in zip(out["id"], out["x"], out["x_echo"], strict=True):
        assert x == expected[row_id]
        assert y == pytest.approx(3 * expected[row_id])
    assert "junk" not in out

    report = json.loads((tmp_path / "out" / "_infer_run_report.json").read_text())
    assert json.loads(report_copy.read_text()) == report
    assert (report["rows_read"], report["rows_written"], report["rows_failed"]) == (ROWS, ROWS, 0)
    assert report["status"] == "ok"
    assert report["rows_per_s"] > 0
    assert report["warnings"] == []
    names = [op["name"] for op in report["operators"]]
    assert any("MapBatches(models_0:echo)" in name for name in names)
    assert any("preprocessors_0:select_columns" in name for name in names)
    # Reading and the CPU stage share a task pool of the same size: one Ray Data operator,
    # which also cuts the blocks for the model's pool (4 of its batches of 64).
    assert (
        "ReadFilesParquetV2->MapBatches(reader_flags)->MapBatches(preprocessors_0:select_columns)"
        "->StreamingRepartition[num_rows_per_block=256,strict=False]" in names
    )
    # Operators and stages count from the same start: the model's operator spans its batches.
    (model_op,) = [op for op in report["operators"] if "models_0:echo" in op["name"]]
    model = report["stages"]["models[0]"]
    assert 0 <= model_op["start_s"] <= model["first_start_s"] + 0.5
    assert model["last_end_s"] - 0.5 <= model_op["end_s"] <= report["wall_time_s"] + 0.5
    assert report["components"][2]["type"] == "echo"
    assert report["plugins"]["echo"]["distribution"] == "infer-run"
    printed = capsys.readouterr().out
    assert f"rows read {ROWS}, written {ROWS}, failed 0" in printed
    # The writer's operator shows the rows written, not the one row of write statistics
    # Ray's Write operator puts out.
    (write,) = [line for line in printed.splitlines() if line.startswith("  ") and "Write" in line]
    assert write.split(": ", 1)[1].startswith(f"{ROWS} rows written, ")


def test_limit_processes_only_n_rows(ray_session, tmp_path, dataset):
    assert main([str(spec_file(tmp_path, dataset)), "--limit", "25"]) == ExitCode.OK
    out = pq.read_table(tmp_path / "out")
    assert out.num_rows == 25
    assert set(out["id"].to_pylist()) <= set(read_input(dataset))
    report = json.loads((tmp_path / "out" / "_infer_run_report.json").read_text())
    assert (report["rows_read"], report["rows_written"]) == (25, 25)


def test_a_report_path_ending_in_a_slash_is_a_folder_to_write_it_into(
    ray_session, tmp_path, dataset
):
    """``--report reports/`` wrote a file named ``reports``; a folder that existed was
    refused as a directory."""
    folder = tmp_path / "reports"
    spec = str(spec_file(tmp_path, dataset))
    assert main([spec, "--limit", "5", "--report", f"{folder}/"]) == ExitCode.OK
    assert folder.is_dir()
    assert sorted(p.name for p in folder.iterdir()) == ["_infer_run_report.json"]
    first = json.loads((folder / "_infer_run_report.json").read_text())
    assert first["rows_written"] == 5
    # Again, into the folder that now exists.
    assert main([spec, "--limit", "7", "--report", f"{folder}/", "--overwrite"]) == ExitCode.OK
    assert json.loads((folder / "_infer_run_report.json").read_text())["rows_written"] == 7


def test_a_timeline_path_ending_in_a_slash_is_a_folder_to_write_it_into(
    ray_session, tmp_path, dataset, capsys
):
    """``--timeline traces/`` wrote a file named ``traces``; a folder that existed was
    refused as a directory."""
    folder = tmp_path / "traces"
    spec = str(spec_file(tmp_path, dataset))
    assert main([spec, "--limit", "5", "--timeline", f"{folder}/"]) == ExitCode.OK
    assert f"timeline: {folder}/_infer_run_timeline.json" in capsys.readouterr().out
    assert sorted(p.name for p in folder.iterdir()) == ["_infer_run_timeline.json"]
    assert json.loads((folder / "_infer_run_timeline.json").read_text())
    # Again, into the folder that now exists, beside a report written into it too.
    argv = [spec, "--limit", "5", "--overwrite", "--timeline", f"{folder}/"]
    assert main([*argv, "--report", f"{folder}/"]) == ExitCode.OK
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["_infer_run_report.json", "_infer_run_timeline.json"]


def test_timeline_holds_this_runs_tasks_and_actor_calls_only(
    ray_session, tmp_path, dataset, capsys
):
    spec = str(spec_file(tmp_path, dataset))
    assert main([spec]) == ExitCode.OK  # an earlier run on the same Ray
    between = time.time()
    timeline = tmp_path / "trace" / "timeline.json"
    assert main([spec, "--overwrite", "--timeline", str(timeline)]) == ExitCode.OK
    assert f"timeline: {timeline}" in capsys.readouterr().out
    events = json.loads(timeline.read_text())
    assert all(e["ts"] + e["dur"] >= between * 1e6 for e in events)
    names = {e["name"] for e in events}
    # Ray Data's map tasks (reading, select_columns) and the echo actor's batch calls.
    assert any(name.endswith("_map_task") for name in names)
    assert "submit" in names and "task:execute" in names
    assert len({e["tid"] for e in events if e["name"] == "task:execute"}) >= 2


def test_a_glob_pattern_reads_only_the_files_it_matches(ray_session, tmp_path, dataset, capsys):
    spec = str(spec_file(tmp_path, dataset))
    assert main([spec, f"reader.path={dataset}/part-[02].parquet"]) == ExitCode.OK
    ids = pq.read_table(tmp_path / "out")["id"].to_pylist()
    part = {i: pq.read_table(dataset / f"part-{i}.parquet")["id"].to_pylist() for i in range(3)}
    assert sorted(ids) == sorted(part[0] + part[2])
    capsys.readouterr()
    assert main([spec, f"reader.path={dataset}/*.csv", "--validate"]) == ExitCode.SPEC_ERROR
    assert f"reader.path: no file matches {dataset}/*.csv" in capsys.readouterr().err


def test_jsonl_writer_round_trips(ray_session, tmp_path, dataset):
    spec = spec_file(tmp_path, dataset, writer="jsonl")
    assert main([str(spec), f"writer.rows_per_file={ROWS}"]) == ExitCode.OK
    files = [path.read_text().splitlines() for path in (tmp_path / "out").glob("[!_]*.json")]
    assert [len(lines) for lines in files] == [ROWS]  # two files without rows_per_file
    rows = [json.loads(line) for lines in files for line in lines]
    expected = read_input(dataset)
    assert sorted(r["id"] for r in rows) == sorted(expected)
    assert all(r["x_echo"] == pytest.approx(3 * expected[r["id"]]) for r in rows)


def test_csv_writer_keeps_rows_per_file(ray_session, tmp_path, dataset):
    spec = spec_file(tmp_path, dataset, writer="csv")
    assert main([str(spec), f"writer.rows_per_file={ROWS}"]) == ExitCode.OK
    files = [list(csv.DictReader(path.open())) for path in (tmp_path / "out").glob("*.csv")]
    assert [len(rows) for rows in files] == [ROWS]  # two files without rows_per_file
    expected = read_input(dataset)
    assert all(float(r["x_echo"]) == pytest.approx(3 * expected[r["id"]]) for r in files[0])


def test_jsonl_reader_reads_what_the_jsonl_writer_wrote(ray_session, tmp_path, dataset):
    assert main([str(spec_file(tmp_path, dataset, writer="jsonl"))]) == ExitCode.OK
    spec = tmp_path / "again.yaml"
    spec.write_text(
        f"reader: {{type: jsonl, path: {tmp_path / 'out'}}}\n"
        f"writer: {{type: parquet, path: {tmp_path / 'again'}}}\n"
    )
    assert main([str(spec)]) == ExitCode.OK
    rows = pq.read_table(tmp_path / "again").to_pylist()
    expected = read_input(dataset)
    assert sorted(r["id"] for r in rows) == sorted(expected)
    assert all(r["x_echo"] == pytest.approx(3 * expected[r["id"]]) for r in rows)


def test_a_malformed_json_line_stops_the_run_naming_file_and_line(ray_session, tmp_path, capsys):
    data = tmp_path / "in.jsonl"
    data.write_text('{"id": "a", "x": 1}\n{"id": "b", "x": \n{"id": "c", "x": 3}\n')
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"reader: {{type: jsonl, path: {data}}}\nwriter: {{type: parquet, path: {tmp_path / 'o'}}}\n"
    )
    assert main([str(spec)]) == ExitCode.RUN_FAILED
    assert capsys.readouterr().err.endswith(
        f"infer-run: error: row None failed in reader: BadInput: {data}: line 2 is not valid "
        "JSON (Expecting value: line 1 column 18 (char 17)) - errors.policy=skip writes bad "
        "rows aside\n"
    )


def test_malformed_json_lines_are_dead_lettered_and_the_rest_written(ray_session, tmp_path):
    """Under skip a bad line costs only itself, in a file of good lines (integer ids), in a
    file of nothing else, and beside a file with none; rows are counted either way."""
    data = tmp_path / "in"
    data.mkdir()
    (data / "good.jsonl").write_text('{"key": 1, "x": 1.5}\n{"key": 2, "x": 2.5}\n')
    (data / "mixed.jsonl").write_text(
        '{"key": 3, "x": 3.5}\n{"key": 4, "x": oops}\n\n[5, 6]\n{"key": 7, "x": 7.5}\n'
    )
    (data / "bad.jsonl").write_text("{not json\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "errors: {policy: skip}\n"
        f"reader: {{type: jsonl, path: {data}, id_column: key}}\n"
        "models: [{type: echo, columns: [x], scale: 2}]\n"
        f"writer: {{type: parquet, path: {tmp_path / 'o'}}}\n"
    )
    assert main([str(spec)]) == ExitCode.OK
    out = tmp_path / "o"
    rows = pads.dataset(out, format="parquet").to_table().to_pylist()
    assert sorted((r["id"], r["x_echo"]) for r in rows) == [(1, 3.0), (2, 5.0), (3, 7.0), (7, 15.0)]
    # A bad line's null id beside good integer ids must not make them floats in any file.
    assert {pq.read_schema(f).field("id").type for f in out.glob("*.parquet")} == {pa.int64()}
    records = [
        json.loads(line) for f in (out / "_dead_letter").glob("*.jsonl") for line in f.open()
    ]
    assert sorted(r["message"] for r in records) == [
        f"{data / 'bad.jsonl'}: line 1 is not valid JSON (Expecting property name enclosed "
        "in double quotes: line 1 column 2 (char 1))",
        f"{data / 'mixed.jsonl'}: line 2 is not valid JSON (Expecting value: line 1 column 17 "
        "(char 16))",
        f"{data / 'mixed.jsonl'}: line 4 is not a JSON object",
    ]
    assert {(r["id"], r["stage"], r["error_type"]) for r in records} == {
        (None, "reader", "BadInput")
    }
    report = json.loads((out / "_infer_run_report.json").read_text())
    assert (report["rows_read"], report["rows_written"], report["rows_failed"]) == (7, 4, 3)

    # Replayed (a record without an id asks for the rows without one): the bad lines are
    # read and recorded again, the old records move aside, the output keeps its rows.
    (data / "mixed.jsonl").write_text((data / "mixed.jsonl").read_text().replace("oops", "4.5"))
    assert main([str(spec), "--replay"]) == ExitCode.OK
    report = json.loads((out / "_infer_run_report.json").read_text())
    figures = ("replayed_rows", "rows_read", "rows_written", "rows_failed")
    assert tuple(report[key] for key in figures) == (3, 2, 0, 2)
    again = [json.loads(line) for f in (out / "_dead_letter").glob("*.jsonl") for line in f.open()]
    assert sorted(r["message"].split(": ", 1)[1] for r in again) == [
        "line 1 is not valid JSON (Expecting property name enclosed in double quotes: line 1 "
        "column 2 (char 1))",
        "line 4 is not a JSON object",
    ]
    assert len(list((out / "_dead_letter").glob("replayed-*/*.jsonl"))) >= 1
    assert len(pads.dataset(out, format="parquet").to_table()) == 4
    # The line fixed above had no id on record, so the replay could not ask for it; a
    # resume finds it among the ids not yet done.
    assert main([str(spec), "--resume"]) == ExitCode.OK
    report = json.loads((out / "_infer_run_report.json").read_text())
    assert tuple(report[key] for key in figures[1:]) == (3, 1, 2)
    ids = pads.dataset(out, format="parquet").to_table()["id"].to_pylist()
    assert sorted(ids) == [1, 2, 3, 4, 7]


def test_a_jsonl_file_whose_types_clash_is_an_unreadable_input(ray_session, tmp_path, capsys):
    """Every line is an object, but one column is a number here and a string there: no one
    table holds the file, so it is set aside whole under skip and named under fail."""
    data = tmp_path / "in"
    data.mkdir()
    (data / "good.jsonl").write_text('{"id": "a", "x": 1}\n{"id": "b", "x": 2}\n')
    (data / "clash.jsonl").write_text('{"id": "c", "x": 3}\n{"id": "d", "x": "four"}\n')
    # A malformed line beside the clash: the clash still makes the file unreadable.
    (data / "both.jsonl").write_text('{"id": "e", "x": 5}\n{"id": "f", "x": "six"}\n{oops\n')
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "errors: {policy: skip}\n"
        f"reader: {{type: jsonl, path: {data}}}\n"
        f"writer: {{type: parquet, path: {tmp_path / 'o'}}}\n"
    )
    assert main([str(spec)]) == ExitCode.OK
    out = tmp_path / "o"
    assert sorted(pads.dataset(out, format="parquet").to_table()["id"].to_pylist()) == ["a", "b"]
    records = {
        r["id"]: r
        for f in (out / "_dead_letter").glob("*.jsonl")
        for r in map(json.loads, f.open())
    }
    unreadable = {str(data / "clash.jsonl"), str(data / "both.jsonl")}
    assert set(records) == unreadable
    assert {(r["stage"], r["error_type"]) for r in records.values()} == {("reader", "ArrowInvalid")}
    assert "changed from number to string" in records[str(data / "clash.jsonl")]["message"]
    report = json.loads((out / "_infer_run_report.json").read_text())
    assert sorted(report["errors"]["unreadable_inputs"]) == sorted(unreadable)

    capsys.readouterr()
    failing = tmp_path / "fail.yaml"
    failing.write_text(
        f"reader: {{type: jsonl, path: {data / 'clash.jsonl'}}}\n"
        f"writer: {{type: parquet, path: {tmp_path / 'o2'}}}\n"
    )
    assert main([str(failing)]) == ExitCode.INPUT_ERROR
    assert (
        capsys.readouterr()
        .err.splitlines()[-1]
        .startswith(
            f"infer-run: error: reader: cannot read {data / 'clash.jsonl'}: ArrowInvalid: JSON parse "
            "error: Column(/x) changed from number to string"
        )
    )


@pytest.mark.parametrize(
    "pool",
    [pytest.param("", marks=pytest.mark.slow), ", resources: {actors: 1}"],
    ids=["task", "actor"],
)
def test_a_stage_that_cannot_be_built_stops_the_run_in_one_line(tmp_path, dataset, pool):
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"reader: {{type: parquet, path: {dataset}}}\n"
        f"preprocessors: [{{type: broken_build{pool}}}]\n"
        f"writer: {{type: parquet, path: {tmp_path / 'o'}}}\n"
    )
    done = run_cli(str(spec), plugins="tests.plugins.broken_build", timeout=240)
    assert done.returncode == ExitCode.RUN_FAILED, done.stderr[-3000:]
    assert done.stderr.splitlines()[-1] == (
        "infer-run: error: preprocessors[0]: labels file has 3 lines for 1000 classes"
    )


def test_existing_output_is_refused_then_overwritten(ray_session, tmp_path, dataset, capsys):
    spec = str(spec_file(tmp_path, dataset))
    assert main([spec, "--limit", "5"]) == ExitCode.OK
    capsys.readouterr()
    assert main([spec, "--limit", "7"]) == ExitCode.INPUT_ERROR
    assert capsys.readouterr().err == (
        f"infer-run: error: writer.path: output {tmp_path / 'out'} already exists "
        "- pass writer.overwrite=true to replace it\n"
    )
    assert main([spec, "--limit", "7", "writer.overwrite=true"]) == ExitCode.OK
    assert pads.dataset(tmp_path / "out", format="parquet").count_rows() == 7

    # The resolved spec beside the output: what ran, without the overwrite flag.
    ran = tmp_path / "out" / "_infer_run_spec.yaml"
    copy = OmegaConf.load(ran)
    assert copy.run.limit == 7 and copy.models[0].scale == 3 and "overwrite" not in copy.writer
    capsys.readouterr()
    assert main([str(ran)]) == ExitCode.INPUT_ERROR  # it never replaces its own output
    assert "already exists" in capsys.readouterr().err
    assert main([str(ran), "--overwrite"]) == ExitCode.OK
    assert pads.dataset(tmp_path / "out", format="parquet").count_rows() == 7


def test_an_output_that_cannot_be_written_is_one_line_not_a_traceback(tmp_path, dataset, capsys):
    (tmp_path / "a-file").write_text("not a directory")
    spec = str(spec_file(tmp_path, dataset))
    assert main([spec, f"writer.path={tmp_path / 'a-file' / 'out'}"]) == ExitCode.INPUT_ERROR
    err = capsys.readouterr().err
    assert err.startswith(f"infer-run: error: writer.path: cannot write to {tmp_path}/a-file/out: ")
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_cpu_stages_run_beside_the_model_and_light_ones_join_the_writer(
    ray_session, tmp_path, dataset
):
    # The CPU stage asks what the model asks: Ray Data would fuse it into the model's one
    # actor, and it would run there, one batch at a time beside the model.
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"""
reader: {{type: parquet, path: {dataset}}}
preprocessors:
  - {{type: select_columns, columns: [x], resources: {{num_cpus: 1}}}}
models:
  - {{type: echo, resources: {{num_cpus: 1, actors: 1}}}}
postprocessors:
  - {{type: rename_columns, mapping: {{x_echo: y}}}}
writer: {{type: parquet, path: {tmp_path / "out"}}}
"""
    )
    assert main([str(spec)]) == ExitCode.OK
    report = json.loads((tmp_path / "out" / "_infer_run_report.json").read_text())
    names = [op["name"] for op in report["operators"]]
    assert [n for n in names if "models_0" in n] == ["MapBatches(models_0:echo)"]
    # The light stage after the model still fuses with the writer's tasks.
    assert names[-1] == (
        "MapBatches(postprocessors_0:rename_columns)->MapBatches(count_rows)->Write"
    )
    assert sorted(pq.read_table(tmp_path / "out")["id"].to_pylist()) == sorted(read_input(dataset))


def model_actor_pids() -> set[int]:
    """This process's Ray's model actors (its raylet's workers are its descendants): other
    test processes running beside this one have their own."""
    found = set()
    for proc in psutil.Process().children(recursive=True):
        try:
            if " ".join(proc.cmdline()).startswith("ray::MapWorker"):
                found.add(proc.pid)
        except psutil.Error:
            continue
    return found


def test_a_failed_run_leaves_no_model_actor_behind(ray_session, tmp_path):
    # In-process runs share one Ray (bench rounds, the API, these tests): an actor left
    # alive by a failed run held CPUs that the next run waited for, forever.
    pq.write_table(pa.table({"id": [1.0, float("nan")], "x": [1.0, 2.0]}), tmp_path / "in.parquet")
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"reader: {{type: parquet, path: {tmp_path / 'in.parquet'}}}\n"
        "models: [{type: echo}]\n"
        f"writer: {{type: parquet, path: {tmp_path / 'out'}}}\n"
    )
    before = model_actor_pids()
    assert main([str(spec)]) == ExitCode.RUN_FAILED
    deadline = time.monotonic() + 10
    while model_actor_pids() - before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not model_actor_pids() - before


def test_run_data_context_reaches_the_workers_for_that_run_only(
    ray_session, tmp_path, dataset, monkeypatch
):
    # Ray Data's own knobs, set from the spec: the stage's worker sees the value, and the
    # driver's context is as before once the run ends (the next run starts from defaults).
    monkeypatch.setenv("INFER_PLUGINS", "tests.plugins.probe")
    context = ray.data.DataContext.get_current()
    before = (context.downstream_capacity_backpressure_ratio, context.target_max_block_size)
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"reader: {{type: parquet, path: {dataset}}}\n"
        "preprocessors: [{type: context_probe, key: downstream_capacity_backpressure_ratio}]\n"
        f"writer: {{type: parquet, path: {tmp_path / 'out'}}}\n"
        "run: {data_context: {downstream_capacity_backpressure_ratio: 7.5}}\n"
    )
    assert main([str(spec)]) == 0
    seen = pq.read_table(tmp_path / "out", columns=["context_value"])["context_value"]
    assert set(seen.to_pylist()) == {"7.5"}
    assert (context.downstream_capacity_backpressure_ratio, context.target_max_block_size) == before


def test_parquet_read_tasks_follow_block_mb(ray_session, tmp_path):
    # Ray Data packs 128 MiB of parquet into one read task, which the CPU stage after it
    # shares: 16 MB of input was one task for the whole run. Tasks of run.block_mb spread
    # it over as many tasks as row groups allow (here one per file).
    rng = np.random.default_rng(0)
    for part in range(4):
        blobs = [rng.bytes(20_000) for _ in range(200)]
        ids = [f"{part}-{i}" for i in range(200)]
        pq.write_table(pa.table({"id": ids, "blob": blobs}), tmp_path / f"part-{part}.parquet")
    tasks = {}
    for block_mb in (64, 2):
        spec = tmp_path / f"spec-{block_mb}.yaml"
        spec.write_text(
            f"reader: {{type: parquet, path: {tmp_path}/part-*.parquet}}\n"
            f"writer: {{type: parquet, path: {tmp_path / f'out-{block_mb}'}}}\n"
            f"run: {{block_mb: {block_mb}}}\n"
        )
        report = tmp_path / f"report-{block_mb}.json"
        assert main([str(spec), "--report", str(report)]) == 0
        operators = json.loads(report.read_text())["operators"]
        reading = next(o for o in operators if o["name"].startswith("ReadFiles"))
        tasks[block_mb] = reading["tasks"]
    assert tasks == {64: 1, 2: 4}


def test_the_specs_may_not_set_what_infer_run_sets_itself(ray_session, dataset):
    # validate's list of refused run.data_context keys and the keys a run sets are twins:
    # a key missing from the list would let a spec silently undo infer-run's own setting.
    from framework.cluster import ray_cluster
    from framework.plugins import load_registry
    from framework.ray_session import own_data_context
    from framework.spec import validate_spec
    from framework.spec.data_context import MANAGED_DATA_CONTEXT

    spec = validate_spec(
        OmegaConf.create(
            {
                "reader": {"type": "parquet", "path": str(dataset)},
                "writer": {"type": "parquet", "path": "/tmp/unused"},
            }
        ),
        load_registry(),
    )
    settings = own_data_context(spec, ray_cluster())
    assert set(settings) == set(MANAGED_DATA_CONTEXT)
    # Ray Data's high-memory warning is off for the run alone, the driver's own left as it was.
    memory = "high_memory_detector_config"
    assert getattr(settings["issue_detectors_config"], memory).detection_time_interval_s == -1
    driver = ray.data.DataContext.get_current().issue_detectors_config
    assert getattr(driver, memory).detection_time_interval_s == 30


def test_a_block_of_many_small_rows_is_shared_by_the_stages_workers(
    ray_session, tmp_path, monkeypatch
):
    # Ray Data sizes blocks by bytes and gives each task, or actor, whole blocks: one small
    # file of 2,400 short rows was one block, which one task of the CPU stage and then one
    # actor of the model worked through alone. Blocks of at most 4 batches spread it.
    # The model's 24 batches take 3.6 s in one actor: a second actor started late (seen
    # once, after the retry tests) still gets some, and the check is of the blocks.
    monkeypatch.setenv("INFER_PLUGINS", "tests.plugins.probe")
    rows = 2400
    pq.write_table(
        pa.table({"id": [f"r{i}" for i in range(rows)], "x": np.arange(float(rows))}),
        tmp_path / "in.parquet",
    )
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"reader: {{type: parquet, path: {tmp_path / 'in.parquet'}}}\n"
        "preprocessors: [{type: slow_copy, delay_s: 0.02, resources: {batch_size: 50}}]\n"
        "models:\n"
        "  - type: echo\n"
        "    delay_s: 0.15\n"
        "    resources: {actors: 2, num_cpus: 0.5, batch_size: 100,"
        " max_tasks_in_flight_per_actor: 1}\n"
        f"writer: {{type: parquet, path: {tmp_path / 'out'}}}\n"
    )
    report = tmp_path / "report.json"
    assert main([str(spec), "--report", str(report)]) == 0
    out = pq.read_table(tmp_path / "out", columns=["id", "echo_pid"])
    assert sorted(out["id"].to_pylist()) == sorted(f"r{i}" for i in range(rows))
    assert len(set(out["echo_pid"].to_pylist())) == 2  # both actors had batches
    figures = json.loads(report.read_text())
    assert len(figures["stages"]["preprocessors[0]"]["workers"]) >= 2  # several processes
    # Each cut ran in the tasks before it (the reader's, the CPU stage's), not on its own.
    cuts = [op["name"] for op in figures["operators"] if "StreamingRepartition" in op["name"]]
    assert len(cuts) == 2 and not [name for name in cuts if "->" not in name], cuts
