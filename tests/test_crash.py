"""A model worker killed mid-run: the run still completes with every id exactly once."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from framework.errors import ExitCode
from tests.helpers import run_cli, write_id_parts

pytestmark = pytest.mark.ray


def test_model_worker_killed_mid_run(tmp_path):
    ids = [f"r{i:04d}" for i in range(400)]
    data = write_id_parts(tmp_path / "in", ids)
    marker = tmp_path / "crashed"
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"""
run: {{block_mb: 0.001}}
reader: {{type: parquet, path: {data}}}
models:
  - {{type: crash_once, marker: {marker}, resources: {{batch_size: 20}}}}
writer: {{type: parquet, path: {tmp_path / "out"}}}
"""
    )
    done = run_cli(str(spec), plugins="tests.plugins.crashy", timeout=240)
    assert done.returncode == ExitCode.OK, done.stderr[-3000:]
    assert marker.exists(), "the worker never crashed: the test proves nothing"
    out = pq.read_table(tmp_path / "out").to_pydict()
    assert sorted(out["id"]) == ids  # every id, exactly once
    report = json.loads((tmp_path / "out" / "_infer_run_report.json").read_text())
    assert (report["rows_read"], report["rows_written"], report["rows_failed"]) == (400, 400, 0)
