"""The run's log: each batch counted once, and how busy each stage kept its workers."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from framework.dead_letter import batch_key
from framework.report import RunReport, build_report, gpu_busy, stage_figures
from framework.telemetry import StageLog
from framework.watchdog import TIMED_OUT


def test_a_batch_run_again_is_counted_once_with_its_latest_figures():
    log = StageLog.__ray_actor_class__("preprocessors[0]")
    key = batch_key("preprocessors[0]", np.array(["a", "b", "c"]))
    assert key == batch_key("preprocessors[0]", ["a", "b", "c"]) != batch_key("models[0]", "abc")
    # A task died after this batch, and its retry ran the batch again: same key.
    log.record(
        "preprocessors[0]", "n1", 0.0, 1.0, 3, 2, {"preprocessors[0]": {"ValueError": 1}}, key=key
    )
    assert log.record("preprocessors[0]", "n2", 5.0, 6.0, 3, 3, {}, key=key) == (3, 0)
    assert log.failures() == (0, {})
    other = batch_key("preprocessors[0]", ["d"])
    assert log.record(
        "preprocessors[0]", "n2", 6.0, 7.0, 1, 0, {"reader": {"BadInput": 1}}, key=other
    ) == (4, 1)
    stage = log.snapshot()["preprocessors[0]"]
    assert (stage["batches"], stage["rows_in"], stage["rows_out"], stage["busy_s"]) == (
        2,
        4,
        3,
        3.0,
    )
    assert {n: (f["rows"], f["batches"]) for n, f in stage["nodes"].items()} == {
        "n1": (0, 1),
        "n2": (4, 2),
    }


def summary_of(stages: dict) -> str:
    """The run summary of 16 rows whose stages' figures are ``stages``."""
    counts = {"rows_read": 16, "rows_written": 16, "rows_failed": 0}
    times = {"wall_time_s": 25.0, "rows_per_s": 0.64, "operators": []}
    return RunReport(
        {**counts, **times, "stages": stages, "report_path": "out/_infer_run_report.json"}
    ).summary()


def test_busy_share_is_of_each_stages_workers_while_data_streamed():
    log = StageLog.__ray_actor_class__("preprocessors[0]")
    for pid in (1, 2):
        log.worker("preprocessors[0]", {"node_id": "n1", "pid": pid})
    log.worker("models[0]", {"node_id": "n1", "pid": 3})
    # Data streamed from 10 s to 20 s: the model worked 9 s of it, each decoder 2.5 s.
    log.record("preprocessors[0]", "n1", 10.0, 12.0, 8, 8)
    log.record("preprocessors[0]", "n1", 12.0, 15.0, 8, 8)
    log.record("models[0]", "n1", 11.0, 20.0, 16, 16)
    log.record("postprocessors[0]", "n1", 19.0, 19.5, 16, 16)  # built by no worker: counts 1
    stages = stage_figures(log.snapshot(), origin=0.0, nodes={})
    shares = {path: stage["busy_share"] for path, stage in stages.items()}
    assert shares == {"preprocessors[0]": 0.25, "models[0]": 0.9, "postprocessors[0]": 0.05}
    assert "  busy while running: preprocessors[0] 25% of 2 workers, models[0] 90% of 1 worker" in (
        summary_of(stages)
    )


def test_each_workers_peak_memory_is_kept_and_the_stage_shows_the_largest():
    log = StageLog.__ray_actor_class__("models[0]")
    for pid in (1, 2):
        log.worker("models[0]", {"node_id": "n1", "pid": pid})
    mib = 2**20
    log.record("models[0]", "n1", 0.0, 1.0, 8, 8, worker=(1, 300 * mib))
    log.record("models[0]", "n1", 1.0, 2.0, 8, 8, worker=(1, 200 * mib))  # a peak stays
    log.record("models[0]", "n1", 1.0, 2.0, 8, 8, worker=(2, 1500 * mib))
    log.record("writer", "n1", 2.0, 3.0, 8, 8, worker=(3, 900 * mib))  # no worker built it
    stages = gpu_busy(stage_figures(log.snapshot(), origin=0.0, nodes={}))
    assert [w["peak_rss_bytes"] for w in stages["models[0]"]["workers"]] == [300 * mib, 1500 * mib]
    assert stages["models[0]"]["peak_rss_bytes"] == 1500 * mib
    assert "peak_rss_bytes" not in stages["writer"] and stages["writer"]["workers"] == []
    # The summary says it once, by stage path (Ray Data's own warning repeated every 30 s).
    assert "\n  peak memory per worker: models[0] 1,500 MiB\n" in summary_of(stages)


