"""Check a loaded spec against the schema and the registered plugins, reporting every problem.

Nothing here starts Ray: a spec that passes only needs the cluster to run.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from framework.errors import PluginError, SpecError, did_you_mean
from framework.registry import Registry
from framework.spec.checks import (
    benchmark_problems,
    error_problems,
    nan_problems,
    ray_problems,
    resource_problems,
    run_problems,
    unused_resources,
)
from framework.spec.data_context import data_context_problems
from framework.spec.params import (
    BrokenCheck,
    bind_params,
    check_lines,
    checkable_params,
    kind_of,
)
from framework.spec.places import blank_path_problems, place_problems
from framework.spec.schema import (
    RESERVED_STAGE_KEYS,
    SECTIONS,
    STAGE_LISTS,
    BenchmarkSection,
    ErrorsSection,
    RaySection,
    Resources,
    RunSection,
    Spec,
    StageConfig,
    runs_in_actors,
)
from framework.storage import storage_problems


def validate_spec(
    cfg: DictConfig,
    registry: Registry,
    source: str | None = None,
    problems: list[str] | None = None,
    reach_outputs: bool = True,
) -> Spec:
    """The typed spec, or one ``SpecError`` listing every problem found, after ``problems``
    found before (overrides that could not be applied). ``reach_outputs``: whether remote
    places the run writes are asked if their buckets answer (not where the spec only
    travels elsewhere to run, as ``infer-run k8s``: there the job checks them itself)."""
    problems = list(problems or [])
    before = len(problems)
    resolved = resolve(cfg, "", problems)
    if len(problems) > before:  # what failed to resolve would show again as missing
        raise SpecError(problems, source)
    nans = nan_problems(resolved)
    problems.extend(nans)
    for key in resolved:
        if key not in SECTIONS:
            problems.append(f"{key}: unknown section{did_you_mean(key, SECTIONS)}")
    for required in ("reader", "writer"):
        if resolved.get(required) is None:
            problems.append(f"{required}: missing - every spec needs a {required}")
    ray = _section(resolved.get("ray"), RaySection, "ray", problems)
    run = _section(resolved.get("run"), RunSection, "run", problems)
    errors = _section(resolved.get("errors"), ErrorsSection, "errors", problems)
    benchmark = None
    if resolved.get("benchmark") is not None:
        benchmark = _section(resolved["benchmark"], BenchmarkSection, "benchmark", problems)
        problems.extend(benchmark_problems(benchmark))
    problems.extend(error_problems(errors))
    problems.extend(ray_problems(ray))
    problems.extend(run_problems(run))
    problems.extend(data_context_problems(run.data_context))
    # A storage node of the wrong types would make the reader's or writer's check() fail
    # on it (or, worse, pass with anonymous access), and an empty path be read as the
    # current folder: reported instead of checking the stage.
    bad_places = {key: _place_problems(resolved.get(key), key) for key in ("reader", "writer")}
    problems.extend(p for found in bad_places.values() for p in found)
    reader = writer = None
    if not bad_places["reader"]:
        reader = _stage(resolved.get("reader"), "reader", "reader", registry, problems)
    if not bad_places["writer"]:
        writer = _stage(resolved.get("writer"), "writer", "writer", registry, problems)
    lists: dict[str, tuple[StageConfig, ...]] = {}
    for section, kind in STAGE_LISTS.items():
        nodes = resolved.get(section)
        nodes = [] if nodes is None else nodes  # not `or []`: `models: {}` is not a list
        if not isinstance(nodes, list):
            problems.append(f"{section}: expected a list of {kind} nodes, got {kind_of(nodes)}")
            nodes = []
        # An empty item (a stray "-") was dropped: later stages kept paths, not places.
        empty = [f"{section}[{i}]" for i, node in enumerate(nodes) if node is None]
        problems += [f"{path}: expected a mapping with a 'type' key, got null" for path in empty]
        stages = [
            _stage(node, f"{section}[{i}]", kind, registry, problems)
            for i, node in enumerate(nodes)
        ]
        lists[section] = tuple(s for s in stages if s is not None)
    if reader is not None and writer is not None:
        suffix = getattr(writer.cls, "output_suffix", None) or ""
        problems += place_problems(reader.params, writer.params, errors, run, reach_outputs, suffix)
    if problems:
        # A NaN's own line says it all: drop what other checks then said of the same key.
        nan_keys = {p.split(":")[0] for p in nans}
        problems = [p for p in problems if p in nans or p.split(":")[0] not in nan_keys]
        raise SpecError(problems, source)
    assert reader is not None and writer is not None
    return Spec(
        reader=reader,
        writer=writer,
        ray=ray,
        run=run,
        errors=errors,
        benchmark=benchmark,
        resolved=resolved,
        source=source,
        **lists,
    )


def resolve(node: Any, path: str, problems: list[str]) -> Any:
    """Plain data with every interpolation resolved; each failing one becomes a problem."""
    if isinstance(node, DictConfig):
        out = {}
        for key in node:
            sub = f"{path}.{key}" if path else str(key)
            try:
                value = node[key]
            except OmegaConfBaseException as exc:
                problems.append(f"{sub}: {_first_line(exc)}")
                continue
            out[str(key)] = resolve(value, sub, problems)
        return out
    if isinstance(node, ListConfig):
        out_list = []
        for i in range(len(node)):
            try:
                value = node[i]
            except OmegaConfBaseException as exc:
                problems.append(f"{path}[{i}]: {_first_line(exc)}")
                continue
            out_list.append(resolve(value, f"{path}[{i}]", problems))
        return out_list
    return node


def _section(data: Any, schema: type, path: str, problems: list[str]) -> Any:
    """A structured-config dataclass from ``data``, one problem per bad key."""
    if data is None:
        return schema()
    if not isinstance(data, dict):
        problems.append(f"{path}: expected a mapping, got {kind_of(data)}")
        return schema()
    names = [f.name for f in dataclasses.fields(schema)]
    types_ = {f.name: f.type for f in dataclasses.fields(schema)}
    good = {}
    for key, value in data.items():
        if key not in names:
            problems.append(f"{path}.{key}: unknown key{did_you_mean(key, names)}")
            continue
        if isinstance(value, bool) and not {"bool", "Any"} & set(str(types_[key]).split(" | ")):
            # OmegaConf would take `true` for a string field as the string "True".
            problems.append(f"{path}.{key}: expected {types_[key]}, got bool {value!r}")
            continue
        try:
            OmegaConf.merge(OmegaConf.structured(schema), {key: value})
        except (OmegaConfBaseException, TypeError):  # TypeError: a list for a mapping, or back
            problems.append(f"{path}.{key}: expected {types_[key]}, got {kind_of(value)} {value!r}")
            continue
        good[key] = value
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), good))


def _stage(
    node: Any, path: str, kind: str, registry: Registry, problems: list[str]
) -> StageConfig | None:
    if node is None:
        return None
    if not isinstance(node, dict):
        problems.append(f"{path}: expected a mapping with a 'type' key, got {kind_of(node)}")
        return None
    type_name = node.get("type")
    entry = None
    misspelt = [key for key in node if key != "type" and did_you_mean(str(key), ["type"])]
    if type_name is None and misspelt:  # `Type:`, `typ:`: not missing, misspelt
        problems += [f"{path}.{key}: unknown key - did you mean 'type'?" for key in misspelt]
    elif type_name is None:
        problems.append(
            f"{path}.type: missing - registered {kind}s: {', '.join(registry.names(kind))}"
        )
    else:
        entry = registry.find(kind, str(type_name))
        if entry is None:
            problems.append(f"{path}.type: {registry.unknown_message(kind, type_name)}")
    asked = node.get("resources")
    asked = {} if asked is None else asked
    if not isinstance(asked, dict):
        problems.append(f"{path}.resources: expected a mapping, got {kind_of(asked)}")
        asked = {}
    defaults = dict(getattr(entry.cls, "default_resources", {})) if entry else {}
    resources = _section({**defaults, **asked}, Resources, f"{path}.resources", problems)
    problems.extend(f"{path}.resources.{p}" for p in resource_problems(resources))
    if entry is not None:
        unused = unused_resources(kind, runs_in_actors(entry.cls, resources), asked)
        problems.extend(f"{path}.resources.{p}" for p in unused)
    params = {k: v for k, v in node.items() if k not in RESERVED_STAGE_KEYS}
    if entry is None:
        return None
    bound, bind_problems = bind_params(entry.cls, params, f"{kind} {type_name!r}")
    if bind_problems:
        found = _checked_anyway(entry.cls, params, bind_problems, path, kind, str(type_name))
        problems.extend(f"{path}.{p}" for p in found)
        return None
    problems.extend(f"{path}.{p}" for p in _checked(entry.cls, bound, path, kind, str(type_name)))
    return StageConfig(path, kind, str(type_name), entry.cls, bound, resources)


def _place_problems(node: Any, path: str) -> list[str]:
    storage = node.get("storage") if isinstance(node, dict) else None
    return storage_problems(f"{path}.storage", storage) + blank_path_problems(node, f"{path}.path")


def _checked_anyway(
    cls: type, params: dict[str, Any], bind_problems: list[str], path: str, kind: str, name: str
) -> list[str]:
    """Binding's problems, then what ``check()`` finds in the other keys: README promises
    every problem at once. A wrongly typed key is told in the plugin's own words where its
    ``check()`` has some for that value ("expected true, false or 'auto'", not "bool | str")."""
    partial, wrong = checkable_params(cls, params)
    if partial is None:  # check() may rely on every required parameter
        return bind_problems
    found = _checked(cls, partial, path, kind, name)
    lines: list[str] = []
    for line in bind_problems:
        key = line.split(":")[0]
        own = _own_words(cls, {**partial, key: params[key]}, key) if key in wrong else []
        lines.extend(own or [line])
    return lines + [p for p in found if p not in lines]


def _own_words(cls: type, params: dict[str, Any], key: str) -> list[str]:
    """``check()``'s lines about ``key`` given its wrongly typed value; none if it has none,
    or cannot take such a value (a check may rely on the types the signature promises)."""
    try:
        found = cls.check(params)
    except Exception:
        return []
    if not isinstance(found, list | tuple):
        return []
    return [p for p in found if isinstance(p, str) and p.startswith(f"{key}:")]


def _checked(cls: type, params: dict[str, Any], path: str, kind: str, name: str) -> list[str]:
    """The plugin's own ``check(params)``, held to its contract: a list of problem lines."""
    try:
        return check_lines(cls, params)
    except BrokenCheck as exc:
        raise PluginError(f"{path}: check() of the {kind} {name!r} {exc}") from exc.__cause__


def _first_line(exc: BaseException) -> str:
    line = str(exc).strip().splitlines()[0]
    # OmegaConf wraps a resolver's KeyError (a missing env var) in a quoted message.
    prefix = "KeyError raised while resolving interpolation: "
    return line[len(prefix) :].strip("\"'") if line.startswith(prefix) else line
