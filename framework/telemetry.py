"""Per-stage timing gathered from inside the workers, to see where and when each stage ran.

Ray Data's stats describe operators, and fused stages share one operator; this log
is kept per stage and per node, so the report shows whether every node type was busy
and whether CPU and model stages overlapped (streamed) instead of running in turn.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import ray

from framework.dead_letter import READER_PATH, ErrorPolicy
from framework.errors import RunError
from framework.watchdog import CRASHED, TIMED_OUT
from framework.worker_setup import restarted_actor

log = logging.getLogger("infer_run.telemetry")

# How long the driver waits, after the last row is written, for the last batches' records.
RECORDS_WAIT_S = 10.0


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class StageLog:
    """One per run: every stage's batches report here with their node and wall interval."""

    def __init__(self, first_stage: str | None = None) -> None:
        self.stages: dict[str, dict[str, Any]] = {}
        self.first_stage = first_stage
        self.entered = self.set_aside = self.read_beside = 0  # rows, for seen()
        self.failed = 0
        self.errors: dict[str, dict[str, int]] = {}
        # stage -> row id -> (whether alone, why): rows whose worker timed out or died on them
        self.hung: dict[str, dict[Any, tuple[bool, str]]] = {}
        # (stage, batch key) -> (ids, worker): batches begun and not yet recorded
        self.in_flight: dict[tuple[str, str], tuple[list[Any], str]] = {}
        self.dead: set[str] = set()  # workers found to have died mid-batch
        self.batches: dict[tuple[str, str], tuple[Any, ...]] = {}  # (stage, key) -> its counts
        self.actors: list[Any] = []  # the stage actors' handles, ended with the run
        self.unreadable_inputs: list[str] = []  # inputs a reader could not read at all
        self.stopped: str | None = None  # the first reason a worker stopped the run
        # Ray restarts this actor if its process dies, empty: what it held is gone.
        self.restarted = restarted_actor()

    def actor(self, handle: Any) -> None:
        self.actors.append(handle)

    def actor_handles(self) -> list[Any]:
        return self.actors

    def record(
        self,
        stage: str,
        node_id: str,
        start: float,
        end: float,
        rows_in: int,
        rows_out: int,
        failures: dict[str, dict[str, int]] | None = None,
        retries: int = 0,
        key: str | None = None,
        worker: tuple[int, int] | None = None,
        beside: int = 0,
    ) -> tuple[int, int]:
        """Count one batch; returns (rows seen, rows failed) so far, for the error budget.

        A batch recorded before under the same ``key`` (``dead_letter.batch_key``: its task
        was retried) replaces its earlier counts; the time spent on it adds up. ``worker``
        is the process's (pid, peak resident bytes so far). ``beside``: the reader's rows
        read with those it set aside, on their way to the first stage.
        """
        s = self._stage(stage)
        if key is not None:
            self.in_flight.pop((stage, key), None)
        if worker is not None:
            figures = s["workers"].get(f"{node_id}:{worker[0]}")
            if figures is not None:  # a process that built the stage
                figures["peak_rss_bytes"] = max(figures.get("peak_rss_bytes", 0), worker[1])
        counts = (node_id, rows_in, rows_out, failures or {}, beside)
        earlier = self.batches.get((stage, key)) if key is not None else None
        if key is not None:
            self.batches[(stage, key)] = counts
        if earlier is None:
            s["batches"] += 1
        else:
            self._count(stage, *earlier, sign=-1)
        self._count(stage, *counts, sign=1)
        s["retries"] += retries
        s["busy_s"] += end - start
        s["start"] = min(s["start"], start)
        s["end"] = max(s["end"], end)
        n = s["nodes"][node_id]
        n["batches"] += 1
        n["busy_s"] += end - start
        return self.seen(), self.failed

    def seen(self) -> int:
        """What the error fraction is of: rows into the first stage, and those the reader
        set aside with the rows read beside them, which reach the first stage later (behind
        a model still loading): counted alone, one bad row of the first block was 100%."""
        return self.set_aside + max(self.entered, self.read_beside)

    def _count(
        self,
        stage: str,
        node_id: str,
        rows_in: int,
        rows_out: int,
        failures: dict[str, dict[str, int]],
        beside: int,
        sign: int,
    ) -> None:
        if stage == READER_PATH:  # rows a reader set aside
            self.set_aside += sign * rows_in
            self.read_beside += sign * beside
        elif stage == self.first_stage:
            self.entered += sign * rows_in
        for where, kinds in failures.items():
            counts = self.errors.setdefault(where, {})
            for kind, count in kinds.items():
                counts[kind] = counts.get(kind, 0) + sign * count
                self.failed += sign * count
                if not counts[kind]:
                    del counts[kind]
            if not counts:
                del self.errors[where]
        s = self._stage(stage)
        s["rows_in"] += sign * rows_in
        s["rows_out"] += sign * rows_out
        n = s["nodes"].setdefault(node_id, {"batches": 0, "rows": 0, "busy_s": 0.0})
        n["rows"] += sign * rows_in

    def begin(self, stage: str, key: str, ids: list[Any], worker: str) -> dict[Any, tuple]:
        """``worker`` starts batch ``key`` of ``ids``. If another worker had begun it and
        never recorded it, that worker died on it (a crash in native code, killed for
        memory): its rows become suspects. Returns the suspects among ``ids``, as
        ``hung_among`` does."""
        earlier = self.in_flight.get((stage, key))
        if earlier is not None and earlier[1] != worker:
            if earlier[1] not in self.dead:  # it may have held a batch and a row of it
                self.dead.add(earlier[1])
                self._stage(stage)["crashes"] += 1
            self._suspect(stage, earlier[0], CRASHED)
        self.in_flight[(stage, key)] = (ids, worker)
        return self.hung_among(stage, ids)

    def end(self, stage: str, key: str) -> None:
        """A row run alone finished (its batch is recorded, and so ended, as a whole), or a
        batch was given up without a record (cancelled, or the run stopped)."""
        self.in_flight.pop((stage, key), None)

    def in_flight_count(self) -> int:
        """Batches begun and not yet recorded or ended."""
        return len(self.in_flight)

    def timed_out(
        self, stage: str, ids: list[Any], key: str | None = None, worker: str | None = None
    ) -> None:
        """A worker is about to exit: these rows outlived ``errors.batch_timeout_s`` together."""
        self._stage(stage)["timeouts"] += 1
        self.in_flight.pop((stage, key), None)  # ended on purpose: no crash to find
        if worker is not None:
            # Nor in a batch it ran row by row: its retry would take it for a crash.
            for begun in [k for k, (_, w) in self.in_flight.items() if w == worker]:
                del self.in_flight[begun]
        self._suspect(stage, ids, TIMED_OUT)

    def _suspect(self, stage: str, ids: list[Any], why: str) -> None:
        rows = self.hung.setdefault(stage, {})
        for row_id in ids:
            alone, reason = rows.get(row_id, (False, why))
            rows[row_id] = (alone or len(ids) == 1, why if len(ids) == 1 else reason)

    def hung_among(self, stage: str, ids: list[Any]) -> dict[Any, tuple[bool, str]]:
        """Which of ``ids`` a worker of ``stage`` timed out or died on before: for each,
        whether it was alone in its call, and why (``TIMED_OUT`` or ``CRASHED``)."""
        rows = self.hung.get(stage, {})
        return {row_id: rows[row_id] for row_id in ids if row_id in rows}

    def worker(self, stage: str, info: dict[str, Any]) -> None:
        """What one worker process saw when it built the stage: threads, GPUs, device."""
        s = self._stage(stage)
        s["workers"][f"{info['node_id']}:{info['pid']}"] = info

    def gpu(self, stage: str, node_id: str, pid: int, summary: dict[str, Any]) -> None:
        """A worker's GPU figures so far (``framework.gpu_usage``): each replaces the last."""
        workers = self._stage(stage)["workers"]
        workers.setdefault(f"{node_id}:{pid}", {"node_id": node_id, "pid": pid}).update(summary)

    def _stage(self, stage: str) -> dict[str, Any]:
        counts = ("batches", "retries", "timeouts", "crashes", "rows_in", "rows_out")
        empty: dict[str, Any] = {**dict.fromkeys(counts, 0), "busy_s": 0.0}
        return self.stages.setdefault(
            stage, {**empty, "start": float("inf"), "end": 0.0, "nodes": {}, "workers": {}}
        )

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return self.stages

    def stop(self, message: str) -> None:
        """Keep the first reason a worker stopped the run: Ray loses the exception's type."""
        self.stopped = self.stopped or message

    def stop_reason(self) -> str | None:
        return self.stopped

    def unreadable(self, where: str) -> None:
        """An input a reader could not read at all; a retried read task reports it again."""
        if where not in self.unreadable_inputs:
            self.unreadable_inputs.append(where)

    def unreadable_list(self) -> list[str]:
        return self.unreadable_inputs

    def was_restarted(self) -> bool:
        return self.restarted

    def failures(self) -> tuple[int, dict[str, dict[str, int]]]:
        """Rows failed in all, and their counts by stage and error type."""
        return self.failed, self.errors


def wait_for_records(
    stage_log: Any, errors: ErrorPolicy, timeout_s: float = RECORDS_WAIT_S
) -> None:
    """After the last row is written, wait until the log holds no batch in flight: workers
    send a clean batch's record without waiting for it (``StageRunner.settle``), so the
    last ones may still be on their way. Then check the error budget once more, on the
    final counts; raises RunError when they break it."""
    deadline = time.monotonic() + timeout_s
    while (left := ray.get(stage_log.in_flight_count.remote())) and time.monotonic() < deadline:
        time.sleep(0.01)
    if left:
        log.warning(
            "%d batch(es) begun by the stages were never counted: their workers ended "
            "without reporting them, so the report's figures leave them out",
            left,
        )
    over_budget = errors.over_budget(
        ray.get(stage_log.seen.remote()), ray.get(stage_log.failures.remote())[0]
    )
    if over_budget:
        raise RunError(over_budget)
