"""Plan → Ray Data: a table from node kind to the Ray Data call that implements it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray.data

from framework.components import ID_COLUMN, Batch, Writer
from framework.errors import RunError
from framework.plan import MapNode, Plan, ReadNode, WriteNode


@dataclass
class Compiled:
    """A lazy dataset ending after the last stage, and the writer that will consume it."""

    dataset: ray.data.Dataset
    writer: Writer


def checked_call(stage: Any, batch: Batch, name: str) -> Batch:
    """Run one stage on one batch and hold it to the batch contract."""
    rows = len(batch[ID_COLUMN]) if ID_COLUMN in batch else None
    out = stage(batch)
    if not isinstance(out, dict):
        raise RunError(f"stage {name} returned {type(out).__name__}, expected a dict of arrays")
    if ID_COLUMN not in out:
        raise RunError(f"stage {name} dropped the {ID_COLUMN!r} column")
    for column, values in out.items():
        if len(values) != rows:
            raise RunError(
                f"stage {name} returned {len(values)} rows in column {column!r} for {rows} input rows"
            )
    return out


# Stateless stages run as tasks: one instance per worker process, reused across batches.
_INSTANCES: dict[tuple[str, str, str], Any] = {}


def _task_fn(node: MapNode) -> Callable[[Batch], Batch]:
    cls, params, name = node.stage.cls, node.stage.params, node.name
    key = (cls.__module__, cls.__qualname__, repr(sorted(params.items())))

    def apply(batch: Batch) -> Batch:
        stage = _INSTANCES.get(key)
        if stage is None:
            stage = _INSTANCES[key] = cls(**params)
        return checked_call(stage, batch, name)

    apply.__name__ = apply.__qualname__ = name
    return apply


class _StageActor:
    """Holds one stateful stage (a loaded model) for the life of a Ray actor."""

    stage_name = ""

    def __init__(self, cls: type, params: dict[str, Any]) -> None:
        self.stage = cls(**params)

    def __call__(self, batch: Batch) -> Batch:
        return checked_call(self.stage, batch, self.stage_name)


def _actor_cls(node: MapNode) -> type:
    # A subclass per stage so Ray Data names the operator after the stage.
    return type(node.name, (_StageActor,), {"stage_name": node.name})


def _emit_read(node: ReadNode, _: ray.data.Dataset | None) -> ray.data.Dataset:
    reader = node.stage.cls(**node.stage.params)
    dataset = reader.read()
    return dataset.limit(node.limit) if node.limit else dataset


def _emit_map(node: MapNode, dataset: ray.data.Dataset) -> ray.data.Dataset:
    kwargs: dict[str, Any] = dict(node.ray_args)
    if node.compute == "actors":
        assert node.pool is not None
        fn: Any = _actor_cls(node)
        kwargs["fn_constructor_kwargs"] = {"cls": node.stage.cls, "params": node.stage.params}
        kwargs["compute"] = ray.data.ActorPoolStrategy(
            min_size=node.pool[0],
            max_size=node.pool[1],
            max_tasks_in_flight_per_actor=node.max_tasks_in_flight_per_actor,
        )
    else:
        fn = _task_fn(node)
    return dataset.map_batches(fn, batch_format="numpy", batch_size=node.batch_size, **kwargs)


def _emit_write(node: WriteNode, dataset: ray.data.Dataset) -> Writer:
    return node.stage.cls(**node.stage.params)


EMITTERS: dict[type, Callable[[Any, Any], Any]] = {
    ReadNode: _emit_read,
    MapNode: _emit_map,
    WriteNode: _emit_write,
}


def compile_plan(plan: Plan) -> Compiled:
    """1. read, 2. one ``map_batches`` per stage, 3. the writer, prepared but not yet run."""
    dataset: Any = None
    writer: Writer | None = None
    for node in plan.nodes:
        emit = EMITTERS.get(type(node))
        if emit is None:
            raise TypeError(f"no Ray Data translation for plan node {node!r}")
        result = emit(node, dataset)
        if isinstance(node, WriteNode):
            writer = result
        else:
            dataset = result
    assert writer is not None, "a plan always ends with a write node"
    return Compiled(dataset, writer)


__all__ = ["EMITTERS", "Compiled", "checked_call", "compile_plan"]
