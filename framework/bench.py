"""``infer-run bench``: a spec's throughput, checked against its ``benchmark:`` block.

The expectations are ratios that hold on any machine: the end-to-end rows/s against a
model-only ceiling measured in the same session, and the share of the wall time the
model stages sat idle. Absolute ``floors`` per machine label are advisory. The pytest
plugin in ``framework.testing`` runs the same ``Bench`` under pytest-benchmark.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from framework.components import Batch
from framework.errors import ExitCode, InputError
from framework.registry import Registry
from framework.spec.schema import BenchmarkSection

MACHINE_LABEL_ENV = "INFER_MACHINE_LABEL"
# The fastest of a few passes over the sample: the ceiling is an upper bound.
CEILING_PASSES = 3


@dataclasses.dataclass(frozen=True)
class ModelOnly:
    """The model stages alone, in this process, on batches the CPU stages already made."""

    rows_per_s: float
    rows: int
    seconds: float  # the fastest pass through every model stage
    batch_size: int
    torch_threads: int | None
    gpu_stages: tuple[str, ...]  # stages the run puts on GPUs: this CPU figure is no ceiling


@dataclasses.dataclass(frozen=True)
class Check:
    """One expectation: ``passed`` None when skipped; an advisory miss fails nothing."""

    name: str
    passed: bool | None
    line: str
    advisory: bool = False

    @property
    def fails(self) -> bool:
        return self.passed is False and not self.advisory

    @property
    def status(self) -> str:
        if self.passed is None:
            return "skip"
        return "pass" if self.passed else ("miss" if self.advisory else "FAIL")


def figures(report: dict[str, Any], model_paths: Sequence[str]) -> dict[str, Any]:
    """What one run report says about throughput: rows/s, per-stage busy time, model idle share."""
    stages = report.get("stages", {})
    wall = float(report["wall_time_s"])
    busy = sum(stages[p]["busy_s"] for p in model_paths if p in stages)
    # An actor pool's idle actors count as idle model time; a stage that logged no
    # worker ran at most one.
    actors = sum(max(1, len(stages[p].get("workers", []))) for p in model_paths if p in stages)
    share = None
    if actors and wall > 0:
        share = round(min(1.0, max(0.0, 1.0 - busy / (wall * actors))), 4)
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
    ceiling: ModelOnly | None,
    label: str | None,
    strict_floors: bool = False,
) -> list[Check]:
    """Each expectation of ``settings`` against the best round's ``figures``."""
    checks = []
    rows_per_s = float(best["rows_per_s"])
    if settings.min_model_ratio is not None:
        name, limit = "min_model_ratio", settings.min_model_ratio
        if ceiling is None:
            checks.append(Check(name, None, f"{name}: skipped - the spec has no models"))
        elif ceiling.gpu_stages:
            where = ", ".join(ceiling.gpu_stages)
            checks.append(
                Check(
                    name,
                    None,
                    f"{name}: skipped - {where} run on GPUs, the model-only figure is measured "
                    "on this process's CPU cores; use floors for GPU specs",
                )
            )
        else:
            ratio = rows_per_s / ceiling.rows_per_s if ceiling.rows_per_s > 0 else 0.0
            line = (
                f"{name}: {ratio:.3g} (end to end {rows_per_s:.1f} rows/s / model-only "
                f"{ceiling.rows_per_s:.1f} rows/s), expected >= {limit:g}"
            )
            checks.append(Check(name, ratio >= limit, line))
    if settings.max_outside_model_share is not None:
        name, limit = "max_outside_model_share", settings.max_outside_model_share
        share = best["outside_model_share"]
        if share is None:
            checks.append(Check(name, None, f"{name}: skipped - the spec has no models"))
        else:
            line = (
                f"{name}: {share:.3g} (model stages busy {best['model_busy_s']:.2f}s of "
                f"{best['wall_time_s']:.2f}s x {best['model_actors']} actor(s)), "
                f"expected <= {limit:g}"
            )
            checks.append(Check(name, share <= limit, line))
    if settings.floors:
        known = ", ".join(sorted(settings.floors))
        if label is None or label not in settings.floors:
            why = (
                f"{MACHINE_LABEL_ENV} is not set"
                if label is None
                else f"no floor for machine label {label!r}"
            )
            checks.append(Check("floors", None, f"floors: skipped - {why} (floors for: {known})"))
        else:
            floor = settings.floors[label]
            line = f"floors.{label}: {rows_per_s:.1f} rows/s end to end, expected >= {floor:g}" + (
                "" if strict_floors else " (advisory: fails only with strict floors)"
            )
            checks.append(Check(f"floors.{label}", rows_per_s >= floor, line, not strict_floors))
    return checks


