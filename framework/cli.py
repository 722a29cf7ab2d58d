"""``infer-run``: run, validate, plan or print a spec; list plugins; generate data."""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ray
from omegaconf import OmegaConf

from framework import __version__
from framework.cluster import ray_cluster
from framework.errors import ExitCode, InferError, SpecError, Terminated, did_you_mean
from framework.feasibility import check_feasible
from framework.plan import build_plan
from framework.plugin_table import plugin_rows, plugin_table
from framework.plugins import load_registry
from framework.ray_session import cluster_for, data_context, init_ray, read_planning
from framework.redact import redact
from framework.run import read_task_mb, run_spec
from framework.run_files import write_extra
from framework.spec import load_spec, validate_spec
from framework.spec.places import run_files_storage
from framework.spec.schema import Spec
from framework.spec.validate import resolve
from framework.stopping import quiet_second_stop

OVERRIDE_HINT = "spec values are set as key=value (e.g. run.limit=10) and removed as ~key"


class _Parser(argparse.ArgumentParser):
    """argparse, exiting with our code; an unknown flag gets a "did you mean", or, where
    the command takes ``key=value`` (``overrides``), the hint at that form. No flag is
    taken from its first letters: ``--over`` ran as ``--overwrite``, which deletes output."""

    def __init__(self, *args: Any, overrides: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, allow_abbrev=False, **kwargs)
        self.overrides = overrides

    def error(self, message: str) -> None:  # type: ignore[override]
        _, _, unknown = message.partition("unrecognized arguments: ")
        if unknown:
            message += self._unknown_hint(unknown.split(" "))
        self.exit(ExitCode.USAGE_ERROR, f"{self.prog}: error: {message}\n")

    def _unknown_hint(self, unknown: list[str]) -> str:
        # Compared without the dashes every flag shares, and closer than a spec key's "did
        # you mean": else --model was close to --help, --json to --version, --resources
        # to --resume.
        names = {o.lstrip("-"): o for o in self._option_string_actions if o.startswith("--")}
        for flag in (a.partition("=")[0] for a in unknown if a.startswith("--")):
            bare = flag.lstrip("-")
            started = [name for name in names if name.startswith(bare)]
            close = difflib.get_close_matches(bare, names, n=1, cutoff=0.75)
            guess = started if len(started) == 1 else close
            if guess:
                return f" - did you mean {names[guess[0]]!r}?"
        return f" - {OVERRIDE_HINT}" if self.overrides else ""


def run_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="infer-run",
        overrides=True,
        description="Run a batch-inference spec on Ray Data. "
        "Other commands: 'infer-run plugins', 'infer-run datagen', 'infer-run k8s', "
        "'infer-run bench'.",
    )
    p.add_argument("spec", help="the YAML spec file")
    p.add_argument("overrides", nargs="*", help="key=value to set, ~key to delete")
    p.add_argument("--validate", action="store_true", help="check spec and plugins, run nothing")
    p.add_argument("--print-spec", action="store_true", help="print the resolved spec and exit")
    p.add_argument("--plan", action="store_true", help="print the stages and their resources")
    p.add_argument(
        "--calibrate",
        type=int,
        metavar="ROWS",
        help="with the plan, time every stage on ROWS sample rows and predict the bottleneck",
    )
    p.add_argument("--address", help="Ray cluster to join (auto, host:port); same as ray.address")
    p.add_argument("--limit", type=int, help="process only the first N rows; same as run.limit")
    p.add_argument("--report", help="also write the JSON run report here; same as run.report")
    p.add_argument(
        "--timeline",
        metavar="PATH",
        help="write Ray's timeline of the run's tasks here (Chrome trace); same as run.timeline",
    )
    p.add_argument(
        "--resume", action="store_true", help="finish an interrupted run, skipping committed rows"
    )
    p.add_argument(
        "--replay",
        action="store_true",
        help="run the dead-lettered rows of an earlier run again, adding to its output",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace existing output; same as writer.overwrite"
    )
    p.add_argument("--version", action="version", version=f"infer-run {__version__}")
    return p


def _flag_overrides(args: argparse.Namespace) -> list[str]:
    extra = []
    if args.address:
        extra.append(f"ray.address={args.address}")
    if args.limit is not None:
        extra.append(f"run.limit={args.limit}")
    if args.report:
        extra.append(f"run.report={args.report}")
    if args.timeline:
        extra.append(f"run.timeline={args.timeline}")
    if args.overwrite:
        extra.append("writer.overwrite=true")
    return extra


