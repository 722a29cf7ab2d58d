"""Execute a validated spec on Ray and write the run report."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

import ray
import ray.data

from framework.cluster import ray_cluster
from framework.compile import WRITER_PATH, RunContext, compile_plan
from framework.dead_letter import ErrorPolicy, UnreadableInputs
from framework.errors import InferError, RunError
from framework.failures import bug_text, run_failure
from framework.feasibility import check_feasible
from framework.id_filter import put_ids
from framework.memory import MemorySampler
from framework.plan import Plan, ReadNode, build_plan
from framework.ray_session import data_context, init_ray, read_planning
from framework.registry import Registry
from framework.replay import (
    REPLAYED_PREFIX,
    limit_warning,
    new_stamp,
    plan_replay,
    replay_manifest,
    rows_left,
)
from framework.report import RunReport
from framework.resume import (
    check_replay_finished,
    check_resumable,
    check_run_finished,
    committed_ids,
    earlier_dead_letters,
    manifest,
    mark_finished,
    mark_running,
    write_manifest,
)
from framework.run_files import RunRecord, finish_run, remove_report, write_spec_copy
from framework.spec.places import run_files_storage
from framework.spec.schema import Spec
from framework.telemetry import StageLog, wait_for_records

log = logging.getLogger("infer_run")


def component_facts(spec: Spec, registry: Registry) -> tuple[list[dict[str, Any]], list[str]]:
    facts, warnings = [], []
    for stage in (spec.reader, *spec.stages, spec.writer):
        entry = registry.find(stage.kind, stage.type)
        info = dict(stage.cls.report_info(stage.params))
        warnings.extend(f"{stage.path}: {w}" for w in info.pop("warnings", []))
        facts.append(
            {
                "path": stage.path,
                "kind": stage.kind,
                "type": stage.type,
                "plugin": entry.plugin if entry else None,
                "distribution": entry.distribution if entry else None,
                "version": entry.version if entry else None,
                **info,
            }
        )
    return facts, warnings


def run_spec(
    spec: Spec, registry: Registry, resume: bool = False, replay: bool = False
) -> RunReport:
    """Plan ``spec`` on the cluster it runs on, check it fits, run it, write the report."""
    facts = component_facts(spec, registry)  # once: a checkpoint's sha256 reads the file
    errors = error_policy(spec)
    expected = manifest(spec.resolved, facts[0], str(errors.dead_letter))
    writer = spec.writer.cls(**spec.writer.params)
    done: list[Any] = []
    resumed = 0
    recorded_inputs: frozenset[str] = frozenset()  # unreadable files the records name
    found: dict[str, Any] = {}  # the manifest of the run before
    if resume:
        found = check_resumable(writer, expected)
        done, resumed, recorded_inputs = committed_ids(writer, errors)
    elif replay:
        # A replay usually runs with a fix in the spec (a larger max_pixels); not new weights.
        found = check_resumable(writer, expected, flag="--replay", same_spec=False)
        check_run_finished(found, writer.path)  # before a file cut short is removed
        # Refuses a writer that cannot add to its output, and removes files a killed run cut
        # short. Rows already in the output (a record of an earlier, overwritten run, or
        # of a replay that stopped) are not run again.
        written = set(writer.committed_ids())
        records = errors.read_records()  # once: on S3, one request per record file
        check_replay_finished(found, errors, records, written, writer.path)
        replaying = plan_replay(errors, records)
    else:
        earlier_dead_letters(spec, errors, writer.overwrite)
        if not writer.overwrite:
            writer.prepare()  # refuse an existing output before paying for Ray's start-up
    init_ray(spec)
    plan = build_plan(spec, ray_cluster(spec.ray.address or "the local Ray"))
    check_feasible(plan)
    if not (resume or replay):
        # Only now that the run can start: a cluster it cannot join or a plan that does not
        # fit must not cost the last good output (--overwrite) or leave a manifest behind
        # that makes the next run refuse an output nothing was written to.
        writer.prepare()
        if spec.errors.dead_letter:
            errors.clear_earlier()
        mark_running(writer, expected)
        write_spec_copy(spec, writer)
    else:
        # The earlier run's report would say `ok` about an output this run may not finish.
        remove_report(writer)
        if resume:  # killed, it leaves rows undone, where a finished run may have left none
            mark_running(writer, found)
    if replay:
        stamp = new_stamp()
        # Before any record moves: --resume finishes a killed replay with the replay's spec.
        write_manifest(writer, replay_manifest(expected, stamp, running=True))
        write_spec_copy(spec, writer)
        replaying.move_records_aside(stamp)
        ids = [i for i in replaying.ids if i not in written]
        archive = f"{str(errors.dead_letter).rstrip('/')}/{REPLAYED_PREFIX}{stamp}"
        limit = spec.run.limit

        def limit_left(report: dict[str, Any]) -> list[str]:
            # Told by the run's counts, not before it: rows the reader sets aside again are
            # recorded again, and left to no --resume.
            left = rows_left(len(ids), limit, report)
            return [limit_warning(limit, len(ids), left, archive)] if limit and left else []

        try:
            report = run_plan(
                plan,
                registry,
                facts=facts,
                id_filter=(put_ids(ids), True),
                replayed=len(ids),
                recorded_inputs=replaying.unreadable_inputs,
                late_warnings=limit_left,
            )
        except BaseException:
            replaying.put_records_back(stamp)
            write_manifest(writer, replay_manifest(expected, stamp, running=False))
            raise
        # Rows past run.limit are in neither the output nor the records: the next --replay
        # must refuse as after a kill, until a --resume has run them.
        left = rows_left(len(ids), limit, report.data)
        write_manifest(
            writer,
            replay_manifest(expected, stamp, running=bool(left), limit=limit if left else None),
        )
        return report
    id_filter = (put_ids(done), False) if resume else None
    report = run_plan(
        plan,
        registry,
        facts=facts,
        id_filter=id_filter,
        resumed=resumed,
        recorded_inputs=recorded_inputs,
    )
    mark_finished(writer, found or expected, every_row=spec.run.limit is None)
    return report


def run_plan(
    plan: Plan,
    registry: Registry,
    id_filter: tuple[Any, bool] | None = None,
    resumed: int = 0,
    replayed: int = 0,
    recorded_inputs: frozenset[str] = frozenset(),
    facts: tuple[list[dict[str, Any]], list[str]] | None = None,
    late_warnings: Callable[[dict[str, Any]], list[str]] | None = None,
) -> RunReport:
    """``facts``: ``component_facts`` of the plan's spec, when the caller has them;
    ``late_warnings``: the report's warnings its figures tell, given its data."""
    spec = plan.spec
    components, warnings = facts or component_facts(spec, registry)
    for warning in warnings:
        log.warning(warning)
    init_ray(spec)
    run_id = uuid.uuid4().hex[:12]
    first_stage = spec.stages[0].path if spec.stages else WRITER_PATH
    stage_log = StageLog.options(name=f"infer_run_log_{run_id}").remote(first_stage)
    errors = error_policy(spec)
    record = RunRecord(
        started_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        origin=time.time(),
        start=time.perf_counter(),
        components=components,
        warnings=warnings,
        first_stage=first_stage,
        resumed=resumed,
        replayed=replayed,
        late_warnings=late_warnings,
    )
    bad_input = UnreadableInputs(errors, stage_log, recorded_inputs)
    with data_context(spec, plan.cluster):
        with read_planning(plan.cluster, read_task_mb(plan)):
            run_context = RunContext(run_id, stage_log, errors, id_filter, bad_input)
            compiled = compile_plan(plan, run_context)
        failure: InferError | None = None
        bug: Exception | None = None
        sampler = MemorySampler()
        try:
            with sampler:
                compiled.writer.write(compiled.dataset)
            wait_for_records(stage_log, errors)
        except ray.exceptions.RayError as exc:
            # A stage that stopped the run on purpose said why in the log: Ray keeps only text.
            stopped = ray.get(stage_log.stop_reason.remote())
            # The reader is built again only to ask which of its inputs clash.
            make_reader = partial(spec.reader.cls, **spec.reader.params)
            failure = RunError(stopped) if stopped else run_failure(exc, make_reader)
            bug = None if failure else exc
        except InferError as exc:
            failure = exc
        except Exception as exc:
            bug = exc
    record.memory = sampler.figures()
    stopped_by = bug or failure
    try:
        text = bug_text(bug) if bug else (failure and str(failure))
        report = finish_run(spec, compiled, stage_log, errors, record, text)
    except Exception as exc:
        if stopped_by is None:
            raise
        # What stopped the run matters more than its report: say both, raise the first.
        if bug is None:  # the user's problem, likely the same one (an output not writable)
            log.warning("could not write the run report: %s: %s", type(exc).__name__, exc)
        else:
            log.exception("could not write the run report after the error that follows")
    finally:
        end_actors(stage_log)
        ray.kill(stage_log)
    if stopped_by is not None:
        raise stopped_by
    return report


