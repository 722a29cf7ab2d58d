"""A deliberately broken preprocessor, for the test kit's own tests."""

from __future__ import annotations

import numpy as np

from framework import Batch, Preprocessor, hookimpl


class Broken(Preprocessor):
    """Drops the last row, mis-declares a dtype and is not deterministic."""

    output_columns = {"score": "float32", "label": "object"}

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, batch: Batch) -> Batch:
        self.calls += 1
        n = max(len(batch["id"]) - 1, 0)
        return {"id": batch["id"][:n], "score": np.full(n, self.calls, dtype=np.int64)}


@hookimpl
def register_preprocessors(register):
    register("broken", Broken)
