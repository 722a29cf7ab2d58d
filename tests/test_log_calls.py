"""A worker's calls to the run's log: which ones it waits for, and the driver waiting for
the rest before it reads the figures."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray

from framework import Batch
from framework.dead_letter import ErrorPolicy, batch_key
from framework.errors import RunError
from framework.telemetry import StageLog, wait_for_records
from framework.worker import StageRunner

pytestmark = pytest.mark.ray

STAGE = "preprocessors[0]"


class FailsOn:
    """Passes its batch on, except that a row whose id is ``bad`` raises ``error``."""

    def __init__(self, bad: str = "", error: type[BaseException] = ValueError) -> None:
        self.bad, self.error = bad, error

    def __call__(self, batch: Batch) -> Batch:
        if self.bad in batch["id"]:
            raise self.error(f"row {self.bad}")
        return batch


def batch(*ids: str) -> Batch:
    return {"id": np.array(ids), "x": np.arange(float(len(ids)))}


def new_log() -> Any:
    return StageLog.remote(STAGE)


@ray.remote(num_cpus=0)
def run_in_a_worker(log: Any, batches: int) -> None:
    runner = StageRunner(STAGE, FailsOn, {}, log, ErrorPolicy())
    for i in range(batches):
        runner(batch(f"{i}a", f"{i}b"))


def test_a_workers_clean_batches_are_all_counted_once_the_driver_waited(ray_session):
    log = new_log()
    ray.get(run_in_a_worker.remote(log, 20))
    wait_for_records(log, ErrorPolicy())
    stage = ray.get(log.snapshot.remote())[STAGE]
    assert (stage["batches"], stage["rows_in"], stage["rows_out"]) == (20, 40, 40)
    assert ray.get(log.in_flight_count.remote()) == 0


def test_the_driver_waits_for_a_record_still_on_its_way(ray_session):
    log = new_log()
    key = batch_key(STAGE, ["a", "b"])
    ray.get(log.begin.remote(STAGE, key, ["a", "b"], "w1"))

    def record_late() -> None:
        time.sleep(0.5)
        log.record.remote(STAGE, "n1", 0.0, 1.0, 2, 2, key=key)

    late = threading.Thread(target=record_late)
    late.start()
    wait_for_records(log, ErrorPolicy())
    counted = ray.get(log.snapshot.remote())[STAGE]["rows_in"]
    late.join()
    assert counted == 2


def test_a_batch_never_recorded_is_waited_for_only_so_long_and_said(ray_session, caplog):
    log = new_log()
    ray.get(log.begin.remote(STAGE, batch_key(STAGE, ["a"]), ["a"], "w1"))
    with caplog.at_level(logging.WARNING, logger="infer_run.telemetry"):
        wait_for_records(log, ErrorPolicy(), timeout_s=0.2)
    assert "1 batch(es) begun by the stages were never counted" in caplog.text


def test_the_final_counts_are_held_to_the_error_budget(ray_session):
    # The model's failures reached the log before the rows the first stage let in: the
    # worker's check saw no row in, so no fraction; the driver's check, on all, does.
    log = StageLog.remote(STAGE)
    failed = {"models[0]": {"ValueError": 6}}
    ray.get(log.record.remote("models[0]", "n1", 0.0, 1.0, 10, 4, failed))
    assert ErrorPolicy(max_fraction=0.5).over_budget(ray.get(log.seen.remote()), 6) is None
    ray.get(log.record.remote(STAGE, "n1", 0.0, 1.0, 10, 10))
    with pytest.raises(RunError, match=r"error budget exceeded: 6 of 10 rows failed \(60.0%\)"):
        wait_for_records(log, ErrorPolicy(max_fraction=0.5))
    wait_for_records(log, ErrorPolicy(max_fraction=0.7))  # within this budget


def test_a_batch_with_failures_waits_for_its_counts_and_breaks_the_budget(
    ray_session, tmp_path: Path
):
    log = new_log()
    errors = ErrorPolicy("skip", str(tmp_path / "dead"), max_count=0)
    runner = StageRunner(STAGE, FailsOn, {"bad": "b"}, log, errors)
    runner(batch("a"))  # clean: its record is not waited for
    with pytest.raises(RunError, match="error budget exceeded: 1 rows failed"):
        runner(batch("b", "c"))
    # Waited for: counted before the runner raised, with the clean batch sent before it.
    assert ray.get(log.failures.remote())[0] == 1
    assert ray.get(log.snapshot.remote())[STAGE]["rows_in"] == 3


def test_a_batch_given_up_midway_is_not_waited_for(ray_session):
    # Ray Data cancels the tasks a run.limit no longer needs: KeyboardInterrupt in the call.
    log = new_log()
    runner = StageRunner(STAGE, FailsOn, {"bad": "b", "error": KeyboardInterrupt}, log)
    with pytest.raises(KeyboardInterrupt):
        runner(batch("a", "b"))
    assert ray.get(log.in_flight_count.remote()) == 0
    runner(batch("c"))
    assert ray.get(log.snapshot.remote())[STAGE]["rows_in"] == 1
