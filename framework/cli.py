"""``infer-run``: run, validate, plan or print a spec; list plugins; generate data."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import ray
from omegaconf import OmegaConf

from framework.cli_parser import Parser, flag_overrides, run_parser
from framework.cluster import ray_cluster
from framework.errors import ExitCode, InferError, SpecError, Terminated, did_you_mean
from framework.failures import quiet_ray_data_stop_lines
from framework.feasibility import check_feasible
from framework.plan import build_plan
from framework.plugin_table import plugin_rows, plugin_table
from framework.plugins import load_registry
from framework.ray_session import cluster_for, data_context, init_ray, read_planning
from framework.redact import redact
from framework.run import read_task_mb, run_spec
from framework.run_files import write_extra
from framework.spec import load_spec, validate_spec
from framework.spec.places import report_file, run_files_storage, timeline_file
from framework.spec.schema import Spec
from framework.spec.validate import resolve
from framework.stopping import quiet_second_stop


def main_run(argv: Sequence[str]) -> int:
    parser = run_parser()
    if not argv:  # argparse would call the optional overrides required too
        parser.error(f"a spec file is required: infer-run SPEC [key=value ...]; {OTHER_COMMANDS}")
    if not Path(argv[0]).exists() and did_you_mean(argv[0], COMMANDS):
        parser.error(f"no spec file or command {argv[0]!r}{did_you_mean(argv[0], COMMANDS)}")
    args = parser.parse_intermixed_args(argv)
    if sum((args.resume, args.replay, args.overwrite)) > 1:
        parser.error("--resume, --replay and --overwrite exclude each other")
    # A mode that would silently replace another: --print-spec exits 0 on a spec it never
    # checked, and --calibrate runs the stages that --validate promises not to run.
    checks = {"--validate": args.validate, "--plan": args.plan}
    checks["--calibrate"] = args.calibrate is not None
    for flag, given in checks.items():
        if args.print_spec and given:
            parser.error(f"--print-spec checks nothing: leave out {flag}")
    if args.validate and args.calibrate is not None:
        parser.error(
            "--validate runs nothing and --calibrate runs every stage on a sample: give one"
        )
    problems: list[str] = []  # overrides that could not be applied, with the rest
    cfg = load_spec(args.spec, [*args.overrides, *flag_overrides(args)], pending=problems)
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
        print(f"timeline: {timeline_file(spec.run.timeline)}")
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
            timings, sample_rows = calibrate(plan, rows)
        if not timings:
            print("calibration: the spec has no stages between reader and writer to time")
            return ExitCode.OK
        prediction = predict(plan, timings)
        print(describe(timings, prediction, sample_rows))
        if spec.run.report:
            calibration = json.dumps(as_json(plan, timings, prediction, sample_rows), indent=2)
            storage = run_files_storage(spec.reader.params, spec.writer.params)
            path = report_file(spec.run.report)
            write_extra(path, calibration, "run.report", storage)
            print(f"calibration: {path}")
    finally:
        if started and ray.is_initialized():
            ray.shutdown()
    return ExitCode.OK


def main_plugins(argv: Sequence[str]) -> int:
    p = Parser(prog="infer-run plugins", description="List every registered component.")
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

    p = Parser(prog="infer-run datagen", description="Generate an ImageNet-like dataset.")
    datagen.add_arguments(p)
    return datagen.main(p.parse_args(argv))


def main_k8s(argv: Sequence[str]) -> int:
    from framework import k8s

    p = Parser(
        prog="infer-run k8s",
        overrides=True,
        description="Print a KubeRay RayJob manifest for a spec.",
    )
    k8s.add_arguments(p)
    return k8s.main(p.parse_intermixed_args(argv))


def main_bench(argv: Sequence[str]) -> int:
    from framework import bench

    p = Parser(
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
    quiet_ray_data_stop_lines()
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
