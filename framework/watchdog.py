"""Per-batch timeouts: a stage call that outlives ``errors.batch_timeout_s`` ends its process.

Nothing short of that stops a call stuck in C code (a socket read, a CUDA kernel, a
lock), and Ray Data runs actor methods off the main thread, where signals cannot
reach. So the watchdog records the rows in hand with the run's log and exits the
worker; Ray starts a new process and retries the batch, whose runner then knows
which rows hung: a batch that hung is run one row at a time, and a row that hung by
itself is dead-lettered as ``StageTimeout`` instead of being run again.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger("infer_run.watchdog")

# What a worker ended by its watchdog exits with, to tell it apart in Ray's logs.
TIMEOUT_EXIT_CODE = 75
# Why a row was given up: what the run's log (telemetry.StageLog) keeps for each suspect.
TIMED_OUT, CRASHED = "timed out", "crashed"


class StageTimeout(RuntimeError):
    """A row whose stage call outlived ``errors.batch_timeout_s`` (its worker was restarted)."""


class WorkerCrashed(RuntimeError):
    """A row whose worker process died while running it alone (a segfault in a decoder, a
    kill for memory), after dying on its batch: given up instead of killing workers forever."""


def given_up(why: str, timeout_s: float | None) -> Exception:
    """What a row run alone fails with when a worker already timed out or died on it
    alone (``why``: ``TIMED_OUT`` or ``CRASHED``); ``timeout_s``: errors.batch_timeout_s."""
    if why == TIMED_OUT:
        return StageTimeout(
            f"still running after {timeout_s:g} s "
            "(errors.batch_timeout_s), alone in its batch; its worker was restarted"
        )
    return WorkerCrashed(
        "its worker process died while running it alone (a crash in native code, or "
        "killed for memory), after dying on its batch; not run again"
    )


@contextmanager
def exit_after(timeout_s: float | None, on_expiry: Callable[[], None]) -> Iterator[None]:
    """Run the body; if it is still running after ``timeout_s``, call ``on_expiry`` from
    another thread and end the process with ``TIMEOUT_EXIT_CODE``. ``None``: no limit."""
    if timeout_s is None:
        yield
        return
    done = threading.Event()

    def watch() -> None:
        if done.wait(timeout_s):
            return
        try:
            on_expiry()
        except Exception:  # ending the process matters more than recording why
            log.exception("could not record the timed-out rows")
        finally:
            sys.stderr.flush()
            os._exit(TIMEOUT_EXIT_CODE)

    threading.Thread(target=watch, name="infer-run-watchdog", daemon=True).start()
    try:
        yield
    finally:
        done.set()


__all__ = [
    "CRASHED",
    "TIMED_OUT",
    "TIMEOUT_EXIT_CODE",
    "StageTimeout",
    "WorkerCrashed",
    "exit_after",
]
