"""torch's threads in a Ray worker follow the CPUs its stage was granted; a worker knows
a task Ray runs again after its first worker died; a user's error leaves a read task unlogged."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import ray

from framework.errors import InputError
from framework.worker_setup import (
    READ_THREADS_LOGGER,
    _unlogged_user_errors,
    match_torch_threads,
    maybe_rerun,
    raise_unlogged,
)

pytestmark = pytest.mark.ray


@ray.remote(num_cpus=0)
def _threads_granted_no_cpu() -> tuple[int | None, int]:
    import torch

    torch.set_num_threads(3)  # what a stage granted 3 CPUs left in this reused worker
    return match_torch_threads(), torch.get_num_threads()


def test_a_stage_granted_no_cpu_gets_one_torch_thread(ray_session):
    # README: as many threads as CPUs granted, at least 1 (a postprocessor after a GPU
    # model asks for none); it kept the 3 threads of the worker's previous stage.
    assert ray.get(_threads_granted_no_cpu.remote()) == (1, 1)


def test_outside_a_worker_torch_keeps_its_threads():
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    assert match_torch_threads() == before
    assert torch.get_num_threads() == before


def _die_the_first_time(marker: str) -> None:
    if not Path(marker).exists():
        Path(marker).touch()
        os._exit(1)  # as a crash, or errors.batch_timeout_s, ends a worker


@ray.remote(num_cpus=0, max_retries=1)
def _dies_once(marker: str) -> bool:
    _die_the_first_time(marker)
    return maybe_rerun()


@ray.remote(num_cpus=0, max_restarts=1, max_task_retries=1)
class _DiesOnce:
    def call(self, marker: str) -> bool:
        _die_the_first_time(marker)
        return maybe_rerun()

    def first(self) -> bool:
        return maybe_rerun()


def test_a_task_run_again_after_its_worker_died_knows_it(ray_session, tmp_path):
    assert ray.get(_dies_once.remote(str(tmp_path / "task"))) is True
    assert ray.get(_dies_once.remote(str(tmp_path / "task"))) is False  # a first attempt


def test_an_actor_restarted_after_its_process_died_may_be_rerunning_work(ray_session, tmp_path):
    actor = _DiesOnce.remote()
    assert ray.get(actor.first.remote()) is False
    assert ray.get(actor.call.remote(str(tmp_path / "actor"))) is True
    # Ray Data's retried calls (streaming ones) say attempt 0 in the restarted process:
    # it cannot tell a retried call from a new one, so every call there counts.
    assert ray.get(actor.first.remote()) is True


def _record(error: BaseException | None) -> logging.LogRecord:
    exc_info = (type(error), error, None) if error is not None else None
    return logging.LogRecord("x", logging.WARNING, "f", 1, "Caught exception", None, exc_info)


def test_the_read_threads_log_leaves_out_only_a_users_error():
    with pytest.raises(InputError):
        raise_unlogged(InputError("reader: cannot read b.parquet"))
    read_threads = logging.getLogger(READ_THREADS_LOGGER)
    assert _unlogged_user_errors in read_threads.filters
    assert not read_threads.filter(_record(InputError("reader: cannot read b.parquet")))
    assert read_threads.filter(_record(OSError("a bug, or storage: Ray Data's to say")))
    assert read_threads.filter(_record(None))
