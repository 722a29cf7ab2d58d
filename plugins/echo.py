"""``echo``: a deterministic model for tests and examples, like llm's Echo model.

It needs no weights: each numeric input column ``c`` comes back as ``c_echo = c * scale``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from framework import ID_COLUMN, Batch, Model, hookimpl


class EchoModel(Model):
    """Copies numeric columns scaled by ``scale``; ``delay_s`` simulates per-batch model time."""

    def __init__(self, columns: list[str] | None = None, scale: float = 1.0, delay_s: float = 0.0):
        self.columns = columns
        self.scale = scale
        self.delay_s = delay_s
        self.pid = os.getpid()

    @classmethod
    def check(cls, params: Mapping[str, Any]) -> list[str]:
        delay = params["delay_s"]
        # time.sleep refuses a negative delay, and overflows past threading.TIMEOUT_MAX.
        if not 0 <= delay <= threading.TIMEOUT_MAX:
            return [f"delay_s: must be from 0 to {threading.TIMEOUT_MAX:.0f} s, got {delay}"]
        return []

    def __call__(self, batch: Batch) -> Batch:
        if self.delay_s:
            time.sleep(self.delay_s)
        names = self.columns or [
            name
            for name, values in batch.items()
            if name != ID_COLUMN and np.issubdtype(values.dtype, np.number)
        ]
        for name in names:
            batch[f"{name}_echo"] = batch[name] * self.scale
        batch["echo_pid"] = np.full(len(batch[ID_COLUMN]), self.pid, dtype=np.int64)
        return batch


@hookimpl
def register_models(register):
    register("echo", EchoModel)
