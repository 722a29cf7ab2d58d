"""Where a run reads and writes: places that clash, ``storage:`` nodes, remote outputs.

Checked before Ray starts, so a mistake costs seconds instead of a run: an output that
would delete or be read as the input, a storage value of the wrong type, a bucket the
output, the dead letters or the report copy could not be written to.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from framework.errors import SpecError
from framework.storage import (
    GLOB_CHARS,
    filesystem_for,
    is_remote,
    names_no_place,
    segments_match,
)

# The run report's name in the output folder, and in a folder run.report names.
REPORT_NAME = "_infer_run_report.json"
# The timeline's name in a folder run.timeline names.
TIMELINE_NAME = "_infer_run_timeline.json"


def _into_folder(path: str, name: str) -> str:
    """``path`` as a file to write: one ending in ``/`` names a folder (local or
    ``s3://``), and so does a bucket without its ``/`` (``s3://bucket``), which can hold
    no file of that name: the file goes into it as ``name``."""
    if is_remote(path) and "/" not in path.split("://", 1)[1].rstrip("/"):
        path = path.rstrip("/") + "/"
    return f"{path}{name}" if path.endswith("/") else path


def report_file(path: str) -> str:
    """``run.report`` as the file to write: a path ending in ``/`` names a folder (local
    or ``s3://``), which the report goes into under its own name; so does a bucket."""
    return _into_folder(path, REPORT_NAME)


def timeline_file(path: str) -> str:
    """``run.timeline`` (``--timeline``) as the file to write, as ``report_file``: a path
    ending in ``/`` is a folder, which the timeline goes into as ``TIMELINE_NAME``."""
    return _into_folder(path, TIMELINE_NAME)


def run_files_storage(
    reader: Mapping[str, Any], writer: Mapping[str, Any]
) -> Mapping[str, Any] | None:
    """The ``storage:`` of the run's own files off the output (``errors.dead_letter``,
    ``run.report``, ``run.timeline``): the writer's, else the reader's, else the environment."""
    return writer.get("storage") or reader.get("storage") or None


def blank_path_problems(node: Any, key: str) -> list[str]:
    """A ``path`` (or an item of a list of them) that names nothing: pyarrow takes an empty
    local path for the current folder, which ``--overwrite`` would empty; and an empty list."""
    paths = node.get("path") if isinstance(node, Mapping) else None
    if isinstance(paths, list) and not paths:  # the parquet reader's check() took paths[0]
        return [f"{key}: expected a path or a non-empty list of paths, got []"]
    items = [(key, paths)] if isinstance(paths, str) else []
    if isinstance(paths, list):
        items = [(f"{key}[{i}]", p) for i, p in enumerate(paths) if isinstance(p, str)]
    return [
        f"{where}: {path!r} is empty - name a folder or file (an empty path is the "
        "current folder, which --overwrite would empty)"
        for where, path in items
        if names_no_place(path)
    ]


# Names as the files of an output folder get them: Ray Data's write_* name theirs
# "<dataset uuid>_<write uuid>_<task>.<suffix>"; dead-letter records "<stage>-<...>.jsonl".
OUTPUT_FILE_STEM = f"{'0' * 32}_{'0' * 32}_000000"
RECORD_FILE_NAME = "reader-0.jsonl"


def overlap_problems(
    reader: Mapping[str, Any],
    writer: Mapping[str, Any],
    dead_letter: str | None,
    output_suffix: str = "",
) -> list[str]:
    """An output holding an input (``--overwrite`` or ``--replay`` would take it away) or
    inside an input directory or matched by an input pattern (the next read, or
    ``--resume``, takes it for input: the writer's files end in ``output_suffix``), and
    dead letters in the output's own folder (``--resume`` would take records for output)."""
    output = writer.get("path")
    places = [("writer.path", output)] if isinstance(output, str) else []
    out = []
    if dead_letter:
        places.append(("errors.dead_letter", dead_letter))
        if isinstance(output, str) and _place(dead_letter) == _place(output):
            out.append(
                f"errors.dead_letter: {dead_letter} is the output folder (writer.path): "
                "records and predictions would mix - use another folder"
            )
    return out + [
        problem
        for key, path in places
        for problem in _input_clashes(key, path, reader, output_suffix)
    ]


def _input_clashes(
    key: str, output: str, reader: Mapping[str, Any], output_suffix: str
) -> Iterator[str]:
    inputs = reader.get("path")
    out_key = _place(output)
    writes = key == "writer.path"
    file_name = OUTPUT_FILE_STEM + output_suffix if writes else RECORD_FILE_NAME
    for path in [inputs] if isinstance(inputs, str) else inputs or []:
        if not isinstance(path, str):
            continue
        parts = path.split("/")
        globbed = next((i for i, p in enumerate(parts) if any(c in p for c in GLOB_CHARS)), None)
        in_key = _place("/".join(parts[:globbed]) if globbed is not None else path)
        what = "the predictions" if writes else "the records"
        if in_key == out_key or in_key.startswith(out_key + "/"):
            loss = "--overwrite would delete" if writes else "--replay would move away"
            yield (
                f"{key}: {output} holds the input {path} (reader.path), which {loss} - "
                "write somewhere else"
            )
        elif globbed is None and out_key.startswith(in_key + "/"):
            yield (
                f"{key}: {output} is inside the input {path} (reader.path): the next read of "
                f"it, or --resume, would take {what} for input - write somewhere else"
            )
        elif globbed is not None and out_key.startswith(in_key + "/"):
            below = out_key[len(in_key) :].strip("/").split("/")
            if segments_match([*below, file_name], parts[globbed:]):
                yield (
                    f"{key}: the input pattern {path} (reader.path) matches the files "
                    f"{output} would hold: the next read, or --resume, would take {what} "
                    "for input - write somewhere else"
                )


def _place(path: str) -> str:
    """A path as a key to compare: a URI as given, a local path absolute, links resolved."""
    if is_remote(path):
        return path.rstrip("/")
    return os.path.realpath(os.path.expanduser(path.removeprefix("file://")))


def remote_output_problems(places: Mapping[str, tuple[Any, Any]]) -> list[str]:
    """Whether the bucket of each remote place a run writes answers: spec path ->
    (URI, its storage node). Local places are checked by ``checks.unwritable``."""
    out = []
    for key, (path, storage) in places.items():
        if isinstance(path, str) and is_remote(path):
            problem = _bucket_problem(path, storage)
            if problem:
                out.append(f"{key}: cannot write to {path}: {problem}")
    return out


def _bucket_problem(path: str, storage: Mapping[str, Any] | None) -> str | None:
    try:
        fs, where = filesystem_for(path, storage)
        if "//" in where or not where.split("/")[0]:
            return "a path component is empty ('//')"
        if fs.get_file_info(where.split("/")[0]).type == pafs.FileType.NotFound:
            return "the bucket does not exist"
    except SpecError:
        return None  # the storage node's own problems are reported by storage_problems
    except (OSError, pa.ArrowInvalid) as exc:
        return str(exc).splitlines()[0]
    return None


def place_problems(
    reader: Mapping[str, Any],
    writer: Mapping[str, Any],
    errors: Any,
    run: Any,
    reach: bool,
    output_suffix: str = "",
) -> list[str]:
    """Everything above for a spec's reader and writer params, ``errors`` and ``run``
    (the writer's files end in ``output_suffix``); remote buckets only if ``reach``."""
    own = run_files_storage(reader, writer)
    remote = {
        "writer.path": (writer.get("path"), writer.get("storage")),
        "errors.dead_letter": (errors.dead_letter, own),
        "run.report": (run.report, own),
        "run.timeline": (run.timeline, own),
    }
    overlaps = overlap_problems(reader, writer, errors.dead_letter, output_suffix)
    return overlaps + (remote_output_problems(remote) if reach else [])


__all__ = [
    "REPORT_NAME",
    "TIMELINE_NAME",
    "blank_path_problems",
    "overlap_problems",
    "place_problems",
    "remote_output_problems",
    "report_file",
    "run_files_storage",
    "timeline_file",
]