def read_task_mb(plan: Plan) -> float | None:
    """``run.block_mb`` for parquet read tasks, unless reading is capped to share the
    cores of CPU models (then Ray Data's own size; see ray_session.PARQUET_READ_TASK_BYTES)."""
    read = next(n for n in plan.nodes if isinstance(n, ReadNode))
    return plan.spec.run.block_mb if read.max_tasks is None else None


def end_actors(stage_log: Any) -> None:
    """End the run's stage actors. Ray Data lets go of them when the run ends, but a failed
    execution lingers in reference cycles (its exception's traceback, a log handler that
    keeps records) holding their handles: alive, they kept their CPUs from the next run in
    this process (bench rounds, the API, tests), which then waited for them forever."""
    for actor in ray.get(stage_log.actor_handles.remote()):
        with contextlib.suppress(ray.exceptions.RayError):
            ray.kill(actor, no_restart=True)


def error_policy(spec: Spec) -> ErrorPolicy:
    """The spec's ``errors:`` section; dead letters default to ``_dead_letter`` in the output."""
    e = spec.errors
    writer = spec.writer.params
    return ErrorPolicy(
        policy=e.policy,
        dead_letter=e.dead_letter or f"{str(writer['path']).rstrip('/')}/_dead_letter",
        # The default folder is in the output, so the writer's; a folder of the user's
        # choosing follows the rule of the run's other files (run_files_storage).
        storage=run_files_storage(spec.reader.params, writer)
        if e.dead_letter
        else writer.get("storage"),
        max_count=e.max_count,
        max_fraction=e.max_fraction,
        retries=e.retries,
        retry_on=tuple(e.retry_on),
        retry_backoff_s=e.retry_backoff_s,
        batch_timeout_s=e.batch_timeout_s,
    )


__all__ = ["run_plan", "run_spec"]
