"""The Ray worker process a stage runs in: the resources Ray granted it, whether its call
may be a retry, torch's threads sized to them, its log lines reaching the driver's console,
and a user's error leaving a read task without Ray Data logging its traceback."""

from __future__ import annotations

import logging
import sys
import warnings
from typing import NoReturn

import ray

from framework.errors import InferError


def granted(resource: str) -> float:
    """How much of ``resource`` Ray granted the current task or actor (0 outside a worker)."""
    if not ray.is_initialized():
        return 0.0
    try:
        return float(ray.get_runtime_context().get_assigned_resources().get(resource, 0.0))
    except AssertionError:  # Ray's answer in a driver, e.g. a stage run in-process by a test
        return 0.0


def in_ray_worker() -> bool:
    """Whether this process is a Ray worker, not a driver running a stage in-process."""
    return ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE


def maybe_rerun() -> bool:
    """Whether the current task or actor call may be work Ray runs again because the
    worker that ran it died (a crash, an exit after ``errors.batch_timeout_s``): only then
    may its rows be ones a worker died on. A retried task says so; an actor's calls are
    retried in its restarted process, which cannot tell them from the calls after, so it
    counts them all. True when Ray cannot say, the safe answer."""
    try:
        # No public API tells the attempt; this one is Ray's own, used by its task events.
        attempt = ray._private.worker.global_worker.core_worker.get_current_task_attempt_number()
    except Exception:  # not connected, or Ray moved its private API
        return True
    return attempt > 0 or restarted_actor()


def restarted_actor() -> bool:
    """Whether this process is an actor Ray restarted after its process died."""
    if not in_ray_worker():
        return False
    actor = ray.get_runtime_context().get_actor_id()
    if actor is None:  # a task worker
        return False
    if actor not in _RESTARTED:  # Ray asks the GCS: once per process, not per batch
        with warnings.catch_warnings():
            # Ray's property reads its own deprecated actor_id: every run printed that
            # warning, from the log actor, among the run's own lines.
            warnings.simplefilter("ignore", DeprecationWarning)
            _RESTARTED[actor] = bool(ray.get_runtime_context().was_current_actor_reconstructed)
    return _RESTARTED[actor]


_RESTARTED: dict[str, bool] = {}  # actor id -> whether restarted


def show_info_logs(cls: type) -> None:
    """In a Ray worker, INFO lines of infer-run and of the stage's package (a model saying
    what it chose) go to stderr, which Ray forwards to the driver's console, prefixed with
    the pid. Only the driver configures logging: workers dropped every INFO line."""
    if not in_ray_worker():
        return  # a driver (a stage built in-process) logs through its own configuration
    package = cls.__module__.partition(".")[0]
    for name in {"infer_run", package} - {"builtins", "__main__"}:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)
        if not logger.hasHandlers():
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
            logger.addHandler(handler)


def match_torch_threads() -> int | None:
    """Make torch use as many threads as CPUs granted: no oversubscription, no idle cores.

    Only when the stage already imported torch: importing it costs a second per worker.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    # A stage granted no CPU (light work after a GPU model) gets one thread, not the ones
    # the worker's previous stage left; a driver (a stage run in-process) keeps its own.
    wanted = max(1, round(granted("CPU"))) if in_ray_worker() else torch.get_num_threads()
    if torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)
    return wanted


def raise_unlogged(error: InferError) -> NoReturn:
    """Raise ``error``, the user's, which stops the run, from a read task without Ray
    Data's read thread logging it first: met in one of the threads a read task reads
    files in, it is logged there with its traceback before Ray Data hands it on, and a
    worker's log reaches the console. The driver says it in one line."""
    logging.getLogger(READ_THREADS_LOGGER).addFilter(_unlogged_user_errors)
    raise error


READ_THREADS_LOGGER = "ray.data._internal.util"  # make_async_gen's "Caught exception in..."


def _unlogged_user_errors(record: logging.LogRecord) -> bool:
    return not (record.exc_info and isinstance(record.exc_info[1], InferError))
