"""Replay dead-lettered rows through the spec, once what broke them is fixed.

``infer-run SPEC --replay`` moves an earlier run's dead-letter records aside, into
``<dead_letter>/replayed-<time>/``, and runs only their ids: the rows that now succeed
join the same output, the ones that fail again get new records. A whole input file that
could not be read has no row ids, so its record stays where it was; the reader checks
the file again as on every run. Moving the records first keeps every id accounted for:
a replay that is interrupted is finished by ``--resume`` like any other run.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pyarrow.fs as pafs

from framework.errors import InputError
from framework.storage import filesystem_for

REPLAYED_PREFIX = "replayed-"
ROW_LEVEL = "BadInput"  # reader records of single rows; other reader records are whole files


def _is_whole_file(record: dict[str, Any]) -> bool:
    return record.get("stage") == "reader" and record.get("error_type") != ROW_LEVEL


def take_for_replay(dead_letter: str, storage: dict[str, Any] | None) -> list[Any]:
    """The ids recorded in ``dead_letter``, whose records move into a ``replayed-`` folder."""
    fs, root = filesystem_for(dead_letter, storage)
    selector = pafs.FileSelector(root, allow_not_found=True)
    files = sorted(
        info.path
        for info in fs.get_file_info(selector)
        if info.type == pafs.FileType.File and info.path.endswith(".jsonl")
    )
    ids: list[Any] = []
    kept: list[str] = []
    for path in files:
        with fs.open_input_stream(path) as f:
            for line in f.read().decode().splitlines():
                try:
                    record = json.loads(line)
                    row_id = record["id"]
                except (ValueError, KeyError, TypeError):
                    continue  # cut short when a run was killed: that row was never skipped
                if _is_whole_file(record):
                    kept.append(line)
                else:
                    ids.append(row_id)
    if not ids:
        raise InputError(f"--replay: no dead-lettered rows to replay in {dead_letter}")
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    archive = f"{root}/{REPLAYED_PREFIX}{stamp}"
    fs.create_dir(archive, recursive=True)
    for path in files:
        fs.move(path, f"{archive}/{path.rsplit('/', 1)[-1]}")
    if kept:
        with fs.open_output_stream(f"{root}/unreadable-inputs-{stamp}.jsonl") as out:
            out.write("".join(f"{line}\n" for line in kept).encode())
    return ids
