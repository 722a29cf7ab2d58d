"""How worker processes hand memory back, so that memory stays flat as the input grows.

Task workers are reused for reads, CPU stages and writes. With glibc's and Arrow's
default allocators each keeps the high-water mark of every block and batch it ever
held, so a longer run ends with fatter workers. Task workers therefore get big buffers
straight from the OS (returned on free) and trim the rest after every batch. Model
actors do the opposite: a forward pass allocates and frees the same activation buffers
batch after batch, and each one the OS hands out anew costs a page fault per 4 KB.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Mapping
from typing import Any

# Read by glibc, Arrow and Ray Data when a worker process starts; values set in the
# driver's environment or in ray.runtime_env win.
WORKER_ENV = {
    "ARROW_DEFAULT_MEMORY_POOL": "system",  # mimalloc never returns freed pages
    "MALLOC_MMAP_THRESHOLD_": str(1024 * 1024),  # decoded images (< 1 MB) stay on the heap
    # One heap for every thread: a model runs in a Ray thread, whose own arena would
    # mmap (and page-fault) every big activation whatever hold_freed_memory() says.
    "MALLOC_ARENA_MAX": "1",
    # Ray Data reads 8 batches (~block size each) ahead per read task; 2 keep a local disk
    # or S3 busy at a quarter of the memory.
    "RAY_DATA_ARROW_SCANNER_BATCH_READAHEAD": "2",
}
# glibc's mallopt parameters.
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_NEVER_TRIM = 2**31 - 1  # mallopt takes an int


def worker_env(user: Mapping[str, str] | None = None) -> dict[str, str]:
    """``runtime_env.env_vars`` for a run's workers: ``WORKER_ENV`` under the user's own."""
    ours = {name: value for name, value in WORKER_ENV.items() if name not in os.environ}
    return {**ours, **(user or {})}


def _libc() -> Any:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return libc if libc is not None and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _libc()  # None where libc is not glibc (musl, macOS): nothing to tune there


def release_free_memory() -> None:
    """Hand what the last batch freed back to the OS."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def hold_freed_memory() -> None:
    """Keep every freed buffer for reuse: for long-lived model actors.

    glibc serves blocks over 32 MB (a ResNet's early activations at batch 64) with fresh
    mmaps that the kernel zeroes page by page on first touch: ResNet-18's forward passes
    spent a sixth of their CPU time in page faults. Without mmap and without trimming,
    freed activations come back from the heap already mapped; the actor stays at the size
    of its largest batch, and ResNet-18 ran 25% faster on our 2-core CPU.
    """
    if _LIBC is not None:
        _LIBC.mallopt(_M_MMAP_MAX, 0)
        _LIBC.mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM)
