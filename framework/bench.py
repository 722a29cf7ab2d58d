"""``infer-run bench``: a spec's throughput, checked against its ``benchmark:`` block.

The expectations are ratios that hold on any machine (end-to-end rows/s over a model-only
ceiling measured in the same session; the share of wall time the models sat idle), plus
advisory ``floors`` per machine label. ``framework.testing`` runs ``Bench`` under pytest.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ray

from framework.calibrate import read_sample
from framework.cli_args import at_least, writable_file
from framework.cluster import ray_cluster
from framework.components import ID_COLUMN, Batch
from framework.errors import ExitCode, InputError
from framework.feasibility import check_feasible
from framework.plan import build_plan
from framework.plugins import load_registry
from framework.ray_session import data_context, init_ray, read_planning
from framework.run import read_task_mb, run_spec
from framework.spec import load_spec, validate_spec
from framework.spec.schema import BenchmarkSection

LABEL_ENV = "INFER_MACHINE_LABEL"
# The fastest of a few passes over the sample: the ceiling is an upper bound.
CEILING_PASSES = 3
ROUND_KEYS = ("rows_per_s", "wall_time_s", "outside_model_share")


def _check(name: str, passed: bool | None, line: str, advisory: bool = False) -> dict[str, Any]:
    """One expectation; ``passed`` None: skipped. Only a FAIL fails: an advisory miss is shown."""
    status = "skip" if passed is None else "pass" if passed else "miss" if advisory else "FAIL"
    return {"name": name, "status": status, "passed": passed, "advisory": advisory, "line": line}


def figures(report: dict[str, Any], model_paths: Sequence[str]) -> dict[str, Any]:
    """What one run report says about throughput: rows/s, per-stage busy time, model idle share."""
    stages = report.get("stages", {})
    wall = float(report["wall_time_s"])
    busy = sum(stages[p]["busy_s"] for p in model_paths if p in stages)
    # Every actor of a pool is model capacity, so an idle one counts as idle model time.
    actors = sum(max(1, len(stages[p].get("workers", []))) for p in model_paths if p in stages)
    share = round(min(1.0, max(0.0, 1 - busy / (wall * actors))), 4) if actors and wall else None
    return {
        "rows_per_s": report["rows_per_s"],
        "rows_written": report["rows_written"],
        "wall_time_s": wall,
        "model_busy_s": round(busy, 4),
        "model_actors": actors,
        "outside_model_share": share,
        "stage_busy_s": {path: s["busy_s"] for path, s in stages.items()},
        "stage_rows": {path: s["rows_in"] for path, s in stages.items()},
    }


def evaluate(
    settings: BenchmarkSection,
    best: dict[str, Any],
    ceiling: dict[str, Any] | None,
    label: str | None,
    strict_floors: bool = False,
) -> list[dict[str, Any]]:
    """Each expectation of ``settings`` against the best round's ``figures``."""
    checks = []
    rows_per_s = float(best["rows_per_s"])
    ratio, share = settings.min_model_ratio, settings.max_outside_model_share
    if ratio is not None:
        name = "min_model_ratio"
        if ceiling is None or ceiling["gpu_stages"]:
            why = "the spec has no models"
            if ceiling:
                why = (
                    f"{', '.join(ceiling['gpu_stages'])} run on GPUs, the model-only figure on CPUs"
                )
            checks.append(_check(name, None, f"{name}: skipped - {why}"))
        else:
            got = rows_per_s / ceiling["rows_per_s"]
            line = (
                f"{name}: {got:.3g} (end to end {rows_per_s:.1f} rows/s / model-only "
                f"{ceiling['rows_per_s']:.1f} rows/s), expected >= {ratio:g}"
            )
            checks.append(_check(name, got >= ratio, line))
    if share is not None:
        name, got = "max_outside_model_share", best["outside_model_share"]
        if got is None:
            checks.append(_check(name, None, f"{name}: skipped - the spec has no models"))
        else:
            line = (
                f"{name}: {got:.3g} (model stages busy {best['model_busy_s']:.2f}s of "
                f"{best['wall_time_s']:.2f}s x {best['model_actors']} actor(s)), expected <= {share:g}"
            )
            checks.append(_check(name, got <= share, line))
    if settings.floors and label not in settings.floors:
        why = f"no floor for machine label {label!r}" if label else f"{LABEL_ENV} is not set"
        known = ", ".join(sorted(settings.floors))
        checks.append(_check("floors", None, f"floors: skipped - {why} (floors for: {known})"))
    elif settings.floors:
        floor = settings.floors[label]
        line = f"floors.{label}: {rows_per_s:.1f} rows/s end to end, expected >= {floor:g}"
        line += "" if strict_floors else " (advisory: fails only with strict floors)"
        checks.append(_check(f"floors.{label}", rows_per_s >= floor, line, not strict_floors))
    return checks


