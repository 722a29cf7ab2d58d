"""Execute a validated spec on Ray and write the run report."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any

import ray
import ray.data
from omegaconf import OmegaConf

from framework.cluster import ray_cluster
from framework.compile import WRITER_PATH, RunContext, compile_plan
from framework.dead_letter import ErrorPolicy, UnreadableInputs
from framework.errors import InferError, InputError, RunError
from framework.failures import run_failure
from framework.feasibility import check_feasible
from framework.memory import MemorySampler
from framework.plan import Plan, ReadNode, build_plan
from framework.ray_session import data_context, init_ray, read_planning
from framework.redact import redact
from framework.registry import Registry
from framework.replay import plan_replay
from framework.report import REPORT_NAME, RunReport, build_report
from framework.resume import check_resumable, committed_ids, manifest, put_ids, write_manifest
from framework.spec.places import run_files_storage
from framework.spec.schema import Spec
from framework.storage import filesystem_for
from framework.telemetry import StageLog, stage_figures, task_timeline

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
    expected = manifest(spec.resolved, facts[0])
    writer = spec.writer.cls(**spec.writer.params)
    errors = error_policy(spec)
    done: list[Any] = []
    if resume:
        check_resumable(writer, expected)
        done = committed_ids(writer, errors)
    elif replay:
        # A replay usually runs with a fix in the spec (a larger max_pixels); not new weights.
        check_resumable(writer, expected, flag="--replay", same_spec=False)
        # Refuses a writer that cannot add to its output, and removes files a killed run cut
        # short; it reads every output file's ids to do so, which the replay then drops.
        writer.committed_ids()
        replaying = plan_replay(errors)
    elif not writer.overwrite:
        writer.prepare()  # refuse an existing output before paying for Ray's start-up
    init_ray(spec)
    plan = build_plan(spec, ray_cluster(spec.ray.address or "the local Ray"))
    check_feasible(plan)
    if not (resume or replay):
        # Only now that the run can start: a cluster it cannot join or a plan that does not
        # fit must not cost the last good output (--overwrite) or leave a manifest behind
        # that makes the next run refuse an output nothing was written to.
        writer.prepare()
        write_manifest(writer, expected)
    if replay:
        replaying.move_records_aside()
        write_manifest(writer, expected)  # so --resume finishes a replay with its own spec
        ids = replaying.ids
        return run_plan(
            plan,
            registry,
            facts=facts,
            id_filter=(put_ids(ids), True),
            replayed=len(ids),
            recorded_inputs=replaying.unreadable_inputs,
        )
    id_filter = (put_ids(done), False) if resume else None
    return run_plan(plan, registry, facts=facts, id_filter=id_filter, resumed=len(done))


def run_plan(
    plan: Plan,
    registry: Registry,
    id_filter: tuple[Any, bool] | None = None,
    resumed: int = 0,
    replayed: int = 0,
    recorded_inputs: frozenset[str] = frozenset(),
    facts: tuple[list[dict[str, Any]], list[str]] | None = None,
) -> RunReport:
    """``facts``: ``component_facts`` of the plan's spec, when the caller has them."""
    spec = plan.spec
    components, warnings = facts or component_facts(spec, registry)
    for warning in warnings:
        log.warning(warning)
    init_ray(spec)
    run_id = uuid.uuid4().hex[:12]
    first_stage = spec.stages[0].path if spec.stages else WRITER_PATH
    stage_log = StageLog.options(name=f"infer_run_log_{run_id}").remote(first_stage)
    errors = error_policy(spec)
    started_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    origin = time.time()
    start = time.perf_counter()
    bad_input = UnreadableInputs(errors, stage_log, recorded_inputs)
    with data_context(spec, plan.cluster):
        with read_planning(plan.cluster, read_task_mb(plan)):
            run_context = RunContext(run_id, stage_log, errors, id_filter, bad_input)
            compiled = compile_plan(plan, run_context)
        failure: InferError | None = None
        sampler = MemorySampler()
        try:
            with sampler:
                compiled.writer.write(compiled.dataset)
        except ray.exceptions.RayError as exc:
            # A stage that stopped the run on purpose said why in the log: Ray keeps only text.
            stopped = ray.get(stage_log.stop_reason.remote())
            failure = RunError(stopped) if stopped else run_failure(exc)
            if failure is None:
                raise
    wall = time.perf_counter() - start
    events = task_timeline(origin, time.time()) if spec.run.timeline else None
    writer = compiled.writer
    report_path = f"{writer.path.rstrip('/')}/{REPORT_NAME}"
    plugins = {
        c["plugin"]: {"distribution": c["distribution"], "version": c["version"]}
        for c in components
        if c["plugin"]
    }
    failed, by_stage = ray.get(stage_log.failures.remote())
    report = build_report(
        spec,
        compiled.dataset.get_stats_summary(),
        wall,
        started_at,
        output=writer.path,
        report_path=report_path,
        plugins=plugins,
        components=components,
        warnings=warnings,
        stages=stage_figures(ray.get(stage_log.snapshot.remote()), origin, _node_descriptions()),
        first_stage=first_stage,
        rows_failed=failed,
        errors={
            "policy": errors.policy,
            "dead_letter": errors.dead_letter,
            "by_stage": by_stage,
            "unreadable_inputs": ray.get(stage_log.unreadable_list.remote()),
        },
        failure=str(failure) if failure else None,
        resumed=resumed,
        replayed=replayed,
        memory=sampler.figures(),
        clock_origin=start,
    )
    end_actors(stage_log)
    ray.kill(stage_log)
    write_text(report_path, report.to_json(), writer.storage)
    write_text(f"{writer.path.rstrip('/')}/{SPEC_NAME}", resolved_yaml(spec), writer.storage)
    extras_storage = run_files_storage(spec.reader.params, spec.writer.params)
    if spec.run.report:
        write_extra(spec.run.report, report.to_json(), "run.report", extras_storage)
    if spec.run.timeline:
        write_extra(spec.run.timeline, json.dumps(events), "run.timeline", extras_storage)
    if failure is not None:
        raise failure
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


SPEC_NAME = "_infer_run_spec.yaml"


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


def _node_descriptions() -> dict[str, dict[str, Any]]:
    return {
        n["NodeID"]: {
            "address": n.get("NodeManagerAddress"),
            "resources": {k: v for k, v in n.get("Resources", {}).items() if "node:" not in k},
        }
        for n in ray.nodes()
        if n.get("Alive")
    }


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


__all__ = ["run_plan", "run_spec", "write_text"]
