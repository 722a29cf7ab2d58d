"""Specs cannot run code, and credentials stay out of what infer-run prints and writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from framework.cli import main
from framework.errors import ExitCode

SECRET = "s3cr3t-Value-42"


def test_yaml_tags_that_build_objects_are_refused(tmp_path, capsys):
    marker = tmp_path / "pwned"
    spec = tmp_path / "spec.yaml"
    spec.write_text(f'reader: !!python/object/apply:os.system ["touch {marker}"]\n')
    assert main([str(spec), "--validate"]) == ExitCode.SPEC_ERROR
    assert not marker.exists()
    err = capsys.readouterr().err
    assert "invalid YAML" in err and "python/object/apply" in err


@pytest.mark.ray
def test_secrets_never_printed_logged_or_reported(
    ray_session, tmp_path, monkeypatch, capsys, caplog
):
    monkeypatch.setenv("INFER_TEST_TOKEN", SECRET)
    pq.write_table(pa.table({"id": ["a", "b"], "x": np.arange(2.0)}), tmp_path / "in.parquet")
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"""
vars: {{api_token: "${{oc.env:INFER_TEST_TOKEN}}"}}
reader:
  type: parquet
  path: {tmp_path / "in.parquet"}
  storage: {{secret_access_key: "${{oc.env:INFER_TEST_TOKEN}}", region: us-east-1}}
models: [{{type: echo}}]
writer: {{type: parquet, path: {tmp_path / "out"}}}
"""
    )
    assert main([str(spec), "--print-spec"]) == ExitCode.OK
    assert main([str(spec), "--plan"]) == ExitCode.OK
    assert main([str(spec), "--report", str(tmp_path / "report.json")]) == ExitCode.OK
    printed = capsys.readouterr()
    assert SECRET not in printed.out + printed.err
    assert SECRET not in caplog.text
    for path in (tmp_path / "report.json", tmp_path / "out" / "_infer_run_report.json"):
        assert SECRET not in Path(path).read_text()
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["rows_written"] == 2