class Bench:
    """One spec's benchmark: the model-only ceiling, end-to-end rounds, then the checks.

    Each round writes to a fresh temporary directory, removed before the next round and
    by ``close()``, so nothing accumulates; ``keep_output`` writes to the spec's own
    writer path instead, replaced each round (the last round's output stays).
    """

    def __init__(
        self,
        path: str | Path,
        overrides: Sequence[str] = (),
        keep_output: bool = False,
        registry: Registry | None = None,
    ) -> None:
        from framework.plugins import load_registry
        from framework.spec import load_spec, validate_spec

        self.tmp = None if keep_output else tempfile.mkdtemp(prefix="infer-bench-")
        placed = [f"writer.path={self.tmp}/output"] if self.tmp else ["writer.overwrite=true"]
        self.registry = registry or load_registry()
        cfg = load_spec(path, [*overrides, *placed])
        self.spec = validate_spec(cfg, self.registry, str(path))
        self.settings = self.spec.benchmark or BenchmarkSection()
        self.model_paths = [m.path for m in self.spec.models]
        self.ceiling: ModelOnly | None = None
        self.reports: list[dict[str, Any]] = []

    def measure_ceiling(self) -> ModelOnly | None:
        """Read and preprocess ``sample_rows`` rows on Ray, then time the models here."""
        from framework.cluster import ray_cluster
        from framework.feasibility import check_feasible
        from framework.plan import MapNode, build_plan
        from framework.run import init_ray

        if not self.spec.models:
            return None
        init_ray(self.spec)
        plan = build_plan(self.spec, ray_cluster(self.spec.ray.address or "the local Ray"))
        check_feasible(plan)  # a stage no node can host would wait forever in take_batch
        first = next(i for i, n in enumerate(plan.nodes) if n.stage.kind == "model")
        models = [n for n in plan.nodes if isinstance(n, MapNode) and n.stage.kind == "model"]
        ready = _ready_rows(plan.nodes[:first], self.settings.sample_rows)
        rows = len(ready["id"])
        batch_size = models[0].batch_size or rows
        batches = [
            {k: v[i : i + batch_size] for k, v in ready.items()} for i in range(0, rows, batch_size)
        ]
        stages = [n.stage.cls(**n.stage.params) for n in models]
        torch = sys.modules.get("torch")  # set only if a model imported it
        previous = torch.get_num_threads() if torch else None
        if torch:
            torch.set_num_threads(len(os.sched_getaffinity(0)))
        try:
            seconds = _time_chain(stages, batches)
            threads = torch.get_num_threads() if torch else None
        finally:
            if torch and previous:
                torch.set_num_threads(previous)
        del stages
        gpus = tuple(n.stage.path for n in models if n.ray_args.get("num_gpus"))
        self.ceiling = ModelOnly(
            rows_per_s=round(rows / seconds, 3) if seconds > 0 else math.inf,
            rows=rows,
            seconds=round(seconds, 4),
            batch_size=batch_size,
            torch_threads=threads,
            gpu_stages=gpus,
        )
        return self.ceiling

    def prepare_round(self) -> None:
        """Remove the previous round's output, untimed, so the writer starts empty."""
        if self.tmp:
            shutil.rmtree(Path(self.tmp) / "output", ignore_errors=True)

    def run_round(self) -> dict[str, Any]:
        from framework.run import run_spec

        report = run_spec(self.spec, self.registry).data
        self.reports.append(report)
        return report

    def result(self, label: str | None = None, strict_floors: bool = False) -> dict[str, Any]:
        """Figures, checks and failures of the timed rounds (the last ``rounds`` run)."""
        timed = [figures(r, self.model_paths) for r in self.reports[-self.settings.rounds :]]
        if not timed:
            raise InputError("benchmark: no round ran")
        best = max(timed, key=lambda f: f["rows_per_s"])
        ceiling = self.ceiling
        ratio = None
        if ceiling is not None and ceiling.rows_per_s > 0 and not ceiling.gpu_stages:
            ratio = round(best["rows_per_s"] / ceiling.rows_per_s, 4)
        checks = evaluate(self.settings, best, ceiling, label, strict_floors)
        return {
            "spec": self.spec.source,
            "machine_label": label,
            "settings": dataclasses.asdict(self.settings),
            **best,
            "model_only": dataclasses.asdict(ceiling) if ceiling else None,
            "model_only_rows_per_s": ceiling.rows_per_s if ceiling else None,
            "model_ratio": ratio,
            "rounds": [
                {k: f[k] for k in ("rows_per_s", "wall_time_s", "outside_model_share")}
                for f in timed
            ],
            "checks": [{"status": c.status, **dataclasses.asdict(c)} for c in checks],
            "failures": [c.line for c in checks if c.fails],
        }

    def close(self) -> None:
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)


