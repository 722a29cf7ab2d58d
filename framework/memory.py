"""Peak memory of a run on the driver's node: process RSS and Ray's shared object store.

Sampled from a thread on the driver while the pipeline runs, so the report can show
that memory stays flat as the input grows (streaming) instead of growing with it. On an
existing cluster (``--address``) the workers are not the driver's children: only the
driver's own RSS is counted there.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import psutil

SHM = "/dev/shm"  # where Ray's object store keeps its objects on Linux
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
# The peak may be under-reported by this fraction of it, in exchange for rare PSS reads.
PSS_MARGIN = 0.02


def _memory(proc: psutil.Process) -> int:
    """PSS without shared memory: the object store's pages, mapped by every worker that
    reads or writes an object, are counted once, from /dev/shm, not once per mapping.

    PSS splits shared pages (torch's libraries, mapped by every worker) among the
    processes that map them, so the sum is what the processes really hold.
    """
    try:
        with open(f"/proc/{proc.pid}/smaps_rollup") as rollup:
            fields = dict(line.split(":", 1) for line in rollup if ":" in line)
        return (_kib(fields["Pss"]) - _kib(fields.get("Pss_Shmem", "0 kB"))) * 1024
    except (OSError, KeyError, ValueError):
        pass  # no smaps_rollup (not Linux, or an old kernel): fall back to psutil
    try:
        return int(getattr(proc.memory_full_info(), "pss", proc.memory_info().rss))
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0


def _kib(field: str) -> int:
    return int(field.split()[0])


def _run_processes() -> list[psutil.Process]:
    """This driver and its descendants: a local Ray's raylet, GCS and workers."""
    me = psutil.Process()
    return [me, *me.children(recursive=True)]


def _resident(proc: psutil.Process) -> int:
    """Resident bytes without shared memory, as ``_memory`` counts: object-store pages a
    process mapped, then let go, set a high that hid a later peak of its own memory. From
    /proc/PID/status (RssAnon + RssFile, counters the kernel keeps, so O(1) to read); else
    the whole resident size from /proc/PID/statm (kernels before 4.5)."""
    try:
        with open(f"/proc/{proc.pid}/status") as status:
            fields = dict(line.split(":", 1) for line in status if line.startswith("Rss"))
        return (_kib(fields["RssAnon"]) + _kib(fields["RssFile"])) * 1024
    except (OSError, KeyError, ValueError):
        pass
    try:
        with open(f"/proc/{proc.pid}/statm") as statm:
            return int(statm.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _shm_used() -> int:
    try:
        stat = os.statvfs(SHM)
    except OSError:
        return 0
    return (stat.f_blocks - stat.f_bfree) * stat.f_frsize


class MemorySampler:
    """``with MemorySampler() as m: ...`` then ``m.figures()``; samples every ``interval`` s."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.peak_rss = 0
        self.peak_shm = 0
        self.resident_high = 0  # highest resident total seen: PSS is read above it
        self.base_shm = _shm_used()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="infer-run-memory", daemon=True)

    def _sample(self) -> None:
        processes = _run_processes()
        # PSS walks every page table, ~0.1 s of kernel time per sample with a few torch
        # workers: a quarter of a core at this rate, taken from the model on a small
        # machine. The cheap resident total tells when a new peak may be happening, so
        # PSS is read only when it passes the last high by PSS_MARGIN: a model actor's
        # heap creeping up by a few MB a batch would otherwise trigger it every sample.
        resident = sum(_resident(p) for p in processes)
        if resident > self.resident_high * (1 + PSS_MARGIN):
            self.resident_high = resident
            self.peak_rss = max(self.peak_rss, sum(_memory(p) for p in processes))
        self.peak_shm = max(self.peak_shm, _shm_used() - self.base_shm)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> MemorySampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def figures(self) -> dict[str, int]:
        return {
            "peak_process_rss_bytes": self.peak_rss,
            "peak_object_store_bytes": self.peak_shm,
            "peak_total_bytes": self.peak_rss + self.peak_shm,
        }
