"""Plan → Ray Data: a table from node kind to the Ray Data call that implements it."""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import ray.data

from framework.allocator import hold_freed_memory, release_free_memory
from framework.block_cut import cut_blocks
from framework.components import ID_COLUMN, Batch, Writer
from framework.dead_letter import (
    ERROR_COLUMN,
    MISSING_ID,
    MISSING_ID_MESSAGE,
    READER_PATH,
    ErrorPolicy,
    Failure,
    batch_key,
)
from framework.errors import InferError, PluginError
from framework.id_filter import filter_ids
from framework.plan import MapNode, Plan, ReadNode, WriteNode
from framework.worker import StageRunner


@dataclass
class Compiled:
    """A lazy dataset ending after the last stage, and the writer that will consume it."""

    dataset: ray.data.Dataset
    writer: Writer


@dataclass(frozen=True)
class RunContext:
    """What every worker of one run shares: its id, the StageLog actor, the error policy."""

    run_id: str = "local"
    log: Any = None
    errors: ErrorPolicy = field(default_factory=ErrorPolicy)
    # (ObjectRef of ids, keep): --resume skips the committed ids, --replay keeps only its own.
    id_filter: tuple[Any, bool] | None = None
    bad_input: Any = None  # the reader's callback for inputs it cannot read at all


# Ray Data warns when a capped task pool gets fewer inputs than its cap (a small input);
# the plan's caps are ceilings, not requests for that many tasks.
warnings.filterwarnings(
    "ignore", message="The maximum number of concurrent tasks for", category=UserWarning
)
# Printed on every run for the max_restarts that model stages pass on purpose (see
# _emit_map; pyproject keeps Ray below 2.64, which removes the argument).
warnings.filterwarnings(
    "ignore", message="`ray_remote_args` is deprecated", category=DeprecationWarning
)

# Stateless stages run as tasks: one runner per stage per worker process, reused.
_RUNNERS: dict[tuple[str, str], StageRunner] = {}


def _task_fn(node: MapNode, run: RunContext) -> Callable[[Batch], Batch]:
    key = (run.run_id, node.stage.path)
    cls, path = node.stage.cls, node.stage.path
    params = cls.worker_params(node.stage.params)

    def apply(batch: Batch) -> Batch:
        runner = _RUNNERS.get(key)
        if runner is None:
            runner = _RUNNERS[key] = StageRunner(path, cls, params, run.log, run.errors)
        out = runner(batch)
        release_free_memory()
        return out

    apply.__name__ = apply.__qualname__ = node.name
    return apply


class _StageActor:
    """Holds one stateful stage (a loaded model) for the life of a Ray actor."""

    def __init__(
        self, path: str, cls: type, params: dict[str, Any], log: Any, errors: ErrorPolicy
    ) -> None:
        hold_freed_memory()
        if log is not None:  # so that the run ends this actor, whatever holds its handle
            log.actor.remote(ray.get_runtime_context().current_actor)
        self.runner = StageRunner(path, cls, params, log, errors)
        with contextlib.suppress(InferError):
            # Load the model now, not on the first batch. A user error raised here would
            # reach the driver only as the text of a dead actor: the first batch builds
            # again and stops the run in one line, as a task stage's does.
            self.runner.build()

    def __call__(self, batch: Batch) -> Batch:
        return self.runner(batch)


def _actor_cls(node: MapNode) -> type:
    # A subclass per stage so Ray Data names the operator after the stage.
    return type(node.name, (_StageActor,), {})


