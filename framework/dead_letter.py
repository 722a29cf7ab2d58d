"""Bad rows: record them, and keep the error budget.

Ray Data drops or fails a whole block when one row breaks a stage. Here a failing
batch is retried row by row (``row_isolation``), so only the bad rows leave the
pipeline; each one is written to the dead-letter output with its id, stage, error type
and message, and ``rows_read = rows_written + rows_failed`` holds for every run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs
import ray

from framework.errors import InputError, did_you_mean, unreadable_input
from framework.storage import filesystem_for, read_files, scheme_of
from framework.worker_setup import raise_unlogged

# A reader that cannot produce a row keeps it, with the reason in this column; the read
# tasks move it to the dead-letter output.
ERROR_COLUMN = "_error"
# The names ``ErrorPolicy.write`` gives record files (a stage path, then a batch key or a
# process's own name), those ``--replay`` writes and archives in: nothing else in the
# folder is taken for a record, counted as done, or cleared.
RECORD_FILE = re.compile(
    r"((reader|writer|(preprocessors|models|postprocessors)_\d+)-[\w-]+"
    r"|unreadable-inputs-\d{8}T\d+Z)\.jsonl"
)
ARCHIVE = re.compile(r"replayed-\d{8}T\d+Z")
POLICIES = ("fail", "skip")
log = logging.getLogger("infer_run.dead_letter")


def jsonl_ids(data: bytes) -> tuple[list[Any], bool]:
    """The ``id`` of each JSON line in ``data``, and whether every line is whole.

    A file cut short when a run was killed ends without a newline (or in a line that is
    not a JSON object with an id); the ids of its whole lines are still returned.
    """
    *lines, tail = data.split(b"\n")
    whole = tail == b""
    ids = []
    for line in lines:
        try:
            ids.append(json.loads(line)["id"])
        except (ValueError, KeyError, TypeError):
            whole = False
    return ids, whole


def plain_id(value: Any) -> Any:
    """A row id as a hashable, JSON-ready Python value (numpy scalars unwrapped)."""
    return value.item() if hasattr(value, "item") else value


def batch_key(stage: str, ids: Iterable[Any]) -> str:
    """A name for one stage's batch, from its row ids.

    Ray runs a batch again when its task is retried after its worker died (killed for
    memory, or by ``errors.batch_timeout_s``), and with it every batch the task had
    already finished; under the same key, those are counted and recorded once.
    """
    digest = hashlib.blake2b(stage.encode(), digest_size=10)
    for row_id in ids:
        digest.update(b"\x1f" + str(plain_id(row_id)).encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class Failure:
    row_id: Any
    stage: str
    error_type: str
    message: str
    # A record file of its own, named the same by every run: a row without an id, which
    # every --resume checks again, replaces its record instead of adding one.
    file_key: str | None = None

    def line(self) -> str:
        return f"row {self.row_id!r} failed in {self.stage}: {self.error_type}: {self.message}"

    def record(self) -> dict[str, Any]:
        return {
            "id": plain_id(self.row_id),
            "stage": self.stage,
            "error_type": self.error_type,
            "message": self.message,
        }


def _is_record(info: pafs.FileInfo) -> bool:
    return info.type == pafs.FileType.File and bool(RECORD_FILE.fullmatch(info.base_name))


def _is_archive(fs: pafs.FileSystem, info: pafs.FileInfo) -> bool:
    """A replay's archive: named as ``--replay`` names it, holding only record files."""
    if info.type != pafs.FileType.Directory or not ARCHIVE.fullmatch(info.base_name):
        return False
    return all(map(_is_record, fs.get_file_info(pafs.FileSelector(info.path, recursive=True))))


