"""The contract check behind the plugin test kit: ``conformance_problems`` and
``assert_conformant`` hold any reader, preprocessor, model or writer to what a run needs.

Kept apart from ``framework.testing`` (the pytest plugin, which re-exports both) so that
checking a plugin needs no pytest.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from framework.components import ID_COLUMN, Batch
from framework.errors import InferError
from framework.plugins import load_registry
from framework.registry import Registry
from framework.spec.params import BrokenCheck, bind_params, check_lines


def conformance_problems(
    kind: str,
    name: str,
    params: Mapping[str, Any] | None = None,
    batch: Batch | None = None,
    registry: Registry | None = None,
) -> list[str]:
    """Everything ``name`` does that breaks the contract, one line each; [] when it conforms.

    Stages (preprocessors, models) need a sample ``batch`` with an ``id`` column and are
    checked for row count, ``id`` alignment, declared output columns and dtypes, an
    empty batch, and determinism. Readers and writers are checked for their class and
    parameters; run them through ``run_spec`` for an end-to-end check.
    """
    return _problems(kind, name, params, batch, registry, causes=[])


def assert_conformant(kind: str, name: str, **kwargs: Any) -> None:
    causes: list[BaseException] = []
    problems = _problems(kind, name, **kwargs, causes=causes)
    if problems:
        # Chained to what the plugin raised, so that pytest shows where its code failed:
        # the one line names the exception, not the frame.
        raise AssertionError("\n".join(problems)) from (causes[0] if causes else None)


def _problems(
    kind: str,
    name: str,
    params: Mapping[str, Any] | None = None,
    batch: Batch | None = None,
    registry: Registry | None = None,
    *,
    causes: list[BaseException],
) -> list[str]:
    """``conformance_problems``, adding to ``causes`` each exception the plugin raised."""
    registry = registry or load_registry()  # raises on clashes and misspelt hooks
    entry = registry.find(kind, name)
    if entry is None:
        return [registry.unknown_message(kind, name)]
    where = f"{kind} {name!r}"
    bound, problems = bind_params(entry.cls, dict(params or {}), where)
    if problems:
        return [f"{where}: {p}" for p in problems]
    problems = _check_problems(entry.cls, bound, where, causes)
    if problems or kind in ("reader", "writer"):
        return problems
    if batch is None or ID_COLUMN not in batch:
        return [f"{where}: conformance needs a sample batch with an {ID_COLUMN!r} column"]
    stage = _build(entry.cls, bound, where, problems, causes)
    if stage is None:
        return problems
    first = _call(stage, _copy(batch), where, problems, causes)
    if first is not None:
        problems.extend(_output_problems(stage, batch, first, where))
    # Only two dicts compare: a list or a DataFrame is reported above, once.
    if isinstance(first, dict):
        again = _call(stage, _copy(batch), where, problems, causes)
        if again is not None and not _same(first, again):
            problems.append(f"{where}: the same input gave a different output the second time")
    empty = {k: v[:0] for k, v in batch.items()}
    out = _call(stage, empty, f"{where} on an empty batch", problems, causes)
    if out is not None:
        problems.extend(_output_problems(stage, empty, out, f"{where} on an empty batch"))
    return problems


def _check_problems(
    cls: type, bound: dict[str, Any], where: str, causes: list[BaseException]
) -> list[str]:
    """``check()``'s lines, held to its contract as validation holds it (``check_lines``;
    validation stops on a break, the kit reports it): a returned string was iterated, one
    problem per character."""
    try:
        found = check_lines(cls, bound)
    except BrokenCheck as exc:
        causes.extend([exc.__cause__] if exc.__cause__ else [])
        return [f"{where}: check() {exc}"]
    except InferError as exc:  # a plugin's own one-line error: here one problem like any
        return [f"{where}: check() raised {type(exc).__name__}: {exc}"]
    return [f"{where}: check(): {p}" for p in found]


def _build(
    cls: type, bound: dict[str, Any], where: str, problems: list[str], causes: list[BaseException]
) -> Any:
    """The stage as a run's workers build it: from ``worker_params``, whose result binding
    and ``check()`` never see (a renamed key passed them and failed every worker)."""
    try:
        return cls(**cls.worker_params(bound))
    except Exception as exc:
        causes.append(exc)
        problems.append(
            f"{where}: {cls.__name__}(**worker_params(params)) raised {type(exc).__name__}: {exc}"
        )
        return None


def _call(
    stage: Any, batch: Batch, where: str, problems: list[str], causes: list[BaseException]
) -> Batch | None:
    try:
        return stage(batch)
    except Exception as exc:  # the kit reports a plugin's crash instead of stopping
        causes.append(exc)
        problems.append(f"{where}: raised {type(exc).__name__}: {exc}")
        return None


def _output_problems(stage: Any, batch: Batch, out: Any, where: str) -> list[str]:
    # The instance's output_columns: what a stage adds can depend on its parameters.
    if not isinstance(out, dict):
        return [f"{where}: returned {type(out).__name__}, expected dict[str, numpy.ndarray]"]
    problems = []
    rows = len(batch[ID_COLUMN])
    for column, values in out.items():
        if not isinstance(values, np.ndarray):
            problems.append(f"{where}: column {column!r} is {type(values).__name__}, not ndarray")
        elif values.ndim == 0:  # np.asarray(one_number): it has no len()
            problems.append(f"{where}: column {column!r} is a 0-d array, not one value per row")
        elif len(values) != rows:
            problems.append(f"{where}: column {column!r} has {len(values)} rows for {rows}")
    if ID_COLUMN not in out:
        problems.append(f"{where}: dropped the {ID_COLUMN!r} column")
    elif not np.array_equal(np.asarray(out[ID_COLUMN]), np.asarray(batch[ID_COLUMN])):
        problems.append(f"{where}: ids changed or were reordered")
    for column, dtype in getattr(stage, "output_columns", {}).items():
        if column not in out:
            problems.append(f"{where}: declared output column {column!r} is missing")
        elif isinstance(out[column], np.ndarray) and out[column].dtype.kind != np.dtype(dtype).kind:
            problems.append(
                f"{where}: column {column!r} has dtype {out[column].dtype}, declared {dtype}"
            )
    return problems


def _copy(batch: Batch) -> Batch:
    return {k: v.copy() for k, v in batch.items()}


def _same(a: Batch, b: Any) -> bool:
    if not isinstance(b, dict) or a.keys() != b.keys():
        return False
    for key in a:
        x, y = np.asarray(a[key]), np.asarray(b[key])
        if x.dtype.kind in "fc":
            if x.shape != y.shape or not np.allclose(x, y, equal_nan=True):
                return False
        elif x.shape != y.shape or not all(
            np.array_equal(i, j) if isinstance(i, np.ndarray) else i == j
            for i, j in zip(x.ravel(), y.ravel(), strict=True)
        ):
            return False
    return True