def _emit_read(node: ReadNode, _: ray.data.Dataset | None, run: RunContext) -> ray.data.Dataset:
    reader = node.stage.cls(**node.stage.params)
    reader.num_cpus = node.num_cpus
    reader.max_tasks = node.max_tasks
    reader.bad_input = run.bad_input
    # Both in Arrow, per block, fused into the read tasks. The id filter comes first: a
    # flagged row a resumed run already recorded is done, not recorded again.
    arrow = {"batch_format": "pyarrow", "batch_size": None, "zero_copy_batch": True}
    dataset = reader.read()
    if not isinstance(dataset, ray.data.Dataset):
        raise PluginError(
            f"reader: {node.stage.type}.read() returned {type(dataset).__name__}, "
            "expected a ray.data.Dataset"
        )
    if run.id_filter is not None:
        ids, keep = run.id_filter
        dataset = dataset.map_batches(
            filter_ids, fn_kwargs={"ids": ids, "keep": keep}, **arrow, **reader.map_args
        )
    dataset = dataset.map_batches(_reader_flags(run), **arrow, **reader.map_args)
    return dataset.limit(node.limit) if node.limit else dataset


def _emit_map(node: MapNode, dataset: ray.data.Dataset, run: RunContext) -> ray.data.Dataset:
    kwargs: dict[str, Any] = dict(node.ray_args)
    if node.compute == "actors":
        assert node.pool is not None
        fn: Any = _actor_cls(node)
        kwargs["fn_constructor_kwargs"] = {
            "path": node.stage.path,
            "cls": node.stage.cls,
            "params": node.stage.cls.worker_params(node.stage.params),
            "log": run.log,
            "errors": run.errors,
        }
        kwargs["compute"] = ray.data.ActorPoolStrategy(
            min_size=node.pool[0],
            max_size=node.pool[1],
            max_tasks_in_flight_per_actor=node.max_tasks_in_flight_per_actor,
        )
        # Ray Data's default for actors, said explicitly: Ray Data fuses a task stage into
        # the actor stage after it when their remote args match, and the CPU work would
        # then run inside the pool's few actors, one batch at a time beside the model.
        kwargs.setdefault("max_restarts", -1)
    else:
        fn = _task_fn(node, run)
        # The same pool size as the reader's lets Ray Data fuse them into one task.
        kwargs["compute"] = ray.data.TaskPoolStrategy(size=node.max_tasks)
    return dataset.map_batches(fn, batch_format="numpy", batch_size=node.batch_size, **kwargs)


WRITER_PATH = "writer"


def unnamed_keys(rows: pa.Table) -> list[str | None]:
    """For each row without an id, a name for its record that every run reading the row
    gives it: from the rest of the row, identical rows of a block told apart by their
    order. ``None`` for the others, whose records go in their batch's file."""
    no_id = pc.is_null(rows[ID_COLUMN], nan_is_null=True)
    if not pc.any(no_id).as_py():
        return [None] * rows.num_rows
    contents = iter(rows.filter(no_id).to_pylist())
    seen: dict[str, int] = {}
    keys: list[str | None] = []
    for unnamed in no_id.to_pylist():
        if not unnamed:
            keys.append(None)
            continue
        text = repr(sorted(next(contents).items()))
        seen[text] = seen.get(text, -1) + 1
        keys.append(batch_key(MISSING_ID, [text, seen[text]]))
    return keys