@dataclass(frozen=True)
class ErrorPolicy:
    """What a run does with a bad row; ``dead_letter`` is a directory (local or s3://)."""

    policy: str = "fail"
    dead_letter: str | None = None
    storage: dict[str, Any] | None = None
    max_count: int | None = None
    max_fraction: float | None = None
    retries: int = 0
    retry_on: tuple[str, ...] = ()
    retry_backoff_s: float = 0.5
    batch_timeout_s: float | None = None

    def retryable(self, exc: BaseException) -> bool:
        """Whether ``exc`` (or a class it derives from) is named in ``retry_on``."""
        return any(
            cls.__name__ in self.retry_on or f"{cls.__module__}.{cls.__qualname__}" in self.retry_on
            for cls in type(exc).__mro__
        )

    def write(self, failures: Sequence[Failure], key: str | None = None) -> None:
        """One JSON Lines file per batch with failures (and per failure with a ``file_key``):
        no two workers share a file.

        With a ``batch_key``, a batch run again replaces its own file instead of adding one.
        """
        if not failures or self.dead_letter is None:
            return
        fs, root = filesystem_for(self.dead_letter, self.storage)
        fs.create_dir(root, recursive=True)
        stage = failures[0].stage.replace("[", "_").replace("]", "")
        batch = key or f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        files: dict[str, list[Failure]] = {}
        for f in failures:
            files.setdefault(f.file_key or batch, []).append(f)
        for name, group in files.items():
            text = "".join(json.dumps(f.record(), default=str) + "\n" for f in group)
            with fs.open_output_stream(f"{root}/{stage}-{name}.jsonl") as out:
                out.write(text.encode())

    def _listing(self) -> tuple[pafs.FileSystem, list[pafs.FileInfo]]:
        """The folder's own entries (none if it is not there yet)."""
        fs, root = filesystem_for(str(self.dead_letter), self.storage)
        try:
            return fs, fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
        except OSError as exc:  # a file, not a folder; access denied
            raise InputError(f"errors.dead_letter: cannot list {self.dead_letter}: {exc}") from None

    def record_paths(self) -> list[str]:
        """The files ``write`` made (its folder's record files, not those of sub-folders)."""
        if self.dead_letter is None:
            return []
        _, found = self._listing()
        return sorted(info.path for info in found if _is_record(info))

    def _earlier(self) -> tuple[pafs.FileSystem, list[pafs.FileInfo]]:
        fs, found = self._listing()
        return fs, [i for i in found if _is_record(i) or _is_archive(fs, i)]

    def earlier_files(self) -> list[str]:
        """What earlier runs left in the folder: record files and replayed-* archives, by
        the names infer-run gives them; a file of the user's is never one of them."""
        if self.dead_letter is None:
            return []
        return sorted(info.path for info in self._earlier()[1])

    def clear_earlier(self) -> None:
        """Remove ``earlier_files``: only what infer-run writes there, nothing else."""
        if self.dead_letter is None:
            return
        fs, found = self._earlier()
        for info in found:
            if info.type == pafs.FileType.Directory:
                fs.delete_dir(info.path)
            else:
                fs.delete_file(info.path)

    def read_records(self, paths: list[str] | None = None) -> list[tuple[str, bytes]]:
        """``paths`` (inside the folder's store; ``record_paths`` by default), each with its
        content, read ``FILE_READS_AT_ONCE`` at a time."""
        paths = self.record_paths() if paths is None else paths
        if not paths:
            return []
        fs, _ = filesystem_for(str(self.dead_letter), self.storage)
        found = read_files(fs, paths, "errors.dead_letter", scheme_of(str(self.dead_letter)))
        return list(zip(paths, found, strict=True))

    def over_budget(self, seen: int, failed: int) -> str | None:
        """Why the run must stop now, as the line that stops it, or None while the budget
        holds."""
        if self.max_count is not None and failed > self.max_count:
            reason = f"{failed} rows failed, more than errors.max_count={self.max_count}"
        elif self.max_fraction is not None and seen and failed / seen > self.max_fraction:
            reason = (
                f"{failed} of {seen} rows failed ({failed / seen:.1%}), more than "
                f"errors.max_fraction={self.max_fraction}"
            )
        else:
            return None
        return f"error budget exceeded: {reason} - bad rows are in {self.dead_letter}"


# What the reader's records say as their stage, and its path in the run's log.
READER_PATH = "reader"
# Ids name rows in the output, the dead-letter records and --resume: a row without one
# could be neither found nor finished, so it is set aside as a bad row of the reader.
MISSING_ID = "MissingId"
MISSING_ID_MESSAGE = "the row has no id: its id column is null"


@dataclass(frozen=True)
class UnreadableInputs:
    """Where a reader sends an input it cannot read at all (a corrupt parquet footer, a
    tar shard cut short): on the driver while planning, or in a read task, so it holds
    only what pickles. Under ``fail`` it stops the run naming the input; under ``skip``
    it records the input (once, whatever retries) and the run's log lists it."""

    errors: ErrorPolicy
    log: Any = None  # the run's StageLog
    recorded: frozenset[str] = frozenset()  # kept by a replay: not recorded twice

    def __call__(self, where: str, error: Exception, detail: str = "") -> None:
        message, stop = unreadable_input(where, error, detail)
        if self.errors.policy == "fail":
            raise_unlogged(stop)
        failure = Failure(where, READER_PATH, type(error).__name__, message)
        if where not in self.recorded:
            self.errors.write([failure], batch_key(READER_PATH, [where]))
        if self.log is not None:
            ray.get(self.log.unreadable.remote(where))
        log.warning("reader: set aside unreadable input %s: %s", where, message)


def check_policy(policy: str) -> str | None:
    if policy not in POLICIES:
        return (
            f"errors.policy: expected one of {', '.join(POLICIES)}, got {policy!r}"
            f"{did_you_mean(str(policy), POLICIES)}"
        )
    return None


__all__ = [
    "ERROR_COLUMN",
    "READER_PATH",
    "ErrorPolicy",
    "Failure",
    "UnreadableInputs",
    "batch_key",
    "plain_id",
]
