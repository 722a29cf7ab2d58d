"""Ctrl-C and SIGTERM: the first stops the run, later ones must not stop its cleanup.

A second Ctrl-C used to land in Ray's atexit hook while it shut the local Ray down: Python
printed the hook's traceback and left the shutdown half done, with Ray's dashboard and
runtime-env agents still running after infer-run had exited. It could as well cut short
a replay putting its records back.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

import ray

from framework.errors import Terminated

ALREADY_STOPPING = b"infer-run: already stopping - shutting Ray down, please wait\n"


class _State:
    quiet = False  # inside ``quiet_second_stop``: the CLI's run
    stopping = False  # a stop signal came, or the run is ending
    told = False


def _stop_signal(signum: int, frame: Any) -> None:
    if _State.stopping:
        if not _State.told:
            _State.told = True
            # Not print(): the main thread may be inside a write to sys.stderr.
            os.write(2, ALREADY_STOPPING)
        return
    _State.stopping = _State.quiet
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def stop_on_sigterm() -> None:
    """Let SIGTERM (a scheduler's preemption, ``timeout``, ``kill``) stop the run as Ctrl-C does.

    Ray's own handler, set by ``ray.init``, dumps a native stack and aborts the driver.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop_signal)


@contextlib.contextmanager
def quiet_second_stop(process_ends: bool = False) -> Iterator[None]:
    """The first Ctrl-C or SIGTERM inside raises as usual; any later one while the run
    stops is told in one line and otherwise ignored.

    ``process_ends`` (the command line's run): a Ray started inside is shut down on the
    way out, where no signal can cut it short, and Ctrl-C is then ignored until the
    process has exited: Python's own handler, put back, raised in its finalizers (a
    traceback), and the default action Python restores as it finalizes ended the process
    by SIGINT instead of exit code 130. Otherwise Ray stays up for the caller's next run
    and Python's handling of Ctrl-C comes back. A program calling ``run_spec`` keeps
    Python's handling throughout.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    ours = not ray.is_initialized()
    previous = signal.signal(signal.SIGINT, _stop_signal)
    _State.quiet, _State.stopping, _State.told = True, False, False
    try:
        yield
    finally:
        if process_ends:
            _State.stopping = True
            try:
                if ours and ray.is_initialized():
                    ray.shutdown()
            finally:
                signal.signal(signal.SIGINT, signal.SIG_IGN)
        else:
            _State.quiet = _State.stopping = False
            signal.signal(signal.SIGINT, previous)


__all__ = ["quiet_second_stop", "stop_on_sigterm"]