def _reader_flags(run: RunContext) -> Callable[[pa.Table], pa.Table]:
    """Sets aside rows a reader flagged in ``_error`` and rows without an id, in Arrow and
    fused into the read tasks: a null in an integer id column would turn a numpy batch's
    ids into floats, and the good rows beside it would be written with float ids.

    A row without an id is checked again by every --resume (no record can mark it done):
    its record has a file of its own, named from the row, which each run rewrites."""
    runner = StageRunner(READER_PATH, object, {}, run.log, run.errors)

    def reader_flags(table: pa.Table) -> pa.Table:
        start, failures, told = time.time(), [], []
        if table.num_rows and ID_COLUMN not in table.column_names:
            names = ", ".join(table.column_names)
            runner.stop(f"reader: plugin bug: its rows have no {ID_COLUMN!r} column ({names})")
        if ERROR_COLUMN in table.column_names:
            flags = pc.fill_null(table[ERROR_COLUMN], "")
            bad = pc.not_equal(flags, "")
            if pc.any(bad).as_py():
                flagged = table.filter(bad)  # the reason in _error is part of its rows' names
                reasons = pc.filter(flags, bad).to_pylist()
                bad_ids = flagged[ID_COLUMN].to_pylist()
                failures = [
                    Failure(i, READER_PATH, "BadInput", r, file_key=k)
                    for i, r, k in zip(bad_ids, reasons, unnamed_keys(flagged), strict=True)
                ]
                told += reasons
                table = table.filter(pc.invert(bad))
            table = table.drop_columns([ERROR_COLUMN])
        if ID_COLUMN in table.column_names:
            missing = pc.is_null(table[ID_COLUMN], nan_is_null=True)
            if pc.any(missing).as_py():
                keys = unnamed_keys(table.filter(missing))
                failures += [
                    Failure(None, READER_PATH, MISSING_ID, MISSING_ID_MESSAGE, file_key=k)
                    for k in keys
                ]
                told += keys
                table = table.filter(pc.invert(missing))
        if failures:
            ids = table[ID_COLUMN].to_pylist() if ID_COLUMN in table.column_names else []
            key = batch_key(READER_PATH, [*ids, *told]) if ids or told else None
            runner.settle(start, time.time(), len(failures), 0, failures, key, table.num_rows)
        return table

    return reader_flags


def _writer_counter(run: RunContext) -> Callable[[pa.Table], pa.Table]:
    """Counts every row reaching the writer; Arrow in and out, so the written columns keep
    their exact types."""
    runner = StageRunner(WRITER_PATH, object, {}, run.log, run.errors)

    def count_rows(table: pa.Table) -> pa.Table:
        start = time.time()
        ids = table[ID_COLUMN].to_pylist() if ID_COLUMN in table.column_names else []
        key = batch_key(WRITER_PATH, ids) if ids else None
        runner.settle(start, time.time(), table.num_rows, table.num_rows, [], key)
        return table

    return count_rows


def _emit_write(node: WriteNode, dataset: ray.data.Dataset, run: RunContext) -> Compiled:
    writer = node.stage.cls(**node.stage.params)
    writer.num_cpus = node.num_cpus
    writer.max_tasks = node.max_tasks
    # Ray fuses this into the write tasks (the same pool size as theirs): no extra pass.
    counted = dataset.map_batches(
        _writer_counter(run),
        batch_format="pyarrow",
        batch_size=None,
        zero_copy_batch=True,
        **writer.map_args,
    )
    return Compiled(counted, writer)


EMITTERS: dict[type, Callable[[Any, Any, RunContext], Any]] = {
    ReadNode: _emit_read,
    MapNode: _emit_map,
    WriteNode: _emit_write,
}


def compile_plan(plan: Plan, run: RunContext | None = None) -> Compiled:
    """1. read, 2. one ``map_batches`` per stage, 3. the writer, built but not yet run."""
    run = run or RunContext()
    dataset: Any = None
    for node, following in zip(plan.nodes, [*plan.nodes[1:], None], strict=True):
        emit = EMITTERS.get(type(node))
        if emit is None:
            raise TypeError(f"no Ray Data translation for plan node {node!r}")
        dataset = emit(node, dataset, run)
        if isinstance(dataset, Compiled):
            return dataset
        if isinstance(following, MapNode) and following.block_rows:
            # The plan cuts only after the reader or a CPU stage, whose tasks do it.
            assert isinstance(node, ReadNode | MapNode)
            args = {"num_cpus": node.num_cpus} if isinstance(node, ReadNode) else node.ray_args
            dataset = cut_blocks(dataset, following.block_rows, args, node.max_tasks)
    raise TypeError("a plan must end with a write node")


__all__ = ["EMITTERS", "WRITER_PATH", "Compiled", "RunContext", "compile_plan"]
