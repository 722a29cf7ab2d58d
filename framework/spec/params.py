"""A spec node's keys bound to a component's ``__init__``: names, types and defaults checked."""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import types
import typing
from collections.abc import Iterator
from typing import Any, Literal, Union

import yaml

from framework.errors import InferError, did_you_mean, one_line
from framework.spec.schema import RESERVED_STAGE_KEYS, Resources


class BrokenCheck(Exception):
    """How a plugin's ``check()`` broke its contract: "raised X: ..." or "returned T, ..."."""


def check_lines(cls: type, params: dict[str, Any]) -> list[str]:
    """``cls.check(params)`` held to its contract, a list of problem lines; ``BrokenCheck``
    says how it broke it. A plugin's own one-line error (an ``InferError``: an input it
    cannot read at all) is raised as it is."""
    try:
        found = cls.check(params)
    except InferError:
        raise
    except Exception as exc:
        # On one line, as every plugin error is: some messages run over several.
        raise BrokenCheck(f"raised {type(exc).__name__}: {one_line(exc)}") from exc
    if not isinstance(found, list | tuple) or not all(isinstance(p, str) for p in found):
        raise BrokenCheck(f"returned {type(found).__name__}, expected a list of problem lines")
    return list(found)


def bind_params(cls: type, params: dict[str, Any], what: str) -> tuple[dict[str, Any], list[str]]:
    """``params`` checked against ``cls.__init__``: (all arguments with defaults, problems)."""
    signature, accepted, takes_any, hints = _signature(cls)
    problems = []
    for key, value in params.items():
        if key not in accepted:
            if not takes_any:
                # A resource key is a known mistake, checked first: `batch_size` beside a
                # model's `crop_size` is not a misspelling of it.
                hint = (
                    (f" - did you mean resources.{key}?" if key in RESOURCE_KEYS else "")
                    or did_you_mean(key, [*accepted, *RESERVED_STAGE_KEYS])
                    or f" - {what} takes: {', '.join(accepted) or 'nothing'}"
                )
                problems.append(f"{key}: unknown parameter for {what}{hint}")
            continue
        if key in hints and not matches_type(value, hints[key]):
            problems.append(
                f"{key}: expected {type_name(hints[key])}, got {kind_of(value)} {value!r}"
                + _text_hint(value, hints[key])
            )
    for name, p in accepted.items():
        if p.default is p.empty and name not in params:
            problems.append(f"{name}: missing required parameter for {what}")
    if problems:
        return {}, problems
    return _bound(signature, params), []


def _text_hint(value: Any, hint: Any) -> str:
    """How to give a string that YAML reads as the value wanted ('2' for a float): it was
    quoted, or came from ``${oc.env:...}``, which always gives a string."""
    try:
        parsed = yaml.safe_load(value) if isinstance(value, str) else None
    except yaml.YAMLError:
        return ""
    if parsed is None or isinstance(parsed, str) or not matches_type(parsed, hint):
        return ""
    what = {bool: "a boolean", int: "a number", float: "a number"}.get(type(parsed), "a value")
    decode = "${oc.decode:${oc.env:VAR}}"
    return f" - {what} in quotes, or from ${{oc.env:VAR}} (a string): {decode} reads it as YAML"


def tree_nodes(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every node of a parsed YAML tree, the tree itself first, with its spec path
    (``models[0].name``)."""
    yield path, node
    if isinstance(node, dict | list):
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in items:
            sub = f"{path}[{key}]" if isinstance(node, list) else f"{path}.{key}".lstrip(".")
            yield from tree_nodes(value, sub)


def checkable_params(cls: type, params: dict[str, Any]) -> tuple[dict[str, Any] | None, set[str]]:
    """For ``check()`` when binding found problems, so that one bad key hides no other:
    ``params`` without the unknown and wrongly typed keys, defaults applied (None when a
    required parameter is then missing), and the wrongly typed keys."""
    signature, accepted, takes_any, hints = _signature(cls)
    wrong = {
        key
        for key, value in params.items()
        if key in accepted and key in hints and not matches_type(value, hints[key])
    }
    kept = {k: v for k, v in params.items() if (k in accepted or takes_any) and k not in wrong}
    if any(p.default is p.empty and name not in kept for name, p in accepted.items()):
        return None, wrong
    return _bound(signature, kept), wrong


def _signature(cls: type) -> tuple[inspect.Signature, dict[str, Any], bool, dict[str, Any]]:
    """``cls.__init__``'s signature, its named parameters, whether it takes ``**kwargs``,
    and its type hints."""
    # A class without an __init__ of its own takes nothing (object's is (*args, **kwargs)).
    signature = inspect.signature(
        cls.__init__ if cls.__init__ is not object.__init__ else _no_params
    )
    accepted = {
        name: p
        for name, p in signature.parameters.items()
        if name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    takes_any = any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values())
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # an annotation we cannot evaluate: skip type checks, keep name checks
        hints = {}
    return signature, accepted, takes_any, hints


def _bound(signature: inspect.Signature, params: dict[str, Any]) -> dict[str, Any]:
    bound = signature.bind_partial(**params)
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    arguments.pop("self", None)
    for name, p in signature.parameters.items():  # as the class is called: cls(**arguments)
        if p.kind == p.VAR_KEYWORD:
            arguments.update(arguments.pop(name, {}))
        elif p.kind == p.VAR_POSITIONAL:
            arguments.pop(name, None)
    return arguments


def _no_params(self: object) -> None: ...


# Keys of a stage's resources node, a common slip one level up (batch_size beside type).
RESOURCE_KEYS = tuple(f.name for f in dataclasses.fields(Resources))


def matches_type(value: Any, hint: Any) -> bool:
    """Whether plain YAML data ``value`` fits the annotation ``hint``; unknown hints pass."""
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    if hint is type(None) or hint is None:
        return value is None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return any(matches_type(value, a) for a in args)
    if origin is Literal:
        return value in args
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, tuple, collections.abc.Sequence):
        if not isinstance(value, (list, tuple)):
            return False
        item = args[0] if args and (origin is not tuple or args[-1] is Ellipsis) else Any
        return all(matches_type(v, item) for v in value)
    if origin in (dict, collections.abc.Mapping):
        if not isinstance(value, dict):
            return False
        return not args or all(matches_type(v, args[1]) for v in value.values())
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def type_name(hint: Any) -> str:
    """A parameter's type as Python 3.11 prints it, on 3.10 too (whose type hints make a
    parameter defaulting to None ``Optional[...]``, and print it so)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " | ".join(type_name(arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return "None"
    if isinstance(hint, type) and not typing.get_args(hint):
        return hint.__name__
    return str(hint).replace("typing.", "").replace("NoneType", "None")


def kind_of(value: Any) -> str:
    return {dict: "a mapping", list: "a list", type(None): "null"}.get(
        type(value), type(value).__name__
    )
