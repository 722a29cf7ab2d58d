"""A batch a stage failed on, run again row by row: only the bad rows leave the pipeline."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from framework.components import ID_COLUMN, Batch
from framework.dead_letter import Failure, plain_id
from framework.errors import BrokenContract

# The bad rows' lines keep the name they were first printed under.
log = logging.getLogger("infer_run.dead_letter")


def run_isolated(
    call: Callable[[Batch], Batch], batch: Batch, stage: str, stop_at_first: bool
) -> tuple[Batch, list[Failure]]:
    """``call`` on each row alone: the good rows' outputs joined, and a failure per bad row."""
    outputs: list[Batch] = []
    failures: list[Failure] = []
    for i in range(len(batch[ID_COLUMN])):
        row = {k: v[i : i + 1] for k, v in batch.items()}
        try:
            outputs.append(call(row))
        except BrokenContract:  # the stage's own bug, not this row's
            raise
        except Exception as exc:  # any error in the stage's code is this row's failure
            # One line per bad row: its record says why. The traceback (plugin authors'
            # business) only at DEBUG: 10,000 bad images printed half a million lines.
            # Under fail the run's stop line names the row: said here too, it reached the
            # console after that line.
            row_id = plain_id(batch[ID_COLUMN][i])
            if not stop_at_first:
                log.warning("row %r failed in %s: %s: %s", row_id, stage, type(exc).__name__, exc)
            log.debug("row %r failed in %s", row_id, stage, exc_info=True)
            failures.append(Failure(batch[ID_COLUMN][i], stage, type(exc).__name__, str(exc)))
            if stop_at_first:
                break
    if outputs:
        return {k: _concat([o[k] for o in outputs]) for k in outputs[0]}, failures
    try:
        # Every row failed: an empty batch through the stage gives the right columns.
        return call({k: v[:0] for k, v in batch.items()}), failures
    except Exception:
        return {ID_COLUMN: batch[ID_COLUMN][:0]}, failures


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    try:
        return np.concatenate(parts)
    except ValueError:  # rows of different shapes (decoded images): one object per row
        out = np.empty(sum(len(p) for p in parts), dtype=object)
        i = 0
        for part in parts:
            for value in part:
                out[i] = value
                i += 1
        return out
