"""Check a loaded spec against the schema and the registered plugins, reporting every problem.

Nothing here starts Ray: a spec that passes only needs the cluster to run.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from framework.dead_letter import POLICIES
from framework.errors import SpecError, did_you_mean
from framework.registry import Registry
from framework.spec.params import bind_params, kind_of
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
)

# Ray Data runs its executor in the driver, which Ray Client does not provide
# (ray-project/ray#42739: "Ray client does not work with Ray Data").
RAY_CLIENT_UNSUPPORTED = (
    "ray.address: {address} is a Ray Client address, and Ray Data does not run over Ray "
    "Client - run infer-run on a node of the cluster with --address auto, or submit it as a "
    "Ray Job: ray job submit --working-dir . -- infer-run SPEC --address auto"
)


def validate_spec(cfg: DictConfig, registry: Registry, source: str | None = None) -> Spec:
    """The typed spec, or one ``SpecError`` listing every problem found."""
    problems: list[str] = []
    resolved = resolve(cfg, "", problems)
    if problems:
        raise SpecError(problems, source)
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
        problems.extend(_benchmark_problems(benchmark))
    problems.extend(_error_problems(errors))
    if ray.address and ray.address.startswith("ray://"):
        problems.append(RAY_CLIENT_UNSUPPORTED.format(address=ray.address))
    if run.limit is not None and run.limit < 1:
        problems.append(f"run.limit: must be at least 1, got {run.limit}")
    if run.block_mb <= 0:
        problems.append(f"run.block_mb: must be positive, got {run.block_mb}")
    if run.inflight_mb_per_node is not None and run.inflight_mb_per_node <= 0:
        problems.append(
            f"run.inflight_mb_per_node: must be positive (null: Ray Data's default), "
            f"got {run.inflight_mb_per_node}"
        )
    if run.inflight_mb_per_cpu < 0:
        problems.append(
            f"run.inflight_mb_per_cpu: must not be negative, got {run.inflight_mb_per_cpu}"
        )
    problems.extend(data_context_problems(run.data_context))
    reader = _stage(resolved.get("reader"), "reader", "reader", registry, problems)
    writer = _stage(resolved.get("writer"), "writer", "writer", registry, problems)
    lists: dict[str, tuple[StageConfig, ...]] = {}
    for section, kind in STAGE_LISTS.items():
        nodes = resolved.get(section) or []
        if not isinstance(nodes, list):
            problems.append(f"{section}: expected a list of {kind} nodes, got {kind_of(nodes)}")
            nodes = []
        stages = [
            _stage(node, f"{section}[{i}]", kind, registry, problems)
            for i, node in enumerate(nodes)
        ]
        lists[section] = tuple(s for s in stages if s is not None)
    if problems:
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
        try:
            OmegaConf.merge(OmegaConf.structured(schema), {key: value})
        except OmegaConfBaseException:
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
    if type_name is None:
        problems.append(
            f"{path}.type: missing - registered {kind}s: {', '.join(registry.names(kind))}"
        )
    else:
        entry = registry.find(kind, str(type_name))
        if entry is None:
            problems.append(f"{path}.type: {registry.unknown_message(kind, type_name)}")
    defaults = dict(getattr(entry.cls, "default_resources", {})) if entry else {}
    resources = _section(
        {**defaults, **(node.get("resources") or {})}, Resources, f"{path}.resources", problems
    )
    problems.extend(f"{path}.resources.{p}" for p in _resource_problems(resources))
    params = {k: v for k, v in node.items() if k not in RESERVED_STAGE_KEYS}
    if entry is None:
        return None
    bound, bind_problems = bind_params(entry.cls, params, f"{kind} {type_name!r}")
    problems.extend(f"{path}.{p}" for p in bind_problems)
    if bind_problems:
        return None
    checked = entry.cls.check(bound)
    problems.extend(f"{path}.{p}" for p in checked)
    return StageConfig(path, kind, str(type_name), entry.cls, bound, resources)


def _error_problems(e: ErrorsSection) -> list[str]:
    out = []
    if e.policy not in POLICIES:
        out.append(f"errors.policy: expected one of {', '.join(POLICIES)}, got {e.policy!r}")
    if e.max_count is not None and e.max_count < 0:
        out.append(f"errors.max_count: must not be negative, got {e.max_count}")
    if e.max_fraction is not None and not 0 <= e.max_fraction <= 1:
        out.append(f"errors.max_fraction: must be between 0 and 1, got {e.max_fraction}")
    if e.retries < 0:
        out.append(f"errors.retries: must not be negative, got {e.retries}")
    if e.retry_backoff_s < 0:
        out.append(f"errors.retry_backoff_s: must not be negative, got {e.retry_backoff_s}")
    if e.batch_timeout_s is not None and e.batch_timeout_s <= 0:
        out.append(f"errors.batch_timeout_s: must be positive or null, got {e.batch_timeout_s}")
    out.extend(
        f"errors.retry_on: exception class names expected, got {name!r}"
        for name in e.retry_on
        if not str(name).replace(".", "").replace("_", "").isalnum()
    )
    return out


def _benchmark_problems(b: BenchmarkSection) -> list[str]:
    # min_model_ratio has no upper bound: an impossible one is how a failing check is tested.
    least = {"rounds": 1, "warmup_rounds": 0, "sample_rows": 1}
    out = [
        f"benchmark.{k}: must be at least {v}, got {getattr(b, k)}"
        for k, v in least.items()
        if getattr(b, k) < v
    ]
    if b.min_model_ratio is not None and b.min_model_ratio <= 0:
        out.append(f"benchmark.min_model_ratio: must be positive, got {b.min_model_ratio}")
    share = b.max_outside_model_share
    if share is not None and not 0 <= share <= 1:
        out.append(f"benchmark.max_outside_model_share: must be between 0 and 1, got {share}")
    out.extend(
        f"benchmark.floors.{label}: must be positive rows/s, got {floor}"
        for label, floor in b.floors.items()
        if floor <= 0
    )
    return out


def _resource_problems(r: Resources) -> list[str]:
    out = []
    for name in ("num_cpus", "num_gpus", "memory"):
        value = getattr(r, name)
        if value is not None and value < 0:
            out.append(f"{name}: must not be negative, got {value}")
    if r.num_gpus is not None and r.num_gpus > 1 and r.num_gpus != int(r.num_gpus):
        out.append(f"num_gpus: above 1 it must be a whole number, got {r.num_gpus}")
    if r.batch_size is not None and r.batch_size < 1:
        out.append(f"batch_size: must be at least 1, got {r.batch_size}")
    actors = r.actors
    if actors is not None:
        sizes = [actors] if isinstance(actors, int) and not isinstance(actors, bool) else actors
        if not (
            isinstance(sizes, list)
            and len(sizes) in (1, 2)
            and all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in sizes)
            and sizes[0] <= sizes[-1]
        ):
            out.append(
                f"actors: expected a pool size n >= 1 or [min, max] with min <= max, got {actors!r}"
            )
    return out


def _first_line(exc: BaseException) -> str:
    line = str(exc).strip().splitlines()[0]
    # OmegaConf wraps a resolver's KeyError (a missing env var) in a quoted message.
    prefix = "KeyError raised while resolving interpolation: "
    return line[len(prefix) :].strip("\"'") if line.startswith(prefix) else line


# DataContext attributes infer-run sets from its own keys (ray_session.own_data_context;
# a test keeps the two equal), each with the key to set instead.
MANAGED_DATA_CONTEXT = {
    "target_max_block_size": "run.block_mb",
    "target_min_block_size": "run.block_mb",
    "execution_options": "run.inflight_mb_per_node and run.inflight_mb_per_cpu",
    "per_stage_map_timing": "nothing: the run report needs it",
}


def data_context_problems(settings: dict[str, Any]) -> list[str]:
    """One message per ``run.data_context`` key that is no DataContext attribute, or one
    infer-run sets itself."""
    if not settings:
        return []
    from ray.data import DataContext  # only here: validating a spec otherwise needs no Ray

    known = [f.name for f in dataclasses.fields(DataContext)]
    problems = []
    for key in settings:
        where = f"run.data_context.{key}"
        if key in MANAGED_DATA_CONTEXT:
            problems.append(f"{where}: set by infer-run; use {MANAGED_DATA_CONTEXT[key]}")
        elif key not in known:
            problems.append(
                f"{where}: not a setting of Ray Data's DataContext{did_you_mean(key, known)}"
            )
    return problems
