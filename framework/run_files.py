"""What a run leaves beside its output once it ends, however it ends: the run report,
the resolved spec (also written as a run starts), and the report and timeline copies the
spec asks for."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import ray
from omegaconf import OmegaConf

from framework.compile import Compiled
from framework.components import Writer
from framework.dead_letter import ErrorPolicy
from framework.errors import InputError
from framework.redact import redact
from framework.report import RunReport, build_report, stage_figures
from framework.resume import SPEC_NAME
from framework.spec.places import REPORT_NAME, report_file, run_files_storage, timeline_file
from framework.spec.schema import Spec
from framework.storage import filesystem_for
from framework.timeline import task_timeline


@dataclass
class RunRecord:
    """What ``run_plan`` knew before the run, for the report written after it."""

    started_at: str
    origin: float  # time.time() at the start: Ray's task events use it
    start: float  # time.perf_counter() at the start: the stages' figures use it
    components: list[dict[str, Any]]
    warnings: list[str]
    first_stage: str
    resumed: int
    replayed: int
    memory: dict[str, int] = field(default_factory=dict)
    # Warnings only the run's figures tell (a --replay's rows its run.limit left), given
    # the report's data.
    late_warnings: Callable[[dict[str, Any]], list[str]] | None = None


LOG_RESTARTED = (
    "the run's log (its StageLog actor) died and Ray restarted it empty: rows and figures "
    "counted before then are missing from this report, and the error budget started over; "
    "the output and dead letters hold every row, a row may be dead-lettered twice"
)


def finish_run(
    spec: Spec,
    compiled: Compiled,
    stage_log: Any,
    errors: ErrorPolicy,
    record: RunRecord,
    failure: str | None,
) -> RunReport:
    """Write the report, the resolved spec and the files the spec asks for beside the
    output. ``stage_log``: the run's StageLog actor, still alive."""
    wall = time.perf_counter() - record.start
    events = task_timeline(record.origin, time.time()) if spec.run.timeline else None
    writer = compiled.writer
    report_path = f"{writer.path.rstrip('/')}/{REPORT_NAME}"
    plugins = {
        c["plugin"]: {"distribution": c["distribution"], "version": c["version"]}
        for c in record.components
        if c["plugin"]
    }
    failed, by_stage = ray.get(stage_log.failures.remote())
    warnings = list(record.warnings)
    if ray.get(stage_log.was_restarted.remote()):
        warnings.append(LOG_RESTARTED)
    figures = ray.get(stage_log.snapshot.remote())
    report = build_report(
        spec,
        compiled.dataset.get_stats_summary(),
        wall,
        record.started_at,
        output=writer.path,
        report_path=report_path,
        plugins=plugins,
        components=record.components,
        warnings=warnings,
        stages=stage_figures(figures, record.origin, _node_descriptions()),
        first_stage=record.first_stage,
        rows_failed=failed,
        errors={
            "policy": errors.policy,
            "dead_letter": errors.dead_letter,
            "by_stage": by_stage,
            "unreadable_inputs": ray.get(stage_log.unreadable_list.remote()),
        },
        failure=failure,
        resumed=record.resumed,
        replayed=record.replayed,
        memory=record.memory,
        clock_origin=record.start,
    )
    if record.late_warnings is not None and failure is None:  # a stopped replay puts back
        report.data["warnings"] += record.late_warnings(report.data)
    write_text(report_path, report.to_json(), writer.storage)
    write_spec_copy(spec, writer)
    extras_storage = run_files_storage(spec.reader.params, spec.writer.params)
    if spec.run.report:
        write_extra(report_file(spec.run.report), report.to_json(), "run.report", extras_storage)
    if spec.run.timeline:
        path = timeline_file(spec.run.timeline)
        write_extra(path, json.dumps(events), "run.timeline", extras_storage)
    return report


def write_spec_copy(spec: Spec, writer: Writer) -> None:
    """Also written as a run that writes a manifest starts: a killed replay leaves the spec
    it ran, which is the one its --resume must be given."""
    write_text(f"{writer.path.rstrip('/')}/{SPEC_NAME}", resolved_yaml(spec), writer.storage)


def resolved_yaml(spec: Spec) -> str:
    """The spec as this run resolved it, written beside its output: what ran, to read or
    to run again. Secrets are masked; ``writer.overwrite`` is left out, so running the
    copy never replaces the output it describes unless asked."""
    resolved = redact(spec.resolved)
    resolved.get("writer", {}).pop("overwrite", None)
    head = (
        f"# The resolved spec of the run that wrote this output ({spec.source}); secrets "
        "are masked as ***.\n# Run it again: infer-run THIS_FILE --overwrite\n"
    )
    return head + OmegaConf.to_yaml(OmegaConf.create(resolved))


def _node_descriptions() -> dict[str, dict[str, Any]]:
    return {
        n["NodeID"]: {
            "address": n.get("NodeManagerAddress"),
            "resources": {k: v for k, v in n.get("Resources", {}).items() if "node:" not in k},
        }
        for n in ray.nodes()
        if n.get("Alive")
    }


def remove_report(writer: Writer) -> None:
    fs, root = filesystem_for(writer.path, writer.storage)
    with contextlib.suppress(FileNotFoundError):
        fs.delete_file(f"{root}/{REPORT_NAME}")


def write_text(path: str, text: str, storage: Mapping[str, Any] | None) -> None:
    fs, where = filesystem_for(path, storage)
    parent = where.rsplit("/", 1)[0]
    if parent and parent != where:
        fs.create_dir(parent, recursive=True)
    with fs.open_output_stream(where) as out:
        out.write(text.encode())


def write_extra(path: str, text: str, key: str, storage: Mapping[str, Any] | None = None) -> None:
    """A file the spec asks for beside the output (checked writable before the run)."""
    try:
        write_text(path, text, storage)
    except OSError as exc:
        raise InputError(f"{key}: cannot write {path} ({exc}); the output is complete") from None


__all__ = [
    "RunRecord",
    "finish_run",
    "remove_report",
    "write_extra",
    "write_spec_copy",
    "write_text",
]
