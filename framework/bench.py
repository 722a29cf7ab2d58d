"""``infer-run bench``: a spec's throughput, checked against its ``benchmark:`` block.

The expectations are ratios that hold on any machine (end-to-end rows/s over a model-only
ceiling measured in the same session; the share of wall time the models sat idle), plus
advisory ``floors`` per machine label. ``framework.testing`` runs ``Bench`` under pytest.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ray

from framework.bench_results import (
    LABEL_ENV,
    document,
    evaluate,
    failure,
    figures,
    text,
    write_json,
)
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

# The fastest of a few passes over the sample: the ceiling is an upper bound.
CEILING_PASSES = 3


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
        timed = self._figures(self.reports[-self.settings.rounds :])
        if not timed:
            raise InputError("benchmark: no round ran")
        best = max(timed, key=lambda f: f["rows_per_s"])
        checks = evaluate(self.settings, best, self.ceiling, label, strict_floors)
        return self._document(label, timed, checks)

    def failed(self, exc: BaseException, label: str | None = None) -> dict[str, Any]:
        """The document of a run stopped by ``exc``: the timed rounds done before it, no
        checks (a partial run's figures prove nothing)."""
        timed = self._figures(self.reports[self.settings.warmup_rounds :])
        return self._document(label, timed, [], failure(exc))

    def _figures(self, reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [figures(r, [m.path for m in self.spec.models]) for r in reports]

    def _document(
        self,
        label: str | None,
        timed: list[dict[str, Any]],
        checks: list[dict[str, Any]],
        error: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        settings = dataclasses.asdict(self.settings)
        return document(self.spec.source, label, settings, timed, self.ceiling, checks, error)

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
    """Measure, print, write the JSON; exit 8 with one line per missed expectation. A run
    that fails writes the JSON too (``status: failed``), then stops with its own error."""
    rounds = [] if args.rounds is None else [f"benchmark.rounds={args.rounds}"]
    started_ray = not ray.is_initialized()
    bench = None
    try:
        bench = Bench(args.spec, [*args.overrides, *rounds])
        bench.measure_ceiling()
        for _ in range(bench.settings.warmup_rounds + bench.settings.rounds):
            bench.prepare_round()
            bench.run_round()
        result = bench.result(args.machine_label, args.strict_floors)
    except BaseException as exc:
        label = args.machine_label
        if bench is None:  # the spec did not load: no settings, no figures
            failed = document(args.spec, label, None, [], None, [], failure(exc))
        else:
            failed = bench.failed(exc, label)
        print(text(failed))
        if args.json:
            try:
                write_json(args.json, failed)
            except InputError as unwritten:  # the run's own error is the one to exit with
                print(f"infer-run bench: {unwritten}", file=sys.stderr)
        raise
    finally:
        if bench is not None:
            bench.close()
        if started_ray and ray.is_initialized():
            ray.shutdown()
    print(text(result))
    if args.json:
        write_json(args.json, result)
    for line in result["failures"]:
        print(f"infer-run bench: missed: {line}", file=sys.stderr)
    return ExitCode.BENCHMARK_FAILED if result["failures"] else ExitCode.OK


__all__ = ["Bench", "add_arguments", "evaluate", "figures", "main", "text"]
