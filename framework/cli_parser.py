"""The command line's parsers: argparse with our exit code and hints, and the flags of
``infer-run SPEC``, most of them spec values set from the command line."""

from __future__ import annotations

import argparse
import difflib
from typing import Any

from framework import __version__
from framework.cli_args import at_least
from framework.errors import ExitCode

OVERRIDE_HINT = "spec values are set as key=value (e.g. run.limit=10) and removed as ~key"


class Parser(argparse.ArgumentParser):
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
        if self.overrides and message.endswith("required: spec, overrides"):
            # parse_intermixed_args counts the optional overrides as required too.
            message = f"a spec file is required: {self.prog} SPEC [key=value ...]"
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
    p = Parser(
        prog="infer-run",
        overrides=True,
        description="Run a batch-inference spec on Ray Data. "
        "Other commands: 'infer-run plugins', 'infer-run datagen', 'infer-run k8s', "
        "'infer-run bench'.",
    )
    p.add_argument("spec", help="the YAML spec file")
    p.add_argument("overrides", nargs="*", help="key=value to set, ~key to delete")
    p.add_argument(
        "--validate",
        action="store_true",
        help="check the spec, its plugins and inputs, and the stages' resources against the "
        "cluster (this machine without --address); run nothing",
    )
    p.add_argument("--print-spec", action="store_true", help="print the resolved spec and exit")
    p.add_argument("--plan", action="store_true", help="print the stages and their resources")
    p.add_argument(
        "--calibrate",
        type=at_least(1),
        metavar="ROWS",
        help="with the plan, time every stage on ROWS sample rows and predict the bottleneck",
    )
    p.add_argument("--address", help="Ray cluster to join (auto, host:port); same as ray.address")
    p.add_argument(
        "--limit",
        type=at_least(1),
        metavar="N",
        help="process only N rows: the first the read tasks reach, not the first N in file "
        "order; same as run.limit",
    )
    p.add_argument("--report", help="also write the JSON run report here; same as run.report")
    p.add_argument(
        "--timeline",
        metavar="PATH",
        help="write Ray's timeline of the run's tasks here (Chrome trace; ending in /: into "
        "that folder); same as run.timeline",
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


def flag_overrides(args: argparse.Namespace) -> list[str]:
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


__all__ = ["OVERRIDE_HINT", "Parser", "flag_overrides", "run_parser"]
