"""The run report: counts, throughput and per-operator figures from Ray Data's stats.

The JSON written next to the output is a stable contract (documented in README.md,
"Run report"); add fields, never rename or remove them.
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass, field
from typing import Any

import ray

from framework import __version__
from framework.dead_letter import READER_PATH
from framework.redact import redact
from framework.spec.schema import Spec

SCHEMA_VERSION = 1


@dataclass
class RunReport:
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(self.data, indent=2, sort_keys=False)

    def summary(self) -> str:
        d = self.data
        lines = [
            f"rows read {d['rows_read']}, written {d['rows_written']}, failed {d['rows_failed']} "
            f"in {d['wall_time_s']:.2f}s ({d['rows_per_s']:.1f} rows/s)",
        ]
        for op in d["operators"]:
            # Ray's Write operator puts out one row of write statistics: show what was written.
            writes = op["name"].split("->")[-1].startswith("Write")
            rows = f"{d['rows_written']} rows written" if writes else f"{op['rows_out']} rows out"
            lines.append(
                f"  {op['name']}: {rows}, {op['wall_time_s']:.2f}s wall, "
                f"{op['task_time_s']:.2f}s in tasks"
            )
        shares = [
            f"{path} {stage['busy_share']:.0%} of {len(stage['workers'])} "
            f"worker{'s' if len(stage['workers']) > 1 else ''}"
            for path, stage in d["stages"].items()
            if stage.get("busy_share") is not None and stage.get("workers")
        ]
        if shares:
            lines.append(f"  busy while running: {', '.join(shares)}")
        peaks = [
            f"{path} {stage['peak_rss_bytes'] / 2**20:,.0f} MiB"
            for path, stage in d["stages"].items()
            if stage.get("peak_rss_bytes")
        ]
        if peaks:
            lines.append(f"  peak memory per worker: {', '.join(peaks)}")
        for warning in d.get("warnings", []):
            lines.append(f"warning: {warning}")
        lines.append(f"report: {d['report_path']}")
        return "\n".join(lines)


def spec_fingerprint(spec: Spec) -> str:
    text = json.dumps(redact(spec.resolved), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _operators(summary: Any) -> list[Any]:
    # The write's summary holds only the Write operator; the rest hang off its parents.
    out = []
    for parent in summary.parents or []:
        out.extend(_operators(parent))
    out.extend(summary.operators_stats)
    return out


def operator_figures(summary: Any, origin: float | None = None) -> list[dict[str, Any]]:
    """One entry per Ray Data operator (fused stages share one), in pipeline order.

    Times count from ``origin``, a ``time.perf_counter()`` of this machine: Ray Data's
    block stats are monotonic clock readings, the same clock on one node (the run's start,
    so operators line up with the stages' figures); else from the first operator's start.
    """
    ops = []
    all_ops = _operators(summary)
    if origin is None:
        starts = [op.earliest_start_time for op in all_ops if op.earliest_start_time]
        origin = min(starts) if starts else 0.0
    for op in all_ops:
        if not op.wall_time and not op.output_num_rows:
            continue  # a logical placeholder that ran no task
        start, end = op.earliest_start_time, op.latest_end_time
        ops.append(
            {
                "name": op.operator_name,
                "rows_in": op.total_input_num_rows or 0,
                "rows_out": int(op.output_num_rows.sum) if op.output_num_rows else 0,
                "wall_time_s": round((end - start) if start and end else 0.0, 4),
                "start_s": round(start - origin, 4) if start else None,
                "end_s": round(end - origin, 4) if end else None,
                "task_time_s": round(op.wall_time.sum, 4) if op.wall_time else 0.0,
                "cpu_time_s": round(op.cpu_time.sum, 4) if op.cpu_time else 0.0,
                # Ray Data's per-block figures count blocks; its per-task rows count tasks.
                "tasks": int(op.task_rows.count) if op.task_rows else 0,
                "blocks": int(op.wall_time.count) if op.wall_time else 0,
                "nodes": int(op.node_count.count) if op.node_count else 0,
            }
        )
    return ops


def gpu_busy(stages: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Adds ``gpu_busy_pct`` to each stage whose workers sampled a GPU: the mean of their
    figures, each worker once however long it ran, so a starved worker pulls it down; and
    ``peak_rss_bytes``, the largest of its workers' peaks: which stage used the memory."""
    for figures in stages.values():
        busy = [w["gpu_busy_pct"] for w in figures.get("workers", []) if w.get("gpu_samples")]
        if busy:
            figures["gpu_busy_pct"] = round(sum(busy) / len(busy), 2)
        peaks = [w["peak_rss_bytes"] for w in figures.get("workers", []) if "peak_rss_bytes" in w]
        if peaks:
            figures["peak_rss_bytes"] = max(peaks)
    return stages


def build_report(
    spec: Spec,
    summary: Any,
    wall_time_s: float,
    started_at: str,
    output: str,
    report_path: str,
    plugins: dict[str, dict[str, str | None]],
    components: list[dict[str, Any]],
    warnings: list[str],
    rows_failed: int = 0,
    stages: dict[str, dict[str, Any]] | None = None,
    first_stage: str | None = None,
    errors: dict[str, Any] | None = None,
    failure: str | None = None,
    resumed: int = 0,
    replayed: int = 0,
    memory: dict[str, int] | None = None,
    clock_origin: float | None = None,
) -> RunReport:
    """``clock_origin``: ``time.perf_counter()`` at the run's start (see operator_figures)."""
    ops = operator_figures(summary, clock_origin)
    stages = gpu_busy(stages or {})
    # The framework's own counts, in front of the first stage and of the writer: a stage
    # without any is one no row reached. Ray's operator counts blur under fusion, and when
    # the write is fused with the read they count the rows read before the --resume
    # filter, and the write's statistics row as written. Rows the reader set aside
    # (READER_PATH) never reach the first stage.
    written = stages["writer"]["rows_out"] if "writer" in stages else 0
    set_aside = stages[READER_PATH]["rows_in"] if READER_PATH in stages else 0
    read = (stages[first_stage]["rows_in"] if first_stage in stages else 0) + set_aside
    if read != written + rows_failed:
        # A run that stopped leaves rows in flight, neither written nor failed: said so,
        # not as a loss (--resume runs them).
        gap = (
            f"{read - written - rows_failed} rows were in flight when the run stopped"
            if failure and read > written + rows_failed
            else "rows do not add up"
        )
        warnings = [*warnings, f"{gap}: {read} read, {written} written and {rows_failed} failed"]
    return RunReport(
        {
            "schema_version": SCHEMA_VERSION,
            "status": "failed" if failure else "ok",
            "failure": failure,
            "name": spec.run.name,
            "started_at": started_at,
            "wall_time_s": round(wall_time_s, 4),
            "rows_read": read,
            "rows_written": written,
            "rows_failed": rows_failed,
            "errors": errors or {},
            "resumed_rows": resumed,
            "replayed_rows": replayed,
            "memory": memory or {},
            "rows_per_s": round(written / wall_time_s, 3) if wall_time_s else 0.0,
            "output": output,
            "report_path": report_path,
            "spec": {"source": spec.source, "fingerprint": spec_fingerprint(spec)},
            "stages": stages,
            "operators": ops,
            "components": components,
            "plugins": plugins,
            "warnings": warnings,
            "versions": {
                "infer_run": __version__,
                "ray": ray.__version__,
                "python": platform.python_version(),
            },
        }
    )


def stage_figures(
    snapshot: dict[str, dict[str, Any]], origin: float, nodes: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """The report's ``stages`` entry: times relative to the run's start, nodes described."""
    out = {}
    ran = [s for s in snapshot.values() if s["batches"]]
    window = max(s["end"] for s in ran) - min(s["start"] for s in ran) if ran else 0.0
    for path, s in snapshot.items():
        out[path] = {
            "batches": s["batches"],
            "retries": s["retries"],
            "timeouts": s["timeouts"],
            "crashes": s["crashes"],
            "rows_in": s["rows_in"],
            "rows_out": s["rows_out"],
            "busy_s": round(s["busy_s"], 4),
            "first_start_s": round(s["start"] - origin, 4) if s["batches"] else None,
            "last_end_s": round(s["end"] - origin, 4) if s["batches"] else None,
            "busy_share": busy_share(s, window),
            "nodes": [
                {
                    "node_id": node_id,
                    **nodes.get(node_id, {}),
                    **{k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()},
                }
                for node_id, figures in sorted(s["nodes"].items())
            ],
            "workers": [
                _relative(worker, origin)
                for worker in sorted(s["workers"].values(), key=lambda w: (w["node_id"], w["pid"]))
            ],
        }
    return out


def busy_share(stage: dict[str, Any], window: float) -> float | None:
    """The share of its workers' time a stage spent on batches while data streamed (``window``:
    from any stage's first batch to any stage's last): near 1 for the stage that bounds the
    run, low for those waiting on it."""
    if not stage["batches"] or window <= 0:
        return None
    return round(min(1.0, stage["busy_s"] / (window * max(1, len(stage["workers"])))), 3)


WORKER_TIMES = ("process_started", "build_started", "ready")


def _relative(worker: dict[str, Any], origin: float) -> dict[str, Any]:
    """A worker's start-up as seconds from the run's start (negative: started before it)."""
    out = {k: v for k, v in worker.items() if k not in WORKER_TIMES}
    for key in WORKER_TIMES:
        if key in worker:
            out[f"{key}_s"] = round(worker[key] - origin, 4)
    return out