class Bench:
    """One spec's benchmark: the model-only ceiling, end-to-end rounds, then the checks.

    Rounds write to a temporary directory (not the spec's writer path), emptied before each
    round and removed by ``close()``: outputs never accumulate, and the spec's stay untouched.
    """

    def __init__(self, path: str | Path, overrides: Sequence[str] = ()) -> None:
        self.tmp = tempfile.mkdtemp(prefix="infer-bench-")
        try:
            self.registry = load_registry()
            # Dead letters too go under the round's output: a folder the spec names would
            # hold round 1's records, which the next round refuses to add to.
            moved = [f"writer.path={self.tmp}/output", "errors.dead_letter=null"]
            cfg = load_spec(path, [*overrides, *moved])
            self.spec = validate_spec(cfg, self.registry, str(path))
        except BaseException:
            self.close()
            raise
        self.settings = self.spec.benchmark or BenchmarkSection()
        self.ceiling: dict[str, Any] | None = None  # the model-only figures
        self.reports: list[dict[str, Any]] = []

    def measure_ceiling(self) -> dict[str, Any] | None:
        """Read and preprocess ``sample_rows`` rows on Ray, then time the models here."""
        if not self.spec.models:
            return None
        init_ray(self.spec)
        plan = build_plan(self.spec, ray_cluster(self.spec.ray.address or "the local Ray"))
        check_feasible(plan)  # a stage no node can host would wait forever in take_batch
        first = next(i for i, n in enumerate(plan.nodes) if n.stage.kind == "model")
        # Read as the rounds will (footer readers, read task size, the spec's DataContext).
        with data_context(self.spec, plan.cluster), read_planning(plan.cluster, read_task_mb(plan)):
            ready, _ = read_sample(
                plan.nodes[:first], self.settings.sample_rows, "benchmark.sample_rows"
            )
        self.ceiling = _time_models(plan.nodes[first : first + len(self.spec.models)], ready)
        return self.ceiling

    def prepare_round(self) -> None:
        """Remove the previous round's output, untimed, so the writer starts empty."""
        shutil.rmtree(Path(self.tmp) / "output", ignore_errors=True)

    def run_round(self) -> dict[str, Any]:
        self.reports.append(run_spec(self.spec, self.registry).data)
        return self.reports[-1]

    def result(self, label: str | None = None, strict_floors: bool = False) -> dict[str, Any]:
        """Figures of the best timed round (the last ``rounds`` run), the checks, the misses."""
        paths = [m.path for m in self.spec.models]
        timed = [figures(r, paths) for r in self.reports[-self.settings.rounds :]]
        if not timed:
            raise InputError("benchmark: no round ran")
        best = max(timed, key=lambda f: f["rows_per_s"])
        ceiling = self.ceiling
        usable = ceiling is not None and not ceiling["gpu_stages"]
        checks = evaluate(self.settings, best, ceiling, label, strict_floors)
        return {
            "spec": self.spec.source,
            "machine_label": label,
            "settings": dataclasses.asdict(self.settings),
            **best,
            "model_only": ceiling,
            "model_only_rows_per_s": ceiling["rows_per_s"] if ceiling else None,
            "model_ratio": round(best["rows_per_s"] / ceiling["rows_per_s"], 4) if usable else None,
            "rounds": [{k: f[k] for k in ROUND_KEYS} for f in timed],
            "checks": checks,
            "failures": [c["line"] for c in checks if c["status"] == "FAIL"],
        }

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def _time_models(models: Sequence[Any], ready: Batch) -> dict[str, Any]:
    """The model stages alone, built in this process, in batches of the first one's size,
    torch on every core: the fastest pass per model over the ready rows, summed."""
    rows = len(ready[ID_COLUMN])
    size = models[0].batch_size or rows
    inputs = [{k: v[i : i + size] for k, v in ready.items()} for i in range(0, rows, size)]
    # Built from what the run's workers get (``worker_params``), not the spec's params.
    stages = [n.stage.cls(**n.stage.cls.worker_params(n.stage.params)) for n in models]
    torch = sys.modules.get("torch")  # only if a model imported it: echo needs no torch
    previous = torch.get_num_threads() if torch else 0
    if torch:
        torch.set_num_threads(len(os.sched_getaffinity(0)))
    try:
        seconds = 0.0
        for stage in stages:
            # The warm-up pass lets torch pick kernels and fill caches, and feeds the next model.
            outputs = [stage(dict(b)) for b in inputs]
            seconds += min(_timed_pass(stage, inputs) for _ in range(CEILING_PASSES))
            inputs = outputs
        threads = torch.get_num_threads() if torch else None
    finally:
        if torch:
            torch.set_num_threads(previous)
    return {
        "rows_per_s": round(rows / max(seconds, 1e-9), 3),
        "rows": rows,
        "seconds": round(seconds, 4),
        "batch_size": size,
        "torch_threads": threads,
        # Stages the run puts on GPUs: a figure measured on this process's CPUs bounds nothing.
        "gpu_stages": [n.stage.path for n in models if n.ray_args.get("num_gpus")],
    }


