"""What runs inside a Ray worker for each stage: build it once, size torch's threads to the
CPUs Ray granted, hold the stage to the batch contract, and log each batch's timing.
"""

from __future__ import annotations

import logging
import os
import resource
import sys
import time
from typing import Any

import psutil
import ray

from framework.components import ID_COLUMN, Batch
from framework.contract import checked_call, lists_for_arrow
from framework.dead_letter import ErrorPolicy, Failure, batch_key, plain_id
from framework.errors import BrokenContract, InferError, RunError
from framework.gpu_usage import GpuSampler, nvml_reader
from framework.row_isolation import run_isolated
from framework.stage_profile import StageProfile
from framework.watchdog import exit_after, given_up
from framework.worker_setup import granted, match_torch_threads, maybe_rerun, show_info_logs

log = logging.getLogger("infer_run.worker")

SKIP_HINT = " - errors.policy=skip writes bad rows aside"
GPU_PUSH_S = 1.0  # how often a worker sends its GPU figures to the run's log, at most


class StageRunner:
    """One stage in one worker process; ``log`` is the run's StageLog actor (or None)."""

    def __init__(
        self,
        path: str,
        cls: type,
        params: dict[str, Any],
        log: Any = None,
        errors: ErrorPolicy | None = None,
    ) -> None:
        self.path = path
        self.cls = cls
        self.params = params
        self.log = log
        self.errors = errors or ErrorPolicy()
        self.stage: Any = None
        self.gpu: GpuSampler | None = None  # sampling the granted GPUs, from the first batch
        # When the log last got GPU figures (None: never, so the first go at once), and of
        # how many samples.
        self.gpu_pushed: tuple[float | None, int] = (None, 0)
        self.retries = 0  # of the batch in hand
        # Tells a retry in a new process from the same process (a pid alone may recur).
        self.worker_name = f"{os.uname().nodename}:{os.getpid()}:{time.time()}"
        self.profile = StageProfile(path)

    def build(self) -> None:
        started = time.time()
        show_info_logs(self.cls)
        self.stage = self.cls(**self.params)
        built = time.time()
        threads = match_torch_threads()
        if self.log is not None:
            gpu_ids = [str(g) for g in ray.get_gpu_ids()]
            if granted("GPU") > 0:
                self.gpu = GpuSampler(nvml_reader(gpu_ids))
            torch = sys.modules.get("torch")
            info = {
                "node_id": ray.get_runtime_context().get_node_id(),
                "pid": os.getpid(),
                "cpus": granted("CPU"),
                "gpus": granted("GPU"),
                "gpu_ids": gpu_ids,
                "torch_threads": threads,
                "cuda_initialized": bool(torch and torch.cuda.is_initialized()),
                # Absolute times; the report makes them relative to the run's start.
                "process_started": psutil.Process().create_time(),
                "build_started": started,
                "ready": built,
            }
            ray.get(self.log.worker.remote(self.path, info))

    def __call__(self, batch: Batch) -> Batch:
        with self.profile.batch():
            return self._run(batch)

    def _run(self, batch: Batch) -> Batch:
        if self.stage is None:
            try:
                self.build()
            except InferError as exc:  # Ray Data keeps only the text of a UDF's exception
                self.stop(f"{self.path}: {exc}")
        match_torch_threads()  # task workers are reused across stages with other grants
        if self.gpu is not None:
            self.gpu.start()
        rows = len(batch[ID_COLUMN]) if ID_COLUMN in batch else 0
        start = time.time()
        key = batch_key(self.path, batch[ID_COLUMN]) if ID_COLUMN in batch else None
        self.retries = 0
        tracked = self._tracked(key, batch)
        # Work no worker died on holds no suspect row: its begin is not waited on, a round
        # trip per batch saved. Sent before the call, it reaches the log ahead of a crash in
        # all but a rare race, which costs the retry that finds the crash one more attempt.
        hung = self._begin(key, batch, wait=maybe_rerun())
        try:
            out, failures = self._call_isolating(batch, key, hung)
            self.settle(
                start, time.time(), rows, len(out[ID_COLUMN]), failures, key, tracked=tracked
            )
        except BaseException:
            # Cancelled (Ray Data ends the tasks a run.limit no longer needs) or stopped:
            # the driver must not wait for this batch's record at the run's end.
            if tracked:
                self.log.end.remote(self.path, key)
            raise
        return lists_for_arrow(out)

    def _call_isolating(
        self, batch: Batch, key: str | None, hung: dict[Any, tuple[bool, str]]
    ) -> tuple[Batch, list[Failure]]:
        """The stage on the whole batch, or row by row to find the rows that break it, with
        their failures; a broken contract stops the run."""
        out = None
        failures: list[Failure] = []
        try:
            if not hung:
                try:
                    out = self._call_retrying(batch, key)
                except BrokenContract:
                    raise
                except Exception:  # which rows broke it? retry them one by one
                    log.debug(
                        "stage %s failed on a batch; isolating rows", self.path, exc_info=True
                    )
            if out is None:
                out, failed = run_isolated(
                    lambda row: self._call_row(row, hung),
                    batch,
                    self.path,
                    stop_at_first=self.errors.policy == "fail",
                )
                failures = failed
        except BrokenContract as exc:
            self.stop(str(exc))
        return out, failures

    def _call_retrying(self, batch: Batch, key: str | None) -> Batch:
        """The stage on the whole batch, re-run after a transient error (``errors.retry_on``)."""
        while True:
            try:
                return self._watched(batch, key)
            except Exception as exc:
                if self.retries >= self.errors.retries or not self.errors.retryable(exc):
                    raise
                wait = self.errors.retry_backoff_s * 2**self.retries
                self.retries += 1
                log.warning(
                    "%s: %s: %s - retry %d of %d in %.1f s",
                    self.path,
                    type(exc).__name__,
                    exc,
                    self.retries,
                    self.errors.retries,
                    wait,
                )
                time.sleep(wait)

    def _call_row(self, row: Batch, hung: dict[Any, tuple[bool, str]]) -> Batch:
        """One row alone, unless its worker timed out or died on it alone before: then it
        fails. Among suspects (``hung``), each row is begun and ended with the run's log, so
        that the row a worker dies on is known to the worker that retries it."""
        if not hung or not len(row[ID_COLUMN]):
            return self._watched(row, None)
        row_id = plain_id(row[ID_COLUMN][0])
        key = batch_key(self.path, row[ID_COLUMN])
        suspect = hung.get(row_id)
        if not (suspect and suspect[0]):
            suspect = self._begin(key, row).get(row_id)
        if suspect and suspect[0]:
            # Not run: the log holds it in flight (begun here, or by the worker that died
            # on it), and the driver would wait for its record at the run's end.
            self.log.end.remote(self.path, key)
            raise given_up(suspect[1], self.errors.batch_timeout_s)
        try:
            return self._watched(row, key)
        finally:
            if self.log is not None:
                self.log.end.remote(self.path, key)

    def _watched(self, batch: Batch, key: str | None) -> Batch:
        """The stage on ``batch``, under ``errors.batch_timeout_s`` when run in a Ray worker
        (only there can a process be ended and the batch retried in a new one)."""
        timeout = self.errors.batch_timeout_s if self.log is not None else None
        if not len(batch.get(ID_COLUMN, ())):
            # No row to blame and retry alone: ending the worker would only repeat the call.
            timeout = None
        with exit_after(timeout, lambda: self._timed_out(batch, key)):
            return checked_call(self.stage, batch, self.path)

    def _timed_out(self, batch: Batch, key: str | None) -> None:
        ids = [plain_id(v) for v in batch[ID_COLUMN]]
        log.error(
            "%s: %d row(s) still running after %g s (errors.batch_timeout_s): ending worker "
            "process %d; Ray retries them in a new one, one row at a time (ids %s)",
            self.path,
            len(ids),
            self.errors.batch_timeout_s,
            os.getpid(),
            ", ".join(repr(i) for i in ids[:5]) + (", ..." if len(ids) > 5 else ""),
        )
        ray.get(self.log.timed_out.remote(self.path, ids, key, self.worker_name), timeout=60)

    def _tracked(self, key: str | None, batch: Batch) -> bool:
        """Whether the run's log holds ``batch`` in flight from its begin to its record."""
        return self.log is not None and key is not None and bool(len(batch.get(ID_COLUMN, ())))

    def _begin(
        self, key: str | None, batch: Batch, wait: bool = True
    ) -> dict[Any, tuple[bool, str]]:
        """Tell the run's log this worker starts ``batch``; the rows of it that a worker of
        this stage timed out or died on before (a retried batch), and whether alone (none
        when not ``wait``-ing for the answer)."""
        if not self._tracked(key, batch):
            return {}
        ids = [plain_id(v) for v in batch[ID_COLUMN]]
        begun = self.log.begin.remote(self.path, key, ids, self.worker_name)
        return ray.get(begun) if wait else {}

    def settle(
        self,
        start: float,
        end: float,
        rows_in: int,
        rows_out: int,
        failures: list[Failure],
        key: str | None = None,
        beside: int = 0,
        tracked: bool = False,
    ) -> None:
        """Apply the error policy to a batch's failures and count the batch in the run's log;
        ``key`` (``batch_key``) makes a batch that runs again count and record once.
        ``beside``: the reader's good rows read with the rows it set aside (``StageLog.seen``).
        ``tracked``: the log holds the batch in flight since its begin (``_tracked``)."""
        if failures and self.errors.policy == "fail":
            self.stop(failures[0].line() + SKIP_HINT)
        self.errors.write(failures, key)
        if self.log is None:
            return
        node = ray.get_runtime_context().get_node_id()
        # The process's peak so far (Linux: KiB), object-store pages it read included.
        worker = (os.getpid(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        kinds: dict[str, dict[str, int]] = {}
        for f in failures:
            counts = kinds.setdefault(f.stage, {})
            counts[f.error_type] = counts.get(f.error_type, 0) + 1
        # Sent before the record: the driver, once every record is in, finds them in too.
        self._push_gpu(node)
        record = self.log.record.remote(
            self.path,
            node,
            start,
            end,
            rows_in,
            rows_out,
            kinds,
            self.retries,
            key,
            worker,
            beside,
        )
        if tracked and not failures:
            # Not waited on: a round trip per batch the stage would sit idle through. Calls
            # from one worker run in order, so this worker's later calls follow it, and the
            # driver waits until the log holds no batch in flight
            # (``telemetry.wait_for_records``). A batch without failures cannot break the
            # error budget; one with failures waits for the counts to check it.
            return
        over_budget = self.errors.over_budget(*ray.get(record))
        if over_budget:
            self.stop(over_budget)

    def _push_gpu(self, node: str) -> list[Any]:
        """Send the GPU figures when there are new samples, at most every GPU_PUSH_S."""
        summary = self.gpu.summary() if self.gpu is not None else None
        last, samples = self.gpu_pushed
        now = time.monotonic()
        if summary is None or summary["gpu_samples"] == samples:
            return []
        if last is not None and now - last < GPU_PUSH_S:
            return []
        self.gpu_pushed = (now, summary["gpu_samples"])
        return [self.log.gpu.remote(self.path, node, os.getpid(), summary)]

    def stop(self, message: str) -> None:
        if self.log is not None:
            ray.get(self.log.stop.remote(message))
        raise RunError(message)
