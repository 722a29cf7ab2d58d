"""A model whose worker process dies once, mid-batch, the first time any copy of it runs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from framework import Batch, Model, hookimpl


class CrashOnce(Model):
    def __init__(self, marker: str) -> None:
        self.marker = Path(marker)

    def __call__(self, batch: Batch) -> Batch:
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            batch["pid"] = np.full(len(batch["id"]), os.getpid())
            return batch
        os.close(fd)
        os._exit(1)  # a hard crash: no exception, no cleanup, like an OOM kill


@hookimpl
def register_models(register):
    register("crash_once", CrashOnce)