def main_run(argv: Sequence[str]) -> int:
    parser = run_parser()
    if not argv:  # argparse would call the optional overrides required too
        parser.error(f"a spec file is required: infer-run SPEC [key=value ...]; {OTHER_COMMANDS}")
    if not Path(argv[0]).exists() and did_you_mean(argv[0], COMMANDS):
        parser.error(f"no spec file or command {argv[0]!r}{did_you_mean(argv[0], COMMANDS)}")
    args = parser.parse_intermixed_args(argv)
    if sum((args.resume, args.replay, args.overwrite)) > 1:
        parser.error("--resume, --replay and --overwrite exclude each other")
    if args.calibrate is not None and args.calibrate < 1:
        parser.error("--calibrate: ROWS must be at least 1")
    problems: list[str] = []  # overrides that could not be applied, with the rest
    cfg = load_spec(args.spec, [*args.overrides, *_flag_overrides(args)], pending=problems)
    if args.print_spec:
        resolved = resolve(cfg, "", problems)
        if problems:
            raise SpecError(problems, args.spec)
        print(OmegaConf.to_yaml(OmegaConf.create(redact(resolved))), end="")
        return ExitCode.OK
    registry = load_registry()
    spec = validate_spec(cfg, registry, args.spec, problems)
    if args.calibrate is not None:
        return _calibrate(spec, args.calibrate)
    if args.plan or args.validate:
        plan = build_plan(spec, cluster_for(spec))
        if args.plan:
            print(plan.describe())
        check_feasible(plan)
        if args.validate:
            print(f"{args.spec}: valid ({stages_counted(spec)})")
        return ExitCode.OK
    report = run_spec(spec, registry, resume=args.resume, replay=args.replay)
    print(report.summary())
    if spec.run.timeline:
        print(f"timeline: {spec.run.timeline}")
    return ExitCode.OK


def _calibrate(spec: Spec, rows: int) -> int:
    """``--calibrate``: the plan, then each stage timed on the cluster and the prediction."""
    from framework.calibrate import calibrate
    from framework.prediction import as_json, describe, predict

    started = not ray.is_initialized()
    init_ray(spec)
    try:
        plan = build_plan(spec, ray_cluster(spec.ray.address or "the local Ray"))
        print(plan.describe(), flush=True)
        check_feasible(plan)  # a probe asking for what no node has would wait forever
        # The sample is read as the run would read it: same block and read-task sizes.
        with data_context(spec, plan.cluster), read_planning(plan.cluster, read_task_mb(plan)):
            timings = calibrate(plan, rows)
        if not timings:
            print("calibration: the spec has no stages between reader and writer to time")
            return ExitCode.OK
        prediction = predict(plan, timings)
        print(describe(timings, prediction))
        if spec.run.report:
            calibration = json.dumps(as_json(plan, timings, prediction), indent=2)
            storage = run_files_storage(spec.reader.params, spec.writer.params)
            write_extra(spec.run.report, calibration, "run.report", storage)
            print(f"calibration: {spec.run.report}")
    finally:
        if started and ray.is_initialized():
            ray.shutdown()
    return ExitCode.OK


def main_plugins(argv: Sequence[str]) -> int:
    p = _Parser(prog="infer-run plugins", description="List every registered component.")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = p.parse_args(argv)
    rows = plugin_rows(load_registry())
    if args.json:
        print(json.dumps(rows, indent=2))
        return ExitCode.OK
    for line in plugin_table(rows):
        print(line)
    return ExitCode.OK


def stages_counted(spec: Spec) -> str:
    """``3 stages: reader, 1 model, writer``: what ``--validate`` found valid."""
    parts = ["reader"]
    for kind, nodes in (
        ("preprocessor", spec.preprocessors),
        ("model", spec.models),
        ("postprocessor", spec.postprocessors),
    ):
        if nodes:
            parts.append(f"{len(nodes)} {kind}{'s' if len(nodes) > 1 else ''}")
    return f"{len(spec.stages) + 2} stages: {', '.join([*parts, 'writer'])}"


def main_datagen(argv: Sequence[str]) -> int:
    from framework import datagen

    p = _Parser(prog="infer-run datagen", description="Generate an ImageNet-like dataset.")
    datagen.add_arguments(p)
    return datagen.main(p.parse_args(argv))


def main_k8s(argv: Sequence[str]) -> int:
    from framework import k8s

    p = _Parser(
        prog="infer-run k8s",
        overrides=True,
        description="Print a KubeRay RayJob manifest for a spec.",
    )
    k8s.add_arguments(p)
    return k8s.main(p.parse_intermixed_args(argv))


def main_bench(argv: Sequence[str]) -> int:
    from framework import bench

    p = _Parser(
        prog="infer-run bench",
        overrides=True,
        description="Run a spec's benchmark: block and check its expectations.",
    )
    bench.add_arguments(p)
    return bench.main(p.parse_intermixed_args(argv))


OTHER_COMMANDS = "other commands: infer-run plugins | datagen | k8s | bench"
COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "bench": main_bench,
    "plugins": main_plugins,
    "datagen": main_datagen,
    "k8s": main_k8s,
}


def main(argv: Sequence[str] | None = None) -> int:
    """``argv`` None: the command line's, and the process ends when this returns."""
    process_ends = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    command = COMMANDS.get(argv[0]) if argv else None
    # Outside the handlers: what stopped the run is said before Ray shuts down.
    with quiet_second_stop(process_ends):
        try:
            return command(argv[1:]) if command else main_run(argv)
        except InferError as exc:
            print(f"infer-run: error: {exc}", file=sys.stderr)
            return exc.exit_code
        except Terminated:
            print("infer-run: terminated (SIGTERM)", file=sys.stderr)
            return ExitCode.TERMINATED
        except KeyboardInterrupt:
            print("infer-run: interrupted", file=sys.stderr)
            return ExitCode.INTERRUPTED
        except BrokenPipeError:
            # The reader of our output left (`infer-run plugins | head`): not an error.
            # Python would flush stdout again at exit and print a traceback; point it at
            # nothing.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
