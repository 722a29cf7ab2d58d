"""GPU busy % and peak GPU memory of the GPUs Ray granted one worker, sampled while it works.

Ray says which GPUs a stage holds, not whether it keeps them busy: a model starved by
the CPU stages in front of it holds its GPU at a low busy %, and this is where the report
shows it. NVML is read from a thread, never through torch or CUDA, so sampling creates no
CUDA context and never waits on the stage's kernels. Both figures are the whole device's:
another process sharing the GPU (fractional ``num_gpus``) counts too.

No Ray import here: ``benchmarks/gpu_usage_check.py`` runs this module on its own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger("infer_run.gpu_usage")

# One reading of every sampled GPU: (utilization %, memory used in bytes) per GPU.
Reader = Callable[[], list[tuple[float, int]]]


def nvml_reader(gpu_ids: Sequence[str]) -> Reader | None:
    """A reader for the GPUs with these Ray ids, or None where NVML cannot serve them.

    Ray's ids are physical indices (or UUIDs): NVML ignores CUDA_VISIBLE_DEVICES and counts
    in PCI bus order, which CUDA's own order matches on nodes of one GPU model. No driver,
    no library, an id NVML does not know: None, so a GPU-less machine (or a GPU only
    advertised to Ray) samples nothing.
    """
    if not gpu_ids:
        return None
    try:
        import pynvml

        pynvml.nvmlInit()
        handles = [
            pynvml.nvmlDeviceGetHandleByUUID(g)
            if g.startswith(("GPU-", "MIG-"))
            else pynvml.nvmlDeviceGetHandleByIndex(int(g))
            for g in map(str, gpu_ids)
        ]
    except Exception as exc:  # pynvml raises one NVMLError subclass per cause
        log.debug("no GPU sampling for %s: %s", list(gpu_ids), exc)
        return None

    def read() -> list[tuple[float, int]]:
        return [
            (
                float(pynvml.nvmlDeviceGetUtilizationRates(h).gpu),
                int(pynvml.nvmlDeviceGetMemoryInfo(h).used),
            )
            for h in handles
        ]

    return read


class GpuSampler:
    """``start()`` on the first batch, ``summary()`` whenever; a no-op if ``read`` is None.

    Samples every ``interval`` s from a daemon thread: a Ray worker is killed, not shut
    down, at the end of a run. The thread stops itself after ``idle_s`` without a
    ``start()`` (called on every batch), so a task worker that Ray keeps for later runs
    does not sample for ever; the next batch starts it again.
    """

    def __init__(self, read: Reader | None, interval: float = 0.2, idle_s: float = 60.0) -> None:
        self.read = read
        self.interval = interval
        self.idle_s = idle_s
        self.samples = 0
        self.busy_sum = 0.0  # of each sample's mean utilization over the GPUs
        self.memory_peak = 0  # of each sample's memory used, summed over the GPUs
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_start = time.monotonic()

    def start(self) -> None:
        """Start sampling, or keep it going: called on every batch, cheap after the first."""
        self._last_start = time.monotonic()
        if self.read is None or self._stop.is_set():
            return
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="infer-run-gpu", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop sampling for good and wait for the thread: its figures are final after this."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if time.monotonic() - self._last_start > self.idle_s:
                return
            try:
                gpus = self.read() if self.read else []
            except Exception as exc:  # a GPU lost, or a MIG slice without utilization
                log.debug("GPU sampling stopped: %s", exc)
                self.read = None
                return
            if not gpus:
                continue
            with self._lock:
                self.samples += 1
                self.busy_sum += sum(util for util, _ in gpus) / len(gpus)
                self.memory_peak = max(self.memory_peak, sum(mem for _, mem in gpus))

    def summary(self) -> dict[str, Any] | None:
        """The figures so far, or None before the first sample (and always without NVML)."""
        with self._lock:
            if not self.samples:
                return None
            return {
                "gpu_busy_pct": round(self.busy_sum / self.samples, 2),
                "gpu_memory_peak_bytes": self.memory_peak,
                "gpu_samples": self.samples,
            }
