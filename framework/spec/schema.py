"""The typed shape of a spec.

A spec file has the sections below. Stage nodes (``reader``, each entry of
``preprocessors``/``models``/``postprocessors``, ``writer``) hold ``type`` (a registered
name), an optional ``resources`` node, and the plugin's constructor parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Sections of the spec file, in pipeline order; ``vars`` is free-form for interpolation.
SECTIONS = (
    "vars",
    "ray",
    "run",
    "errors",
    "benchmark",
    "reader",
    "preprocessors",
    "models",
    "postprocessors",
    "writer",
)
STAGE_LISTS = {"preprocessors": "preprocessor", "models": "model", "postprocessors": "preprocessor"}
STAGE_NODES = {"reader": "reader", "writer": "writer"}
RESERVED_STAGE_KEYS = ("type", "resources")


@dataclass
class Resources:
    """What one stage asks Ray for; unset keys fall back to the plugin's defaults."""

    num_cpus: float | None = None
    num_gpus: float | None = None
    memory: int | None = None
    accelerator_type: str | None = None
    custom: dict[str, float] = field(default_factory=dict)
    batch_size: int | None = None
    actors: Any = None  # an int (fixed pool) or [min, max]
    max_tasks_in_flight_per_actor: int | None = None

    def pool_sizes(self) -> tuple[int, int]:
        """``actors`` as (min, max): ``n`` is ``(n, n)``, unset one actor."""
        sizes = self.actors if self.actors is not None else 1
        sizes = [sizes] if isinstance(sizes, int) else list(sizes)
        return int(sizes[0]), int(sizes[-1])


@dataclass
class RaySection:
    address: str | None = None  # "auto" or host:port (not ray://); None: a local Ray
    num_cpus: int | None = None  # for the local Ray only
    object_store_memory: int | None = None  # for the local Ray only
    # Passed to ray.init: how workers of an existing cluster get the plugins' code.
    runtime_env: dict[str, Any] = field(default_factory=dict)
    # Upload infer-run and the packages of every component the spec uses (py_modules).
    ship_code: bool = False


@dataclass
class RunSection:
    name: str = "infer-run"
    limit: int | None = None
    report: str | None = None
    # Ray's task timeline of the run (Chrome trace JSON): a local Ray is gone after the run.
    timeline: str | None = None
    # Ray Data's target block size: smaller blocks stream to the next stage sooner and
    # spread over more tasks; larger ones cost less per-block overhead.
    block_mb: float = 16.0
    # Data in flight between stages (Ray Data's object store budget), per node: bounds
    # memory however large the input; null leaves Ray Data's own default. A node gets
    # at least inflight_mb_per_cpu per CPU (up to half the object store): 512 MB let only 3
    # of a 16-core GPU node's preprocessing tasks run at once; 128 MB per CPU let 6.5, and
    # 512 per CPU on the same kind of node no more (README: performance on a GPU).
    inflight_mb_per_node: float | None = 512.0
    inflight_mb_per_cpu: float = 128.0
    # Ray Data's own settings (DataContext attributes) for this run, applied after ours:
    # its knobs stay reachable without a release of infer-run.
    data_context: dict[str, Any] = field(default_factory=dict)


# Errors that say "try again", not "this row is bad": network, throttling, timeouts.
TRANSIENT_ERRORS = ("ConnectionError", "TimeoutError")


@dataclass
class ErrorsSection:
    policy: str = "fail"  # fail: stop at the first bad row; skip: dead-letter it and go on
    max_count: int | None = None  # skip: stop once more rows than this failed
    max_fraction: float | None = None  # skip: stop once this share of the rows seen failed
    dead_letter: str | None = None  # default: <writer.path>/_dead_letter
    # A batch failing with one of these exception types (by class name, or any base's)
    # is re-run up to `retries` times, `retry_backoff_s` doubling, before rows are isolated.
    retries: int = 2
    retry_on: list[str] = field(default_factory=lambda: list(TRANSIENT_ERRORS))
    retry_backoff_s: float = 0.5
    # A stage call on one batch (or one row) running longer than this ends its worker
    # process; the rows that hung are isolated and dead-lettered as StageTimeout.
    batch_timeout_s: float | None = None


@dataclass
class BenchmarkSection:
    """Throughput expectations for ``infer-run bench`` and ``pytest --infer-specs``.

    The checks are ratios that hold on any machine; ``floors`` are absolute, per machine
    label (``INFER_MACHINE_LABEL``), and advisory unless strict floors are asked for.
    """

    rounds: int = 1  # timed end-to-end runs; the best one is checked
    warmup_rounds: int = 0  # untimed runs before them
    sample_rows: int = 64  # rows the model-only ceiling is measured on
    min_model_ratio: float | None = None  # end-to-end rows/s / model-only rows/s
    max_outside_model_share: float | None = None  # share of wall time the models are idle
    floors: dict[str, float] = field(default_factory=dict)  # machine label -> min rows/s


@dataclass(frozen=True)
class StageConfig:
    """One validated stage node."""

    path: str  # where it sits in the spec, e.g. "models[0]"
    kind: str  # reader | preprocessor | model | writer
    type: str
    cls: type
    params: dict[str, Any]
    resources: Resources

    @property
    def in_actors(self) -> bool:
        return runs_in_actors(self.cls, self.resources)


def runs_in_actors(cls: type, resources: Resources) -> bool:
    """Runs in an actor pool: a stateful stage (every model), or one given ``actors``."""
    return bool(getattr(cls, "stateful", False)) or resources.actors is not None


@dataclass(frozen=True)
class Spec:
    """A whole validated spec; ``resolved`` is the interpolated spec as plain data."""

    reader: StageConfig
    preprocessors: tuple[StageConfig, ...]
    models: tuple[StageConfig, ...]
    postprocessors: tuple[StageConfig, ...]
    writer: StageConfig
    ray: RaySection
    run: RunSection
    errors: ErrorsSection
    benchmark: BenchmarkSection | None
    resolved: dict[str, Any]
    source: str | None = None

    @property
    def stages(self) -> tuple[StageConfig, ...]:
        """The ``map_batches`` stages in pipeline order."""
        return self.preprocessors + self.models + self.postprocessors
