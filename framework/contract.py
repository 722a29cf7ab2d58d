"""The batch contract every stage is held to, checked on each batch it returns."""

from __future__ import annotations

from typing import Any, NoReturn

import numpy as np

from framework.components import ID_COLUMN, Batch
from framework.errors import BrokenContract


def lists_for_arrow(batch: Batch) -> Batch:
    """Object columns of per-row arrays (a list column read back as numpy) become lists.

    Ray turns an object column whose per-row arrays happen to share a shape into a
    fixed-shape tensor, block by block; Python lists always stay an Arrow list.
    """
    for name, values in batch.items():
        first = values[0] if values.dtype == object and len(values) else None
        # Only strings: numeric per-row arrays (ragged images) stay Ray's ragged tensors.
        if isinstance(first, np.ndarray) and first.dtype.kind in "USO":
            out = np.empty(len(values), dtype=object)
            for i, value in enumerate(values):
                out[i] = value.tolist() if isinstance(value, np.ndarray) else value
            batch[name] = out
    return batch


CONTRACT = f"a stage returns a dict of numpy arrays, one row per input row, in order, keeping {ID_COLUMN!r}"


def checked_call(stage: Any, batch: Batch, name: str) -> Batch:
    """Run one stage on one batch and hold it to the batch contract."""
    ids = batch.get(ID_COLUMN)
    out = stage(batch)
    if not isinstance(out, dict):
        broken(name, f"returned {type(out).__name__}")
    if ID_COLUMN not in out:
        broken(name, f"dropped the {ID_COLUMN!r} column")
    for column, values in out.items():
        if not isinstance(values, np.ndarray):
            broken(name, f"returned column {column!r} as {type(values).__name__}")
        if values.ndim == 0:  # np.asarray(one_number): len() of it would raise TypeError
            broken(name, f"returned column {column!r} as a 0-d array, not one value per row")
        if ids is not None and len(values) != len(ids):
            broken(name, f"returned {len(values)} rows in column {column!r} for {len(ids)}")
    if ids is not None and not np.array_equal(
        np.asarray(out[ID_COLUMN], dtype=object), np.asarray(ids, dtype=object)
    ):
        broken(name, f"changed or reordered the {ID_COLUMN!r} values")
    return out


def broken(name: str, what: str) -> NoReturn:
    raise BrokenContract(f"{name}: plugin bug: it {what} ({CONTRACT})")
