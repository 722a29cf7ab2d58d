"""What runs inside a Ray worker for each stage: build it once, size torch's threads to the
CPUs Ray granted, hold the stage to the batch contract, and log each batch's timing.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import ray

from framework.components import ID_COLUMN, Batch
from framework.errors import RunError


def granted(resource: str) -> float:
    """How much of ``resource`` Ray granted the current task or actor (0 outside Ray)."""
    if not ray.is_initialized():
        return 0.0
    return float(ray.get_runtime_context().get_assigned_resources().get(resource, 0.0))


def match_torch_threads() -> int | None:
    """Make torch use as many threads as CPUs granted: no oversubscription, no idle cores.

    Only when the stage already imported torch: importing it costs a second per worker.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    cpus = granted("CPU")
    wanted = max(1, round(cpus)) if cpus else torch.get_num_threads()
    if torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)
    return wanted


def checked_call(stage: Any, batch: Batch, name: str) -> Batch:
    """Run one stage on one batch and hold it to the batch contract."""
    rows = len(batch[ID_COLUMN]) if ID_COLUMN in batch else None
    out = stage(batch)
    if not isinstance(out, dict):
        raise RunError(f"stage {name} returned {type(out).__name__}, expected a dict of arrays")
    if ID_COLUMN not in out:
        raise RunError(f"stage {name} dropped the {ID_COLUMN!r} column")
    for column, values in out.items():
        if len(values) != rows:
            raise RunError(
                f"stage {name} returned {len(values)} rows in column {column!r} for {rows} input rows"
            )
    return out


class StageRunner:
    """One stage in one worker process; ``log`` is the run's StageLog actor (or None)."""

    def __init__(self, path: str, cls: type, params: dict[str, Any], log: Any = None) -> None:
        self.path = path
        self.cls = cls
        self.params = params
        self.log = log
        self.stage: Any = None

    def build(self) -> None:
        self.stage = self.cls(**self.params)
        threads = match_torch_threads()
        if self.log is not None:
            torch = sys.modules.get("torch")
            info = {
                "node_id": ray.get_runtime_context().get_node_id(),
                "pid": os.getpid(),
                "cpus": granted("CPU"),
                "gpus": granted("GPU"),
                "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
                "torch_threads": threads,
                "cuda_initialized": bool(torch and torch.cuda.is_initialized()),
            }
            ray.get(self.log.worker.remote(self.path, info))

    def __call__(self, batch: Batch) -> Batch:
        if self.stage is None:
            self.build()
        match_torch_threads()  # task workers are reused across stages with other grants
        rows = len(batch[ID_COLUMN]) if ID_COLUMN in batch else 0
        start = time.time()
        out = checked_call(self.stage, batch, self.path)
        end = time.time()
        if self.log is not None:
            node = ray.get_runtime_context().get_node_id()
            # Waited on so that every batch is counted before the driver reads the log.
            ray.get(self.log.record.remote(self.path, node, start, end, rows, len(out[ID_COLUMN])))
        return out
