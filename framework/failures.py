"""What stopped a run, told apart from our own bugs: the one line a user gets instead of
the traceback Ray Data raises (a stage's own error, a damaged input, clashing types)."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import pyarrow as pa
from ray.exceptions import RayError, RayTaskError, UserCodeException

from framework.errors import InferError, InputError, RunError, without_retry_note

if TYPE_CHECKING:
    from framework.components import Reader


def run_failure(
    exc: BaseException, make_reader: Callable[[], Reader] | None = None
) -> InferError | None:
    """The user's problem behind a failed execution, or None for a bug (kept whole);
    ``make_reader`` builds the run's reader, asked which inputs clash (``type_clash``)."""
    return user_failure(exc) or read_failure(exc) or type_clash(exc, make_reader)


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and its causes: Python's, and the ``cause`` Ray's task errors carry."""
    found: list[BaseException] = []
    waiting: list[BaseException | None] = [exc]
    while waiting:
        current = waiting.pop(0)
        if current is None or any(current is seen for seen in found):
            continue
        found.append(current)
        # Ray Data raises a task's error "from SystemException()": both links matter.
        waiting += [current.__cause__, getattr(current, "cause", None)]
    return found


READ_FRAGMENT = re.compile(r"Failed to read fragment (\S+)")


def read_failure(exc: BaseException) -> InputError | None:
    """A read task that failed outside what its reader sets aside: storage that kept
    failing, or a file that changed after the check before the run (a parquet file whose
    pages are damaged is the parquet readers' unreadable input, from the read task). The
    file is named only in the text of Ray Data's retry note."""
    for current in _chain(exc):
        cause = getattr(current, "cause", None)
        # Ray names the task only in the text: "ray::ReadFilesParquetV2->MapBatches(...)".
        task = str(current).split("\n", 1)[0]
        if "ray::Read" in task and isinstance(cause, OSError | pa.ArrowException):
            text = without_retry_note(str(cause))
            file = READ_FRAGMENT.search(str(cause))  # in the retry note
            where = f"cannot read {file.group(1)}" if file else "a read task failed"
            return InputError(
                f"reader: {where}: {type(cause).__name__}: {text.strip().splitlines()[0]} - "
                "storage kept failing, or the file changed after it was checked; the run "
                "stops whatever errors.policy says"
            )
    return None


def user_cause(exc: BaseException) -> str | None:
    """The message of the InferError a stage raised inside a Ray worker, if that failed.

    Ray re-raises a worker's exception as a class deriving from both RayTaskError and the
    original type, whose str() carries the remote traceback; the original's args do not.
    """
    error = user_failure(exc)
    return str(error) if error is not None else None


# How an InferError raised in a Ray Data map function reads in Ray's text: the error
# itself does not survive Ray Data's UserCodeException, only its traceback's last line.
REMOTE_INFER_ERROR = re.compile(
    r"^framework\.errors\.(InferError|InputError|RunError|SpecError|PluginError): (.+)$",
    re.MULTILINE,
)


def user_failure(exc: BaseException) -> InferError | None:
    """``user_cause`` as the error to raise: an input a read task could not read stays an
    ``InputError`` (exit code 5, as when the driver finds one); anything else stops the
    run (``RunError``)."""
    for current in _chain(exc):
        if isinstance(current, InferError):
            message = without_retry_note(str(current.args[0])) if current.args else ""
            message = message or type(current).__name__
            return InputError(message) if isinstance(current, InputError) else RunError(message)
    for current in _chain(exc):
        found = REMOTE_INFER_ERROR.search(str(current))
        if found:
            kind, message = found.groups()
            return InputError(message) if kind == "InputError" else RunError(message)
    return None


# A bug's error, in the text of Ray's wrapping: the first line that reads as
# ``Type: message`` and is not one of Ray's own.
REMOTE_ERROR = re.compile(r"^(?!ray\.)([A-Za-z_][\w.]*): (.*)$", re.MULTILINE)


def bug_text(exc: BaseException) -> str:
    """The report's ``failure`` for a run a bug stopped, with where its traceback is. The
    error a Ray task raised is only in the text of Ray's wrapping (its cause does not
    survive the trip), as the first ``Type: message`` line of the remote traceback."""
    line = (str(exc).strip().splitlines() or [""])[0]
    what = f"{type(exc).__name__}: {line}"
    if isinstance(exc, RayError) and (found := REMOTE_ERROR.search(str(exc))):
        what = found.group(0)
    return (
        f"{what} - a bug in infer-run or a plugin, not a problem with the data; its "
        "traceback was printed on the console"
    )


# Arrow's words for it, after "Unable to merge: ".
FIELD_CLASH = re.compile(r"Field (.+?) has incompatible types: (.+?) vs (.+)$")


def type_clash(
    exc: BaseException, make_reader: Callable[[], Reader] | None = None
) -> InputError | None:
    """Blocks whose column types Ray Data cannot merge: input files that disagree (two
    jsonl files, one with ``"x": 3``, the other ``"x": "four"``), met only once a stage
    joins their rows into one batch, where no block says which file it came from: the
    reader is asked (``Reader.type_clash``)."""
    for current in _chain(exc):
        # Arrow's own error, or Ray Data's ArrowConversionError around it (a cause does not
        # survive the trip from the worker: only the wrapper's text has it).
        arrow = isinstance(current, pa.ArrowException) or "Arrow" in type(current).__name__
        if arrow and not isinstance(current, RayTaskError) and "Unable to merge" in str(current):
            line = str(current).strip().splitlines()[0]
            line = line[line.index("Unable to merge") :]
            found = FIELD_CLASH.search(line)
            who = None
            if found and make_reader is not None:
                column, *types = found.groups()
                who = clashing_inputs(make_reader, column, (types[0], types[1]))
            who = who or "the input's files"
            return InputError(
                f"reader: {who} disagree on a column's type ({line}) - give the column one "
                "type in every file"
            )
    return None


def clashing_inputs(
    make_reader: Callable[[], Reader], column: str, types: tuple[str, str]
) -> str | None:
    """The reader's answer; None where finding out met the user's problem (storage that
    fails, input that changed), which the line without it still states."""
    try:
        return make_reader().type_clash(column, types)
    except (InferError, OSError, pa.ArrowException):
        return None


# Ray Data's loggers for the error that stopped a run. A map function's error it takes for
# the user's code and logs in one line; an error in its own code (a read, joining blocks)
# for its own bug: a banner asking for a Ray issue and two tracebacks. Both are left out
# where the CLI says it in one line (the user's problem) or prints the whole traceback (a
# plugin's bug in a map function); Ray Data's own bugs keep them.
RAY_DATA_STOP_LOGGERS = (
    "ray.data.exceptions",
    "ray.data._internal.execution.streaming_executor_state",
)

USER_CODE_ERROR_LINE = "An exception was raised from a task"


def quiet_ray_data_stop_lines() -> None:
    """Leave out Ray Data's lines on an error the CLI says itself, on this driver."""
    for name in RAY_DATA_STOP_LOGGERS:
        logging.getLogger(name).addFilter(said_by_the_cli)  # once, however often called


def said_by_the_cli(record: logging.LogRecord) -> bool:
    """False for a line on such an error (a logging filter's answer: leave it out)."""
    # Ray Data's banner line is logged in the handler of the error, without it.
    error = record.exc_info[1] if record.exc_info else sys.exc_info()[1]
    if error is None:  # its first line on a map function's error is logged without it
        return not record.getMessage().startswith(USER_CODE_ERROR_LINE)
    try:
        return not (isinstance(error, UserCodeException) or run_failure(error) is not None)
    except Exception:  # raised here, it would replace the error Ray Data is handling
        return True
