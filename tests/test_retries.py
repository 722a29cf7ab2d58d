"""Transient errors (errors.retry_on) re-run the batch before any row is given up on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from framework.dead_letter import ErrorPolicy
from framework.errors import ExitCode
from framework.worker import StageRunner
from tests.helpers import run_cli, write_id_parts
from tests.plugins.flaky import FlakyOnce

IDS = [f"r{i:03d}" for i in range(40)]


def runner(tmp_path: Path, error: str, **policy) -> StageRunner:
    errors = ErrorPolicy(policy="skip", retry_on=("ConnectionError",), retry_backoff_s=0, **policy)
    params = {"markers": str(tmp_path), "error": error}
    return StageRunner("preprocessors[0]", FlakyOnce, params, errors=errors)


def batch() -> dict[str, np.ndarray]:
    return {"id": np.array(IDS[:4]), "x": np.arange(4)}


def test_a_transient_error_reruns_the_whole_batch(tmp_path):
    stage = runner(tmp_path, "ConnectionError", retries=1)
    out = stage(batch())
    assert out["id"].tolist() == IDS[:4] and stage.retries == 1


def test_without_retries_the_rows_are_isolated_one_by_one(tmp_path):
    stage = runner(tmp_path, "ConnectionError", retries=0)
    out = stage(batch())
    # Each row alone is a new first id, so each one's first try fails too: all dead-lettered.
    assert out["id"].tolist() == [IDS[0]] and stage.retries == 0


def test_an_error_not_named_in_retry_on_is_not_retried(tmp_path):
    stage = runner(tmp_path, "ValueError", retries=3)
    stage(batch())
    assert stage.retries == 0


def test_retry_on_matches_base_classes_by_name():
    policy = ErrorPolicy(retry_on=("OSError",))
    assert policy.retryable(ConnectionResetError("reset"))
    assert not policy.retryable(ValueError("bad"))
    assert ErrorPolicy(retry_on=("builtins.TimeoutError",)).retryable(TimeoutError())


@pytest.mark.ray
def test_a_run_with_a_flaky_stage_loses_nothing_and_reports_its_retries(tmp_path):
    data = write_id_parts(tmp_path / "in", IDS)
    markers = tmp_path / "markers"
    markers.mkdir()
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"""
errors: {{policy: fail, retry_backoff_s: 0.01}}
reader: {{type: parquet, path: {data}}}
preprocessors:
  - {{type: flaky_once, markers: {markers}, resources: {{batch_size: 10}}}}
writer: {{type: parquet, path: {tmp_path / "out"}}}
"""
    )
    done = run_cli(str(spec), plugins="tests.plugins.flaky")
    assert done.returncode == ExitCode.OK, done.stderr[-3000:]
    out = tmp_path / "out"
    assert sorted(pq.read_table(out)["id"].to_pylist()) == IDS
    report = json.loads((out / "_infer_run_report.json").read_text())
    stage = report["stages"]["preprocessors[0]"]
    # Under policy fail, one failed try would have stopped the run: every batch was retried.
    assert stage["retries"] == stage["batches"] == len(list(markers.iterdir())) > 0
    assert report["rows_failed"] == 0


def test_a_bad_row_logs_one_line_and_its_traceback_only_at_debug(caplog):
    import logging

    from framework.row_isolation import run_isolated

    def call(row: dict) -> dict:
        if row["id"][0] == "bad":
            raise ValueError("cannot decode")
        return row

    batch = {"id": np.array(["a", "bad", "c"]), "x": np.arange(3.0)}
    with caplog.at_level(logging.DEBUG, logger="infer_run"):
        out, failures = run_isolated(call, batch, "preprocessors[0]", stop_at_first=False)
    assert list(out["id"]) == ["a", "c"] and [f.row_id for f in failures] == ["bad"]
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.getMessage() == "row 'bad' failed in preprocessors[0]: ValueError: cannot decode"
    assert warning.exc_info is None
    assert any(r.exc_info for r in caplog.records if r.levelno == logging.DEBUG)
    # Under fail the run's stop line names the row; the warning reached the console after it.
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="infer_run"):
        out, failures = run_isolated(call, batch, "preprocessors[0]", stop_at_first=True)
    assert [f.row_id for f in failures] == ["bad"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