def _timed_pass(stage: Any, batches: list[Batch]) -> float:
    copies = [dict(b) for b in batches]  # stages add and drop columns of the dict they get
    start = time.perf_counter()
    for batch in copies:
        stage(batch)
    return time.perf_counter() - start


def text(result: dict[str, Any]) -> str:
    """The human summary printed by ``infer-run bench``."""
    r, ceiling = result, result["model_only"]
    lines = [
        f"bench {r['spec']}: best of {len(r['rounds'])} round(s): {r['rows_per_s']:.1f} rows/s "
        f"end to end ({r['rows_written']} rows in {r['wall_time_s']:.2f}s)"
    ]
    if ceiling:
        lines.append(
            f"  model-only: {ceiling['rows_per_s']:.1f} rows/s ({ceiling['rows']} rows, "
            f"batch {ceiling['batch_size']}, {ceiling['torch_threads']} torch threads)"
        )
    lines.extend(f"  {c['status']:<4}  {c['line']}" for c in r["checks"])
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``infer-run bench SPEC [key=value ...] [--json OUT] [--rounds N] ...``."""
    parser.add_argument("spec", help="the YAML spec file")
    parser.add_argument("overrides", nargs="*", help="key=value to set, ~key to delete")
    parser.add_argument(
        "--json", type=writable_file, help="write the figures and checks as JSON here"
    )
    parser.add_argument("--rounds", type=at_least(1), help="timed runs; same as benchmark.rounds=N")
    parser.add_argument(
        "--machine-label",
        default=os.environ.get(LABEL_ENV),
        help=f"which benchmark.floors entry applies (default: ${LABEL_ENV})",
    )
    parser.add_argument("--strict-floors", action="store_true", help="a missed floor fails too")


def main(args: argparse.Namespace) -> int:
    """Measure, print, write the JSON; exit 8 with one line per missed expectation."""
    rounds = [] if args.rounds is None else [f"benchmark.rounds={args.rounds}"]
    started_ray = not ray.is_initialized()
    bench = Bench(args.spec, [*args.overrides, *rounds])
    try:
        bench.measure_ceiling()
        for _ in range(bench.settings.warmup_rounds + bench.settings.rounds):
            bench.prepare_round()
            bench.run_round()
        result = bench.result(args.machine_label, args.strict_floors)
    finally:
        bench.close()
        if started_ray and ray.is_initialized():
            ray.shutdown()
    print(text(result))
    if args.json:
        doc = json.dumps(result, indent=2)
        try:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(doc)
        except OSError as exc:
            print(doc)  # the figures took the whole benchmark to make: never lose them
            raise InputError(
                f"--json: cannot write {args.json} ({exc}); the JSON is above"
            ) from None
        print(f"json: {args.json}")
    for line in result["failures"]:
        print(f"infer-run bench: missed: {line}", file=sys.stderr)
    return ExitCode.BENCHMARK_FAILED if result["failures"] else ExitCode.OK


__all__ = ["Bench", "add_arguments", "evaluate", "figures", "main", "text"]
