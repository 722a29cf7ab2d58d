"""A small third-party-style preprocessor: upper-cases a string column."""

from __future__ import annotations

import numpy as np

from framework import Batch, Preprocessor, hookimpl


class Upper(Preprocessor):
    output_columns = {"text_upper": "object"}
    default_resources = {"batch_size": 8, "num_cpus": 0.5}

    def __init__(self, column: str = "text") -> None:
        self.column = column

    def __call__(self, batch: Batch) -> Batch:
        batch["text_upper"] = np.array([str(v).upper() for v in batch[self.column]], dtype=object)
        return batch


@hookimpl
def register_preprocessors(register):
    register("upper", Upper)