def _ready_rows(head: Sequence[Any], rows: int) -> Batch:
    """The reader and the stages before the first model, run by Ray Data on ``rows`` rows."""
    from framework.compile import EMITTERS, RunContext
    from framework.dead_letter import split_flagged

    read = head[0]
    limit = min(rows, read.limit) if read.limit else rows
    dataset: Any = None
    for node in (dataclasses.replace(read, limit=limit), *head[1:]):
        dataset = EMITTERS[type(node)](node, dataset, RunContext())
    try:
        batch = dataset.take_batch(limit, batch_format="numpy")
    except ValueError:  # Ray Data's answer to an empty dataset
        raise InputError("benchmark.sample_rows: the reader produced no rows to time") from None
    batch, _ = split_flagged(batch, "reader")  # rows a reader flagged never reach a model
    if not len(batch.get("id", ())):
        raise InputError("benchmark.sample_rows: every sampled row was flagged by the reader")
    return batch


def _time_chain(stages: Sequence[Any], batches: list[Batch]) -> float:
    """Seconds of the fastest pass per model, summed; each model is fed its predecessor's output."""
    total = 0.0
    inputs = batches
    for stage in stages:
        # The warm-up pass lets torch pick kernels and fill caches; it also feeds the next model.
        outputs = [stage(dict(b)) for b in inputs]
        total += min(_timed_pass(stage, inputs) for _ in range(CEILING_PASSES))
        inputs = outputs
    return total


def _timed_pass(stage: Any, batches: list[Batch]) -> float:
    copies = [dict(b) for b in batches]  # stages add and drop columns of the dict they get
    start = time.perf_counter()
    for batch in copies:
        stage(batch)
    return time.perf_counter() - start


def text(result: dict[str, Any]) -> str:
    """The human summary printed by ``infer-run bench``."""
    rounds = len(result["rounds"])
    lines = [
        f"bench {result['spec']}: best of {rounds} round{'s' if rounds != 1 else ''}: "
        f"{result['rows_per_s']:.1f} rows/s end to end "
        f"({result['rows_written']} rows in {result['wall_time_s']:.2f}s)"
    ]
    ceiling = result["model_only"]
    if ceiling:
        lines.append(
            f"  model-only: {ceiling['rows_per_s']:.1f} rows/s ({ceiling['rows']} rows, "
            f"batch {ceiling['batch_size']}, {ceiling['torch_threads']} torch threads)"
        )
    if result["model_ratio"] is not None:
        lines.append(f"  model ratio: {result['model_ratio']:.3g}")
    if result["outside_model_share"] is not None:
        lines.append(f"  outside-model share: {result['outside_model_share']:.3g}")
    lines.extend(f"  {c['status']:<4}  {c['line']}" for c in result["checks"])
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``infer-run bench SPEC [key=value ...] [--json OUT] [--rounds N] ...``."""
    parser.add_argument("spec", help="the YAML spec file")
    parser.add_argument("overrides", nargs="*", help="key=value to set, ~key to delete")
    parser.add_argument("--json", help="write the figures and checks as JSON here")
    parser.add_argument("--rounds", type=int, help="timed runs; same as benchmark.rounds=N")
    parser.add_argument(
        "--warmup-rounds", type=int, help="untimed runs first; same as benchmark.warmup_rounds=N"
    )
    parser.add_argument(
        "--machine-label",
        default=os.environ.get(MACHINE_LABEL_ENV),
        help=f"which benchmark.floors entry applies (default: ${MACHINE_LABEL_ENV})",
    )
    parser.add_argument(
        "--strict-floors", action="store_true", help="a missed floor fails the bench too"
    )
    parser.add_argument(
        "--keep-output",
        action="store_true",
        help="write to the spec's writer path (replaced each round) instead of a temp dir",
    )


def main(args: argparse.Namespace) -> int:
    """Measure, print, write the JSON; exit 8 with one line per missed expectation."""
    import ray

    overrides = list(args.overrides)
    if args.rounds is not None:
        overrides.append(f"benchmark.rounds={args.rounds}")
    if args.warmup_rounds is not None:
        overrides.append(f"benchmark.warmup_rounds={args.warmup_rounds}")
    started_ray = not ray.is_initialized()
    bench = Bench(args.spec, overrides, keep_output=args.keep_output)
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
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
        print(f"json: {out}")
    for line in result["failures"]:
        print(f"infer-run bench: missed: {line}", file=sys.stderr)
    return ExitCode.BENCHMARK_FAILED if result["failures"] else ExitCode.OK


__all__ = ["Bench", "Check", "ModelOnly", "add_arguments", "evaluate", "figures", "main", "text"]
