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


def test_a_run_whose_log_actor_died_says_so_in_its_report(ray_session, tmp_path):
    import threading
    import time

    import ray

    from framework.plugins import load_registry
    from framework.run import run_spec
    from framework.run_files import LOG_RESTARTED
    from framework.spec import load_spec, validate_spec

    ids = [f"r{i:04d}" for i in range(300)]
    data = write_id_parts(tmp_path / "in", ids)
    path = tmp_path / "spec.yaml"
    path.write_text(
        f"""
run: {{block_mb: 0.001}}
reader: {{type: parquet, path: {data}}}
models: [{{type: echo, delay_s: 0.1, resources: {{batch_size: 10}}}}]
writer: {{type: parquet, path: {tmp_path / "out"}}}
"""
    )
    registry = load_registry()
    spec = validate_spec(load_spec(path), registry, str(path))
    reports: list = []
    run = threading.Thread(target=lambda: reports.append(run_spec(spec, registry)))
    run.start()
    deadline = time.monotonic() + 120
    names: list[str] = []
    while time.monotonic() < deadline and not (
        names and list((tmp_path / "out").glob("*.parquet"))
    ):
        names = [n for n in ray.util.list_named_actors() if n.startswith("infer_run_log_")]
        time.sleep(0.2)
    assert names, "the run's log actor never appeared"
    ray.kill(ray.get_actor(names[0]), no_restart=False)  # its process dies; Ray restarts it
    run.join(timeout=240)
    assert reports, "the run did not finish"
    assert LOG_RESTARTED in reports[0].data["warnings"]
    assert sorted(pq.read_table(tmp_path / "out").to_pydict()["id"]) == ids