def test_the_log_actor_learns_of_its_restarts_without_a_deprecation_warning(ray_session):
    # Ray's was_current_actor_reconstructed reads its own deprecated actor_id: the warning
    # came out of every run's log actor, among the run's lines (and broke one-line errors).
    import warnings

    import ray

    from framework.worker_setup import restarted_actor

    @ray.remote(num_cpus=0)
    class Probe:
        def warnings_seen(self) -> list[str]:
            with warnings.catch_warnings(record=True) as seen:
                warnings.simplefilter("always")
                assert restarted_actor() is False
            return [str(w.message) for w in seen]

    assert ray.get(Probe.remote().warnings_seen.remote()) == []


def test_a_worker_ended_by_the_timeout_is_not_counted_as_a_crash():
    log = StageLog.__ray_actor_class__("preprocessors[0]")
    stage, ids = "preprocessors[0]", ["a", "b", "c"]
    batch = batch_key(stage, ids)
    log.begin(stage, batch, ids, "w1")
    log.timed_out(stage, ids, batch, "w1")  # the batch as a whole hung
    # The retry runs it row by row; "b" hangs alone and ends that worker too.
    assert log.begin(stage, batch, ids, "w2") == dict.fromkeys(ids, (False, TIMED_OUT))
    row = batch_key(stage, ["b"])
    log.begin(stage, row, ["b"], "w2")
    log.timed_out(stage, ["b"], row, "w2")
    assert log.begin(stage, batch, ids, "w3")["b"] == (True, TIMED_OUT)
    assert log.snapshot()[stage]["timeouts"] == 2 and log.snapshot()[stage]["crashes"] == 0
    log.begin(stage, batch, ids, "w4")  # w3 never recorded the batch: it died on it
    assert log.snapshot()[stage]["crashes"] == 1


def test_the_error_fraction_counts_the_rows_read_beside_those_the_reader_set_aside():
    log = StageLog.__ray_actor_class__("models[0]")
    flagged = {"reader": {"MissingId": 1}}
    # A block of 40 rows, one without an id, read while the model still loads: 1 of 40.
    key = batch_key("reader", ["r1", "r2"])
    assert log.record("reader", "n1", 0.0, 1.0, 1, 0, flagged, key=key, beside=39) == (40, 1)
    assert log.record("reader", "n1", 0.0, 1.0, 1, 0, flagged, key=key, beside=39) == (40, 1)
    assert log.record("models[0]", "n1", 1.0, 2.0, 8, 8) == (40, 1)  # of those 39
    assert log.record("models[0]", "n1", 2.0, 3.0, 40, 40) == (49, 1)  # and of other blocks
    assert log.snapshot()["reader"]["rows_in"] == 1  # rows_read counts each row once


def fused_run_summary(rows_in: int) -> SimpleNamespace:
    """Ray Data's stats of one operator, from the read to the write: ``rows_in`` rows read,
    one row of write statistics out."""
    figure = SimpleNamespace(sum=1.0, count=1)
    op = SimpleNamespace(
        operator_name="ReadFilesParquetV2->MapBatches(filter_ids)->MapBatches(reader_flags)"
        "->MapBatches(count_rows)->Write",
        wall_time=figure,
        output_num_rows=figure,
        total_input_num_rows=rows_in,
        earliest_start_time=1.0,
        latest_end_time=2.0,
        cpu_time=figure,
        task_rows=figure,
        node_count=figure,
    )
    return SimpleNamespace(parents=[], operators_stats=[op])


def test_a_run_no_row_went_through_reports_none_read_or_written():
    # A --resume of a finished run: the id filter kept none of the 40 rows read, and the
    # framework counted no batch. Ray's operator counts, fused up to the write, said 40.
    spec = SimpleNamespace(run=SimpleNamespace(name="x"), source="spec.yaml", resolved={})
    args = ("2024-01-01T00:00:00+00:00", "out", "out/_infer_run_report.json", {}, [], [])
    report = build_report(spec, fused_run_summary(40), 2.0, *args, stages={}).data
    assert (report["rows_read"], report["rows_written"], report["warnings"]) == (0, 0, [])
    assert "rows read 0, written 0, failed 0" in RunReport(report).summary()


def test_rows_in_flight_when_a_run_stopped_are_not_called_a_loss():
    spec = SimpleNamespace(run=SimpleNamespace(name="x"), source="spec.yaml", resolved={})
    args = ("2024-01-01T00:00:00+00:00", "out", "out/_infer_run_report.json", {}, [], [])
    stages = {
        "models[0]": {"rows_in": 40, "rows_out": 30},
        "writer": {"rows_in": 20, "rows_out": 20},
    }
    figures = {"stages": stages, "first_stage": "models[0]", "rows_failed": 5}
    summary = SimpleNamespace(parents=[], operators_stats=[])
    stopped = build_report(spec, summary, 2.0, *args, **figures, failure="5 rows failed").data
    assert stopped["warnings"] == [
        "15 rows were in flight when the run stopped: 40 read, 20 written and 5 failed"
    ]
    ended = build_report(spec, summary, 2.0, *args, **figures).data  # finished: rows missing
    assert ended["warnings"] == ["rows do not add up: 40 read, 20 written and 5 failed"]
