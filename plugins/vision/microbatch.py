"""A forward pass over slices of a batch, and the largest slice that fits in GPU memory.

Ray Data's ``batch_size`` is chosen for throughput of the whole pipeline; the largest
batch a model fits on its GPU depends on the model, the input size, the precision and
the card. ``micro_batch`` decouples the two: the model runs slices of at most that many
rows, halves the slice when the device runs out of memory, and ``auto`` probes the
largest size once, at start-up.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from typing import Protocol

import torch

logger = logging.getLogger(__name__)

AUTO = "auto"
DEFAULT_MAX = 1024
# torch.OutOfMemoryError (torch >= 2.5) is what torch.cuda.OutOfMemoryError now names.
OutOfMemoryError: type[RuntimeError] = getattr(
    torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError
)

Forward = Callable[[torch.Tensor], torch.Tensor]
MakeInput = Callable[[int], torch.Tensor]
# Starts moving rows [start, stop) to the device ahead of their forward pass.
Prefetch = Callable[[int, int], None]


class Rows(Protocol):
    """What ``run`` slices: a tensor, or rows still on their way to the device."""

    def __len__(self) -> int: ...

    def __getitem__(self, rows: slice, /) -> torch.Tensor: ...


def release_memory(device: torch.device) -> None:
    """Hand cached blocks back after an OOM, so the smaller retry does not meet fragmentation."""
    gc.collect()  # frames of the failed attempt may still hold tensors
    if device.type == "cuda":
        torch.cuda.empty_cache()


class MicroBatcher:
    """Runs ``forward`` over slices of at most ``size`` rows (None: all at once), in order.

    On out-of-memory the slice size is halved (and kept for later batches) and the slice
    retried; an OOM at one row propagates.
    """

    def __init__(
        self, size: int | None = None, device: torch.device | None = None, name: str = "model"
    ) -> None:
        if size is not None and size < 1:
            raise ValueError(f"micro_batch: expected a positive number of rows, got {size}")
        self.size = size
        self.device = device or torch.device("cpu")
        self.name = name

    def run(
        self,
        inputs: Rows,
        forward: Forward,
        limit: int | None = None,
        prefetch: Prefetch | None = None,
    ) -> torch.Tensor:
        """``forward`` over slices of ``inputs``, concatenated.

        ``limit`` caps the slices of this call below ``size`` (the upload pipeline's chunks);
        ``prefetch`` is told the next slice once the current one's forward was launched, so
        its copy overlaps that forward. A back-off halves whichever of the two applied.
        """
        rows = len(inputs)
        if rows == 0:  # still one call: the output's trailing shape comes from the model
            return forward(inputs[0:0])
        outputs: list[torch.Tensor] = []
        start = 0
        while start < rows:
            stop = self._stop(start, rows, limit)
            out = self._attempt(inputs[start:stop], forward)
            if out is None:
                continue  # retry the same rows in smaller slices
            outputs.append(out)
            start = stop
            if prefetch is not None and start < rows:
                prefetch(start, self._stop(start, rows, limit))
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)

    def _stop(self, start: int, rows: int, limit: int | None) -> int:
        sizes = [size for size in (self.size, limit) if size is not None]
        return min(rows, start + min(sizes, default=rows))

    def _attempt(self, inputs: torch.Tensor, forward: Forward) -> torch.Tensor | None:
        try:
            return forward(inputs)
        except OutOfMemoryError:
            if len(inputs) <= 1:
                raise
        # Outside the except block: the exception's traceback no longer pins the failed
        # attempt's tensors, so emptying the cache can actually free them.
        self._back_off(len(inputs))
        return None

    def _back_off(self, rows: int) -> None:
        smaller = max(1, rows // 2)
        logger.warning(
            "%s: out of memory on a slice of %d rows; micro_batch %s -> %d for this and later batches",
            self.name,
            rows,
            self.size if self.size is not None else "whole batch",
            smaller,
        )
        self.size = smaller
        release_memory(self.device)


def probe_largest(forward: Forward, make_input: MakeInput, cap: int, device: torch.device) -> int:
    """The largest of 1, 2, 4, ... rows (and ``cap`` itself) that ``forward`` runs without OOM.

    Stops at the first OOM; an OOM at one row propagates (the model cannot run at all).
    Runs on whatever device ``make_input`` puts its tensors: the caller decides where
    probing is meaningful.
    """
    best = 0
    rows = 1
    while rows <= cap:
        fits = _fits(forward, make_input, rows, device)
        release_memory(device)
        if not fits:
            break
        best = rows
        if rows == cap:
            break
        rows = min(rows * 2, cap)
    return best


def _fits(forward: Forward, make_input: MakeInput, rows: int, device: torch.device) -> bool:
    try:
        inputs = make_input(rows)
        forward(inputs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # an asynchronous failure belongs to this size
    except OutOfMemoryError:
        if rows == 1:
            raise
        return False
    return True


def choose_micro_batch(
    setting: int | str | None,
    cap: int,
    device: torch.device,
    forward: Forward,
    make_input: MakeInput,
    probe_on_cpu: bool = False,
) -> tuple[int | None, str]:
    """The micro-batch size for ``setting`` (None: the whole batch) and why it was chosen.

    ``auto`` probes only CUDA memory unless ``probe_on_cpu``: on CPU an oversized batch
    swaps or is killed rather than raising OOM, so a probe would measure nothing useful.
    """
    if setting is None:
        return None, "micro_batch: null - the whole batch in one forward pass"
    if setting != AUTO:
        return int(setting), f"micro_batch: {setting} - set in the spec"
    if device.type != "cuda" and not probe_on_cpu:
        return None, (
            f"micro_batch: auto on {device.type} - the whole batch in one forward pass "
            "(only GPU memory is probed)"
        )
    size = probe_largest(forward, make_input, cap, device)
    return size, f"micro_batch: auto - {size} rows, the largest probed size that fit (cap {cap})"
