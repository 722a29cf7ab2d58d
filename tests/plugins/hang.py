"""A stage that hangs on chosen rows, in C (``time.sleep``) or in Python (for timeout tests),
or crashes its process on them (``how: crash``)."""

from __future__ import annotations

import os
import signal
import time

from framework import Batch, Preprocessor, hookimpl


class HangOn(Preprocessor):
    """Passes batches through, except that a batch holding one of ``ids`` never returns."""

    def __init__(self, ids: list[str], how: str = "sleep", empty_s: float = 0.0) -> None:
        self.ids = set(ids)
        self.how = how
        self.empty_s = empty_s  # also slow on a batch of no rows

    def __call__(self, batch: Batch) -> Batch:
        if not len(batch["id"]):
            time.sleep(self.empty_s)
        if self.ids & {str(i) for i in batch["id"]}:
            if self.how == "crash":  # what a decoder's segfault does to its process
                os.kill(os.getpid(), signal.SIGSEGV)
            if self.how == "sleep":
                time.sleep(3600)  # one C call: no Python-level interruption can end it
            while True:
                pass
        return batch


@hookimpl
def register_preprocessors(register):
    register("hang_on", HangOn)
