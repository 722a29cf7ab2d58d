"""One root for mistakes a user can fix, turned into one line and an exit code by the CLI.

Anything that is not an ``InferError`` is our bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from enum import IntEnum

from framework.redact import redact_text

# Ray Data appends its retry advice to the message of an exception that failed a read or
# a UDF ("\nFailed to read stream iteratively after ...").
RAY_RETRY_NOTE = "\nFailed to "


def without_retry_note(message: str) -> str:
    return message.split(RAY_RETRY_NOTE)[0]


class ExitCode(IntEnum):
    OK = 0
    INTERNAL_ERROR = 1  # a bug in infer-run or a plugin: traceback printed
    USAGE_ERROR = 2  # bad command-line flags (argparse's own code)
    SPEC_ERROR = 3
    PLUGIN_ERROR = 4
    INPUT_ERROR = 5  # missing or unreadable input, existing output
    RUN_FAILED = 6  # the run started but stopped on bad data or a failed stage
    RESOURCE_ERROR = 7  # a stage asks for resources no node of the cluster has
    BENCHMARK_FAILED = 8  # infer-run bench: an expectation of the benchmark: block was missed
    INTERRUPTED = 130  # Ctrl-C (SIGINT)
    TERMINATED = 143  # SIGTERM: 128 + 15, as a shell reports it


class Terminated(KeyboardInterrupt):
    """SIGTERM reached the driver: the run stops as it does on Ctrl-C."""


class InferError(Exception):
    """A mistake the user can fix; ``str(err)`` is the whole message."""

    exit_code: ExitCode = ExitCode.INTERNAL_ERROR

    def __str__(self) -> str:
        # Messages quote pyarrow's, which repeat an endpoint URL whole, password and all.
        return redact_text(super().__str__())


class SpecError(InferError):
    """Every problem found in a spec, one line each, so all are fixed in one go."""

    exit_code = ExitCode.SPEC_ERROR

    def __init__(self, problems: Iterable[str], source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        where = f"spec {source}" if source else "spec"
        count = len(self.problems)
        head = f"{where}: {count} problem{'s' if count != 1 else ''}"
        super().__init__("\n".join([head, *(f"  {p}" for p in self.problems)]))


class PluginError(InferError):
    """A plugin failed to import, registered a clash, or implements an unknown hook."""

    exit_code = ExitCode.PLUGIN_ERROR


class BrokenContract(PluginError):
    """A stage or reader returned what the batch contract rules out: a bug in the plugin,
    which stops the run, not a bad row to set aside (retrying it row by row would put
    every row in the dead letters)."""


class InputError(InferError):
    """Input that is missing or unreadable, or output that already exists."""

    exit_code = ExitCode.INPUT_ERROR


def unreadable_input(where: str, error: Exception, detail: str = "") -> tuple[str, InputError]:
    """An input a reader cannot read (to its end, ``detail`` says how far): the message its
    dead-letter record keeps, and the error that stops a run under ``errors.policy: fail``."""
    # Arrow's messages run over lines ("...: Invalid data\nDeserializing page header
    # failed."): a record and the line that stops a run keep them on one.
    lines = (line.strip() for line in without_retry_note(str(error)).splitlines())
    message = " ".join(filter(None, lines)) + (f" ({detail})" if detail else "")
    stop = InputError(f"reader: cannot read {where}: {type(error).__name__}: {message}")
    return message, stop


class RunError(InferError):
    """The run started and then stopped for a reason the user can act on."""

    exit_code = ExitCode.RUN_FAILED


def one_line(exc: BaseException) -> str:
    """The exception's message on one line, as every error infer-run prints is: Arrow's
    messages and some import errors (NumPy's ABI ones) run over several."""
    return " ".join(str(exc).split())


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` - did you mean 'x'?`` for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    if not close:
        return ""
    return f" - did you mean {close[0]!r}?"
