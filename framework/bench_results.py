"""What ``infer-run bench`` makes of its rounds: figures, checks, the JSON document, the summary.

A run that fails still has a document (``status: failed`` and its ``error``), so a CI job
that keeps the JSON keeps what happened, with the figures of the rounds done before it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from framework.errors import ExitCode, InferError, InputError, Terminated
from framework.spec.schema import BenchmarkSection

LABEL_ENV = "INFER_MACHINE_LABEL"
ROUND_KEYS = ("rows_per_s", "wall_time_s", "outside_model_share")
# What ``figures`` says; null in a document whose run failed before any timed round.
FIGURE_KEYS = (
    "rows_per_s",
    "rows_written",
    "wall_time_s",
    "model_busy_s",
    "model_actors",
    "outside_model_share",
    "stage_busy_s",
    "stage_rows",
)


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


def failure(exc: BaseException) -> dict[str, Any]:
    """The error that stopped the run: its class, its message on one line, the exit code the
    command line gives it."""
    if isinstance(exc, InferError):
        code, message = exc.exit_code, str(exc)
    elif isinstance(exc, Terminated):
        code, message = ExitCode.TERMINATED, "terminated (SIGTERM)"
    elif isinstance(exc, KeyboardInterrupt):
        code, message = ExitCode.INTERRUPTED, "interrupted"
    else:  # our bug or a plugin's: the traceback is still printed
        code, message = ExitCode.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"
    # A spec error is a head line and a line per problem: one line keeps all of them.
    lines = (line.strip() for line in message.splitlines())
    return {
        "type": type(exc).__name__,
        "message": "; ".join(filter(None, lines)),
        "exit_code": int(code),
    }


def document(
    spec: str,
    label: str | None,
    settings: dict[str, Any] | None,
    timed: list[dict[str, Any]],
    ceiling: dict[str, Any] | None,
    checks: list[dict[str, Any]],
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON of ``--json``: the best of the ``timed`` rounds' figures, and how it ended."""
    best = max(timed, key=lambda f: f["rows_per_s"]) if timed else dict.fromkeys(FIGURE_KEYS)
    usable = ceiling is not None and not ceiling["gpu_stages"] and bool(timed)
    # A failed run's error is its failure: a reader of ``failures`` alone never sees a pass.
    failures = [error["message"]] if error else [c["line"] for c in checks if c["status"] == "FAIL"]
    return {
        "spec": spec,
        "status": "failed" if error else "missed" if failures else "passed",
        "error": error,
        "machine_label": label,
        "settings": settings,
        **best,
        "model_only": ceiling,
        "model_only_rows_per_s": ceiling["rows_per_s"] if ceiling else None,
        "model_ratio": round(best["rows_per_s"] / ceiling["rows_per_s"], 4) if usable else None,
        "rounds": [{k: f[k] for k in ROUND_KEYS} for f in timed],
        "checks": checks,
        "failures": failures,
    }


def write_json(path: str, result: dict[str, Any]) -> None:
    doc = json.dumps(result, indent=2)
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(doc)
    except OSError as exc:
        print(doc)  # the figures took the whole benchmark to make: never lose them
        raise InputError(f"--json: cannot write {path} ({exc}); the JSON is above") from None
    print(f"json: {path}")


def text(result: dict[str, Any]) -> str:
    """The human summary printed by ``infer-run bench``."""
    r, ceiling = result, result["model_only"]
    best = ""
    if r["rounds"]:  # none when the run failed before its first timed round ended
        best = (
            f"{r['rows_per_s']:.1f} rows/s end to end ({r['rows_written']} rows in "
            f"{r['wall_time_s']:.2f}s)"
        )
    if r["error"]:
        lines = [
            f"bench {r['spec']}: failed after {len(r['rounds'])} timed round(s), exit code "
            f"{r['error']['exit_code']}" + (f"; best before it: {best}" if best else "")
        ]
    else:
        lines = [f"bench {r['spec']}: best of {len(r['rounds'])} round(s): {best}"]
    if ceiling:
        lines.append(
            f"  model-only: {ceiling['rows_per_s']:.1f} rows/s ({ceiling['rows']} rows, "
            f"batch {ceiling['batch_size']}, {ceiling['torch_threads']} torch threads)"
        )
    lines.extend(f"  {c['status']:<4}  {c['line']}" for c in r["checks"])
    return "\n".join(lines)
