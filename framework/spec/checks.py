"""Value checks of the spec's sections, each a list of problem lines (``path: what``)."""

from __future__ import annotations

import math
import re
import threading
from pathlib import Path
from typing import Any

from framework.dead_letter import check_policy
from framework.spec.params import tree_nodes
from framework.spec.places import report_file, timeline_file
from framework.spec.schema import (
    BenchmarkSection,
    ErrorsSection,
    RaySection,
    Resources,
    RunSection,
)
from framework.storage import is_remote

# Ray Data runs its executor in the driver, which Ray Client does not provide
# (ray-project/ray#42739: "Ray client does not work with Ray Data").
RAY_CLIENT_UNSUPPORTED = (
    "ray.address: {address} is a Ray Client address, and Ray Data does not run over Ray "
    "Client - run infer-run on a node of the cluster with --address auto, or submit it as a "
    "Ray Job: ray job submit --working-dir . -- infer-run SPEC --address auto"
)
HOST_PORT = re.compile(r"^\[?[\w.:-]+\]?:(\d{1,5})$")
MIN_OBJECT_STORE_BYTES = 75 * 1024**2  # Ray refuses a smaller object store
# Reads and writes are Ray Data tasks asking only for CPUs.
READ_WRITE_RESOURCES = ("num_cpus",)
ACTOR_ONLY_RESOURCES = ("max_tasks_in_flight_per_actor",)
# The longest wait time.sleep and threading.Event.wait take (about 292 years): a longer
# batch timeout or retry wait overflowed in the workers, mid-run.
LONGEST_WAIT_S = threading.TIMEOUT_MAX


def ray_problems(ray: RaySection) -> list[str]:
    out = []
    address = ray.address
    if address and address.startswith("ray://"):
        out.append(RAY_CLIENT_UNSUPPORTED.format(address=address))
    elif address and address not in ("auto", "local"):
        port = HOST_PORT.match(address)
        if port is None or not 0 < int(port.group(1)) < 65536:
            out.append(
                "ray.address: expected auto or the head node's host:port (e.g. "
                f"10.0.0.5:6379), got {address!r}"
            )
    if ray.num_cpus is not None and ray.num_cpus < 1:
        out.append(f"ray.num_cpus: must be at least 1, got {ray.num_cpus}")
    store = ray.object_store_memory
    if store is not None and store < MIN_OBJECT_STORE_BYTES:
        out.append(
            f"ray.object_store_memory: at least {MIN_OBJECT_STORE_BYTES} bytes (75 MiB, "
            f"Ray's minimum), got {store}"
        )
    return out


def run_problems(run: RunSection) -> list[str]:
    out = []
    if run.limit is not None and run.limit < 1:
        out.append(f"run.limit: must be at least 1, got {run.limit}")
    # Infinite sizes pass the bounds below, then became bytes with int(): a traceback.
    if run.block_mb <= 0:
        out.append(f"run.block_mb: must be positive, got {run.block_mb}")
    elif math.isinf(run.block_mb):
        out.append(f"run.block_mb: must be a finite number, got {run.block_mb}")
    per_node = run.inflight_mb_per_node
    if per_node is not None and (per_node <= 0 or math.isinf(per_node)):
        bound = "positive" if per_node <= 0 else "a finite number"
        out.append(
            f"run.inflight_mb_per_node: must be {bound} (null: Ray Data's default), got {per_node}"
        )
    if run.inflight_mb_per_cpu < 0:
        out.append(f"run.inflight_mb_per_cpu: must not be negative, got {run.inflight_mb_per_cpu}")
    elif math.isinf(run.inflight_mb_per_cpu):
        out.append(
            f"run.inflight_mb_per_cpu: must be a finite number, got {run.inflight_mb_per_cpu}"
        )
    for key, path, file_in in (
        ("report", run.report, report_file),
        ("timeline", run.timeline, timeline_file),
    ):
        # A folder (a path ending in /) is tried with the file it will hold.
        problem = unwritable(file_in(path)) if path else None
        if problem:
            out.append(f"run.{key}: cannot write {path}: {problem}")
    return out


def unwritable(path: str) -> str | None:
    """Why a local file could not be written at ``path``, or None (remote paths: None).

    Found by creating it (and the folders it needs), then removing what was created:
    permission bits say nothing to root, who still cannot write under /proc or on a
    read-only mount, and such a run failed only at its end, writing its report.
    """
    if is_remote(path):
        return None
    target = local_path(path)
    if target.is_dir():
        return "it is a directory"
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is a file, not a directory"
    try:
        _try_writing(target)
    except OSError as exc:
        doing = "open" if target.exists() else "create"
        return f"cannot {doing} {exc.filename or target}: {exc.strerror or exc}"
    return None


def local_path(path: str) -> Path:
    """A local place as a spec names it (``file://``, ``~`` allowed), absolute."""
    return Path(path.removeprefix("file://")).expanduser().absolute()


def _try_writing(target: Path) -> None:
    """Open ``target`` for writing as the run will, changing nothing that was there."""
    if target.exists():
        with open(target, "ab"):  # appends nothing: the file and its time stay as they were
            return
    made: list[Path] = []
    try:
        for folder in reversed([p for p in target.parents if not p.exists()]):
            folder.mkdir()
            made.append(folder)
        with open(target, "xb"):
            pass
        target.unlink()
    finally:
        for folder in reversed(made):
            folder.rmdir()


