"""Replay dead-lettered rows through the spec, once what broke them is fixed.

``infer-run SPEC --replay`` moves an earlier run's dead-letter records aside, into
``<dead_letter>/replayed-<time>/``, and runs only their ids: the rows that now succeed
join the same output, the ones that fail again get new records. A whole input file that
could not be read has no row ids, so its record stays where it was; the reader checks
the file again as on every run. Moving the records first keeps every id accounted for:
a replay that is killed is finished by ``--resume`` like any other run (the next
``--replay`` says so: the manifest says a replay is running until it ends); one that
stops (a row failing under ``errors.policy: fail``, Ctrl-C) puts the records back.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from framework.dead_letter import MISSING_ID, READER_PATH, ErrorPolicy
from framework.errors import InputError
from framework.storage import filesystem_for

REPLAYED_PREFIX = "replayed-"
# Reader records of single rows (a row flagged bad, a row without an id); the reader's
# other records are of whole files. A MissingId record taken for a file stayed, and the
# row was recorded again beside it on every replay.
ROW_LEVEL = ("BadInput", MISSING_ID)


def is_whole_file(record: dict[str, Any]) -> bool:
    return record.get("stage") == "reader" and record.get("error_type") not in ROW_LEVEL


@dataclass(frozen=True)
class Replay:
    """What ``--replay`` will run: the recorded ids, and the records to move aside first."""

    ids: list[Any]
    files: list[str]
    kept: list[dict[str, Any]]  # records of whole unreadable files, which stay
    errors: ErrorPolicy

    @property
    def unreadable_inputs(self) -> frozenset[str]:
        """The input files whose records stay: a replay that finds them unreadable again
        must not record them a second time."""
        return frozenset(str(record["id"]) for record in self.kept)

    def move_records_aside(self, stamp: str) -> None:
        """Just before the rows run: a record either stays or its row is in flight.
        ``stamp`` (``new_stamp``) names the archive; ``put_records_back`` takes it too."""
        fs, root = filesystem_for(str(self.errors.dead_letter), self.errors.storage)
        archive = f"{root}/{REPLAYED_PREFIX}{stamp}"
        fs.create_dir(archive, recursive=True)
        for path in self.files:
            fs.move(path, f"{archive}/{path.rsplit('/', 1)[-1]}")
        if self.kept:
            text = "".join(json.dumps(record) + "\n" for record in self.kept)
            with fs.open_output_stream(f"{root}/unreadable-inputs-{stamp}.jsonl") as out:
                out.write(text.encode())

    def put_records_back(self, stamp: str) -> None:
        """After a replay that stopped: its rows are in the output or in flight no more,
        and a row it did not finish must keep its record (``errors.policy: fail`` writes
        none for the row that stopped it). Rows it wrote keep theirs too: the next replay
        leaves out ids already in the output. The records it wrote go: each is of a row
        whose old record comes back."""
        fs, root = filesystem_for(str(self.errors.dead_letter), self.errors.storage)
        archive = f"{root}/{REPLAYED_PREFIX}{stamp}"
        # Records the replay wrote are of rows whose old records come back: not twice. So
        # is the copy of the kept records (``unreadable-inputs-<stamp>.jsonl``, a record
        # file too): their original comes back from the archive.
        for path in self.errors.record_paths():
            fs.delete_file(path)
        for path in self.files:
            fs.move(f"{archive}/{path.rsplit('/', 1)[-1]}", path)
        fs.delete_dir(archive)


def new_stamp() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


def replay_manifest(
    expected: dict[str, Any], stamp: str, running: bool, limit: int | None = None
) -> dict[str, Any]:
    """The manifest a replay writes: its spec, and that a replay wrote it (a --resume given
    another spec is then told to use the replay's, not to start over). ``running`` until
    the replay ends with every row written or recorded again, or its records put back: a
    replay killed outright leaves it, for the next one to find, and so does one whose
    ``run.limit`` (``limit``) left rows unrun."""
    replay: dict[str, Any] = {"archive": f"{REPLAYED_PREFIX}{stamp}", "running": running}
    if limit is not None:
        replay["limit"] = limit
    return {**expected, "replay": replay}


def plan_replay(errors: ErrorPolicy, records: list[tuple[str, bytes]]) -> Replay:
    """The ids recorded in the dead-letter folder (``records``: ``errors.read_records()``);
    an ``InputError`` when there are none."""
    ids: list[Any] = []
    kept: list[dict[str, Any]] = []
    for _, data in records:
        for line in data.decode().splitlines():
            try:
                record = json.loads(line)
                row_id = record["id"]
            except (ValueError, KeyError, TypeError):
                continue  # cut short when a run was killed: that row was never skipped
            if is_whole_file(record):
                kept.append(record)
            else:
                ids.append(row_id)
    if not ids:
        raise InputError(f"--replay: no dead-lettered rows to replay in {errors.dead_letter}")
    return Replay(ids, [path for path, _ in records], kept, errors)


def rows_left(replayed: int, limit: int | None, report: dict[str, Any]) -> int:
    """How many of a --replay's ``replayed`` rows its ``run.limit`` left in neither the
    output nor the records (``report``: the run's report data). The reader sets rows aside
    again (and records them) before the limit counts rows: those are not left."""
    if limit is None:
        return 0
    read = report["rows_read"]
    set_aside = report["stages"].get(READER_PATH, {}).get("rows_in", 0)
    if read - set_aside < limit:  # the limit stopped nothing: a missing row is not left
        return 0
    return max(replayed - read, 0)


def limit_warning(limit: int, replayed: int, left: int, archive: str) -> str:
    return (
        f"--replay: run.limit={limit} leaves {left} of the {replayed} replayed rows to run; "
        f"their records are in {archive}, and a --resume with this spec runs them"
    )
