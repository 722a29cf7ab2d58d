"""torch's threads in a Ray worker follow the CPUs its stage was granted; a worker knows
a task Ray runs again after its first worker died; a user's error leaves it as one."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import ray
from ray.exceptions import UserCodeException

from framework.errors import InputError
from framework.failures import user_failure
from framework.worker_setup import (
    _unlogged_user_errors,
    match_torch_threads,
    maybe_rerun,
    stop_as_users,
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


@ray.remote(num_cpus=0, max_retries=0)
def _stops_as_users(message: str) -> None:
    stop_as_users(InputError(message))


def test_a_users_error_leaves_a_worker_as_user_code_with_its_message(ray_session):
    # A read task's InputError left as Ray Data's own bug: a banner and three tracebacks.
    with pytest.raises(UserCodeException) as raised:
        ray.get(_stops_as_users.remote("reader: cannot read b.parquet"))
    # Ray Data keeps only a read task's last error: its own line must name ours.
    line = "ray.exceptions.UserCodeException: framework.errors.InputError: reader: cannot"
    assert line in str(raised.value)
    found = user_failure(raised.value)
    assert isinstance(found, InputError) and str(found) == "reader: cannot read b.parquet"
    with pytest.raises(InputError):  # on a driver, as it is
        stop_as_users(InputError("reader: cannot read b.parquet"))


def _record(error: BaseException | None) -> logging.LogRecord:
    exc_info = (type(error), error, None) if error is not None else None
    return logging.LogRecord("x", logging.WARNING, "f", 1, "Caught exception", None, exc_info)


def test_the_read_threads_log_leaves_out_only_a_users_error():
    try:
        raise UserCodeException("reader: cannot read b.parquet") from InputError("x")
    except UserCodeException as exc:
        users = exc
    assert not _unlogged_user_errors(_record(users))
    assert _unlogged_user_errors(_record(UserCodeException("a bug")))
    assert _unlogged_user_errors(_record(OSError("a bug")))
    assert _unlogged_user_errors(_record(None))
