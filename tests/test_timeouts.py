"""errors.batch_timeout_s: a hung stage call ends its worker, and only the rows that hang
are given up on - whether the stage hangs in C or in Python, in a task or an actor."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pyarrow.parquet as pq
import pytest

from framework.errors import ExitCode
from framework.watchdog import TIMEOUT_EXIT_CODE
from tests.helpers import ROOT, run_cli, write_id_parts

IDS = [f"r{i:03d}" for i in range(40)]
HUNG = ["r007", "r023"]  # in two different batches of 8


def run_python(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
    )


def test_exit_after_ends_the_process_stuck_in_c_code(tmp_path):
    marker = tmp_path / "expired"
    done = run_python(
        f"""
        import pathlib, time
        from framework.watchdog import exit_after
        with exit_after(0.5, lambda: pathlib.Path({str(marker)!r}).write_text("rows")):
            time.sleep(50)
        print("not reached")
        """
    )
    assert done.returncode == TIMEOUT_EXIT_CODE, done.stderr
    assert marker.read_text() == "rows" and "not reached" not in done.stdout


def test_exit_after_leaves_a_call_that_ends_in_time_alone(tmp_path):
    marker = tmp_path / "expired"
    done = run_python(
        f"""
        import pathlib, time
        from framework.watchdog import exit_after
        with exit_after(0.5, lambda: pathlib.Path({str(marker)!r}).write_text("rows")):
            pass
        time.sleep(1.0)  # past the deadline: the watchdog must have stood down
        with exit_after(None, lambda: pathlib.Path({str(marker)!r}).write_text("rows")):
            time.sleep(0.1)
        print("finished")
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "finished" and not marker.exists()


def hang_spec(tmp_path, how: str, policy: str, actors: bool) -> str:
    data = write_id_parts(tmp_path / "in", IDS)
    pool = ", actors: 1" if actors else ""
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"""
errors: {{policy: {policy}, batch_timeout_s: 3}}
reader: {{type: parquet, path: {data}}}
preprocessors:
  - {{type: hang_on, ids: {HUNG}, how: {how}, resources: {{batch_size: 8{pool}}}}}
writer: {{type: parquet, path: {tmp_path / "out"}}}
"""
    )
    return str(spec)


@pytest.mark.ray
@pytest.mark.parametrize(
    ("how", "actors"),
    [pytest.param("sleep", False, marks=pytest.mark.slow), ("loop", True)],
    ids=["c-task", "python-actor"],
)
def test_hung_rows_are_dead_lettered_and_the_rest_written(tmp_path, how, actors):
    done = run_cli(hang_spec(tmp_path, how, "skip", actors), plugins="tests.plugins.hang")
    assert done.returncode == ExitCode.OK, done.stderr[-3000:]
    out = tmp_path / "out"
    assert sorted(pq.read_table(out)["id"].to_pylist()) == sorted(set(IDS) - set(HUNG))
    records = [
        json.loads(line)
        for path in sorted((out / "_dead_letter").glob("*.jsonl"))
        for line in path.read_text().splitlines()
    ]
    assert sorted(r["id"] for r in records) == HUNG  # each once, though its batch ran 3 times
    assert {(r["stage"], r["error_type"]) for r in records} == {
        ("preprocessors[0]", "StageTimeout")
    }
    report = json.loads((out / "_infer_run_report.json").read_text())
    assert (report["rows_read"], report["rows_written"], report["rows_failed"]) == (40, 38, 2)
    # Each hung row ended a worker twice: once in its batch of 8, once alone.
    stage = report["stages"]["preprocessors[0]"]
    # Ended on purpose, each time: no worker crashed.
    assert (stage["timeouts"], stage["crashes"]) == (4, 0)
    assert report["errors"]["by_stage"] == {"preprocessors[0]": {"StageTimeout": 2}}
    assert "errors.batch_timeout_s" in done.stderr
    assert "never counted" not in done.stderr  # the rows given up are not waited for


@pytest.mark.ray
@pytest.mark.slow  # the timeout is checked under skip above, errors.policy=fail elsewhere
def test_under_policy_fail_a_hung_row_stops_the_run_naming_it(tmp_path):
    done = run_cli(hang_spec(tmp_path, "sleep", "fail", False), plugins="tests.plugins.hang")
    assert done.returncode == ExitCode.RUN_FAILED, done.stderr[-3000:]
    assert "row 'r007' failed in preprocessors[0]: StageTimeout: still running after 3 s" in (
        done.stderr
    )


@pytest.mark.ray
def test_a_stage_slow_on_an_empty_batch_is_not_restarted_forever(tmp_path):
    # Every row hangs, so the framework calls the stage on no rows for the batch's columns:
    # a call with no row to blame ran past the limit, ended its worker, and Ray retried it
    # without end.
    data = write_id_parts(tmp_path / "in", ["a", "b"])
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"""
errors: {{policy: skip, batch_timeout_s: 3}}
reader: {{type: parquet, path: {data}}}
preprocessors:
  - {{type: hang_on, ids: [a, b], empty_s: 5, resources: {{batch_size: 8}}}}
writer: {{type: parquet, path: {tmp_path / "out"}}}
"""
    )
    done = run_cli(str(spec), plugins="tests.plugins.hang", timeout=240)
    assert done.returncode == ExitCode.OK, done.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "_infer_run_report.json").read_text())
    assert (report["rows_read"], report["rows_written"], report["rows_failed"]) == (2, 0, 2)
    assert "0 row(s) still running" not in done.stderr


@pytest.mark.ray
@pytest.mark.parametrize(
    "actors", [pytest.param(False, marks=pytest.mark.slow), True], ids=["task", "actor"]
)
def test_a_row_that_crashes_its_worker_is_dead_lettered_not_retried_forever(tmp_path, actors):
    # A segfault in native code (a damaged PNG in libpng) took the worker down on every
    # retry of its task, without end. Now its batch is run again row by row, and the row
    # that takes the worker down alone is given up.
    data = write_id_parts(tmp_path / "in", IDS)
    pool = ", actors: 1" if actors else ""
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"""
errors: {{policy: skip}}
reader: {{type: parquet, path: {data}}}
preprocessors:
  - {{type: hang_on, ids: [r007], how: crash, resources: {{batch_size: 8{pool}}}}}
writer: {{type: parquet, path: {tmp_path / "out"}}}
"""
    )
    done = run_cli(str(spec), plugins="tests.plugins.hang", timeout=280)
    assert done.returncode == ExitCode.OK, done.stderr[-3000:]
    out = tmp_path / "out"
    assert sorted(pq.read_table(out)["id"].to_pylist()) == sorted(set(IDS) - {"r007"})
    records = [
        json.loads(line)
        for path in sorted((out / "_dead_letter").glob("*.jsonl"))
        for line in path.read_text().splitlines()
    ]
    assert [(r["id"], r["error_type"]) for r in records] == [("r007", "WorkerCrashed")]
    report = json.loads((out / "_infer_run_report.json").read_text())
    assert (report["rows_read"], report["rows_written"], report["rows_failed"]) == (40, 39, 1)
    # Died on the batch of 8, then on the row alone.
    assert report["stages"]["preprocessors[0]"]["crashes"] == 2
    assert "never counted" not in done.stderr  # the row given up is not waited for