def error_problems(e: ErrorsSection) -> list[str]:
    policy = check_policy(e.policy)
    out = [policy] if policy else []
    if e.max_count is not None and e.max_count < 0:
        out.append(f"errors.max_count: must not be negative, got {e.max_count}")
    if e.max_fraction is not None and not 0 <= e.max_fraction <= 1:
        out.append(f"errors.max_fraction: must be between 0 and 1, got {e.max_fraction}")
    if e.retries < 0:
        out.append(f"errors.retries: must not be negative, got {e.retries}")
    if e.retry_backoff_s < 0:
        out.append(f"errors.retry_backoff_s: must not be negative, got {e.retry_backoff_s}")
    elif e.retries > 0 and _longest_retry_wait(e) > LONGEST_WAIT_S:
        out.append(
            f"errors.retry_backoff_s: {e.retry_backoff_s} s, doubled for each of {e.retries} "
            f"retries, waits longer than Python can ({LONGEST_WAIT_S:.0f} s) - lower "
            "errors.retries or errors.retry_backoff_s"
        )
    if e.batch_timeout_s is not None and e.batch_timeout_s <= 0:
        out.append(f"errors.batch_timeout_s: must be positive or null, got {e.batch_timeout_s}")
    elif e.batch_timeout_s is not None and e.batch_timeout_s > LONGEST_WAIT_S:
        out.append(
            f"errors.batch_timeout_s: at most {LONGEST_WAIT_S:.0f} s (the longest wait Python "
            f"takes), got {e.batch_timeout_s}"
        )
    out.extend(
        f"errors.retry_on: exception class names expected, got {name!r}"
        for name in e.retry_on
        if not str(name).replace(".", "").replace("_", "").isalnum()
    )
    # The workers make it at the first bad row: a folder that cannot be made stopped the
    # run there, as a bug with its traceback. One that exists is listed before the run
    # (resume.earlier_dead_letters); remote ones: places.remote_output_problems.
    dead = str(e.dead_letter or "")
    made = dead and not is_remote(dead) and not local_path(dead).exists()
    if made and (problem := unwritable(f"{dead.rstrip('/')}/{PROBE}")):
        out.append(f"errors.dead_letter: cannot write to {dead}: {problem}")
    return out


PROBE = ".infer-run-write-check"  # a file tried in a folder, then removed; not a record


def _longest_retry_wait(e: ErrorsSection) -> float:
    """The wait before the last retry (the worker's ``retry_backoff_s * 2**n``)."""
    try:
        return math.ldexp(e.retry_backoff_s, e.retries - 1)
    except OverflowError:
        return math.inf


def nan_problems(tree: Any, where: str = "") -> list[str]:
    """Every NaN in the resolved spec (``.nan`` in YAML): it passes any ``< 0`` check and then
    makes a limit that always or never holds."""
    return [
        f"{path}: NaN is not a usable number"
        for path, node in tree_nodes(tree, where)
        if isinstance(node, float) and math.isnan(node)
    ]


def benchmark_problems(b: BenchmarkSection) -> list[str]:
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


# Ray's own resources, which it refuses among custom ones.
RAY_STANDARD_RESOURCES = {
    "CPU": "num_cpus",
    "GPU": "num_gpus",
    "memory": "memory",
    "object_store_memory": None,
}


def quantity_problem(name: str, value: float | None) -> str | None:
    """Ray's rules for a resource quantity, told before the run instead of in its traceback."""
    if value is None:
        return None
    if math.isinf(value):
        return f"{name}: must be a finite number, got {value}"
    if value < 0:
        return f"{name}: must not be negative, got {value}"
    if 0 < value < 1e-4:
        return f"{name}: Ray counts resources in units of 0.0001, got {value:g}"
    return None


def resource_problems(r: Resources) -> list[str]:
    asked = [(name, getattr(r, name)) for name in ("num_cpus", "num_gpus", "memory")]
    asked += [(f"custom.{k}", v) for k, v in r.custom.items()]
    out = [p for name, value in asked if (p := quantity_problem(name, value))]
    for key in r.custom:
        if key in RAY_STANDARD_RESOURCES:
            own = RAY_STANDARD_RESOURCES[key]
            out.append(
                f"custom.{key}: one of Ray's own resources, not a custom one"
                + (f" - use {own}" if own else "")
            )
    gpus = r.num_gpus
    if gpus is not None and not math.isinf(gpus) and gpus > 1 and gpus != int(gpus):
        out.append(f"num_gpus: above 1 it must be a whole number, got {r.num_gpus}")
    if r.batch_size is not None and r.batch_size < 1:
        out.append(f"batch_size: must be at least 1, got {r.batch_size}")
    in_flight = r.max_tasks_in_flight_per_actor
    if in_flight is not None and in_flight < 1:
        out.append(f"max_tasks_in_flight_per_actor: must be at least 1, got {in_flight}")
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


def unused_resources(kind: str, in_actors: bool, asked: dict[str, Any]) -> list[str]:
    """The keys of a node's own ``resources`` that its kind of stage never uses."""
    if kind in ("reader", "writer"):
        return [
            f"{key}: not used by a {kind}, whose Ray Data tasks take only num_cpus"
            for key in asked
            if key not in READ_WRITE_RESOURCES
        ]
    if in_actors:
        return []
    return [
        f"{key}: only for stages in actor pools (models, or a CPU stage given actors)"
        for key in asked
        if key in ACTOR_ONLY_RESOURCES
    ]
