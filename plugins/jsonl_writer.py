"""The JSON Lines writer: one JSON object per line, every float written in full."""

from __future__ import annotations

import datetime
import decimal
import json
import math
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import ray.data
from ray.data.block import BlockAccessor
from ray.data.datasource import BlockBasedFileDatasink

from framework import ID_COLUMN, RunError, filesystem_for, jsonl_ids
from plugins.counts import RowsPerFileWriter
from plugins.id_types import JSON_IDS, check_id_type
from plugins.output_files import not_written_here

EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
MILLISECOND = datetime.timedelta(milliseconds=1)


def plain(value: Any) -> Any:
    """``value`` (a cell of ``Table.to_pylist``, or part of one) as Python's json writes
    it, in the form pandas' ``to_json`` gave it before: NaN and infinities null (JSON has
    neither), arrays lists, times epoch milliseconds, a time of day ISO, decimals and
    bytes strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):  # a tuple: a map column's (key, value) pair
        return [plain(item) for item in value]
    if isinstance(value, np.ndarray | np.generic):  # tensor columns' cells
        return plain(value.tolist())
    if isinstance(value, datetime.datetime):  # naive: UTC, as pandas takes it
        aware = value if value.tzinfo else value.replace(tzinfo=datetime.timezone.utc)
        return (aware - EPOCH) // MILLISECOND
    if isinstance(value, datetime.date):
        return plain(datetime.datetime.combine(value, datetime.time()))
    if isinstance(value, datetime.timedelta):
        return value // MILLISECOND
    if isinstance(value, datetime.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)  # a string, as pandas wrote it: a float would round it
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value


def plain_column(column: pa.ChunkedArray) -> list[Any]:
    """The cells of ``column`` as ``plain`` makes them; the common column types skip its
    per-cell walk."""
    kind = column.type
    if pa.types.is_floating(kind):
        return pc.if_else(pc.is_finite(column), column, None).to_pylist()
    if pa.types.is_integer(kind) or pa.types.is_boolean(kind) or pa.types.is_null(kind):
        return column.to_pylist()
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return column.to_pylist()
    return [plain(value) for value in column.to_pylist()]


def json_lines(table: pa.Table) -> bytes:
    """One JSON object per row of ``table``, each line ending in a newline.

    Python's json writes a float as its ``repr``, the shortest text that reads back as
    the same float; pandas' ``to_json`` kept 10 significant digits, so a float id written
    by it was not found by ``--resume`` and its row was written again.
    """
    check_id_type(table, JSON_IDS, "a JSON-lines file")
    check_finite_ids(table)
    names = table.column_names
    try:
        columns = [plain_column(column) for column in table.columns]
    except UnicodeDecodeError:
        raise RunError(not_text(table)) from None
    # allow_nan=False: a non-finite float that slipped past plain() fails the write
    # instead of writing a NaN no JSON reader takes.
    encode = json.JSONEncoder(allow_nan=False, separators=(",", ":")).encode
    return "".join(
        encode(dict(zip(names, row, strict=True))) + "\n" for row in zip(*columns, strict=True)
    ).encode()


def check_finite_ids(table: pa.Table) -> None:
    """Stop the run at an infinite float id: JSON has no infinity, and written as null it
    is found by no --resume, which wrote its row again every time."""
    if ID_COLUMN not in table.column_names:
        return
    ids = table[ID_COLUMN]
    if pa.types.is_dictionary(ids.type):
        ids = ids.cast(ids.type.value_type)
    if not pa.types.is_floating(ids.type):
        return
    bad = pc.invert(pc.fill_null(pc.is_finite(ids), True))
    if pc.any(bad).as_py():
        raise RunError(
            f"writer: row id {pc.filter(ids, bad)[0].as_py()} is not a finite number, which a "
            "JSON-lines file cannot hold (it would be written as null, and --resume and "
            "--replay would miss or repeat the row) - give the rows string or integer ids, "
            "or write parquet"
        )


def not_text(table: pa.Table) -> str:
    """The line that stops a run at a bytes cell that is not UTF-8 text (an image kept with
    its predictions): JSON has no bytes, and the writer must not guess an encoding."""
    ids = table[ID_COLUMN].to_pylist() if ID_COLUMN in table.column_names else None
    for name in table.column_names:
        for row, value in enumerate(table[name].to_pylist()):
            try:
                plain(value)
            except UnicodeDecodeError:
                where = f"row {ids[row]!r}" if ids else f"row {row} of a block"
                return (
                    f"writer: column {name!r} holds bytes that are not UTF-8 text ({where}), "
                    "and JSON has no bytes - write parquet (or csv, which writes bytes as "
                    f"base64), or drop the column first (select_columns with drop: [{name}])"
                )
    return "writer: a column holds bytes that are not UTF-8 text, and JSON has no bytes"


def has_id(line: bytes) -> bool:
    try:
        record = json.loads(line)
    except ValueError:  # UnicodeDecodeError included
        return False
    return isinstance(record, dict) and ID_COLUMN in record


def cut_short(data: bytes) -> bool:
    """Whether ``data`` is the start of a file this writer writes: whole lines that are
    objects with an id, then a line cut before its newline (a kill cuts only the end)."""
    *lines, tail = data.split(b"\n")
    if not all(has_id(line) for line in lines):
        return False
    try:
        json.loads(tail)
    except ValueError:
        return True  # cut mid-line
    return has_id(tail)  # cut just before its newline: a line of ours, whole


class JsonLinesDatasink(BlockBasedFileDatasink):
    """Ray Data's block-per-file writer, each block written by ``json_lines``."""

    def write_block_to_file(self, block: BlockAccessor, file: pa.NativeFile) -> None:
        file.write(json_lines(block.to_arrow()))


class JsonlWriter(RowsPerFileWriter):
    """A directory of ``.json`` files, one JSON object per line; arrays become lists and
    floats are written in full, so ``--resume`` finds float ids again."""

    output_suffix = ".json"

    def file_ids(self, fs: pafs.FileSystem, path: str) -> list | None:
        with fs.open_input_stream(path) as f:
            data = f.read()
        found, whole = jsonl_ids(data)
        if whole and found:
            return found
        if not data or cut_short(data):
            return None  # cut mid-line, or before a byte
        line = next(i for i, text in enumerate(data.split(b"\n"), 1) if not has_id(text))
        why = f"line {line} is not a JSON object with an {ID_COLUMN!r}"
        raise not_written_here(self, "jsonl", path, why)

    def write(self, dataset: ray.data.Dataset) -> None:
        fs, where = filesystem_for(self.path, self.storage)
        # Not dataset.write_json: it writes through pandas, which rounds floats.
        sink = JsonLinesDatasink(
            where, filesystem=fs, file_format="json", min_rows_per_file=self.rows_per_file
        )
        dataset.write_datasink(sink, **self.write_args)
