"""One JSON-lines file as one Arrow table, each line that is not a JSON object flagged as a
row of its own (``_error``), so that a bad line costs only itself."""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from framework import ERROR_COLUMN


def bad_lines(lines: list[bytes]) -> list[tuple[int, str]]:
    """(line number, reason) for each of JSON-lines ``lines`` that is not one JSON object."""
    found = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            # Arrow's reader takes such bytes into a string column unchecked, and the run
            # then crashes in a later stage; json.loads would call it invalid JSON.
            line.decode("utf-8")
        except UnicodeDecodeError as exc:
            found.append((number, f"line {number} is not valid UTF-8 ({exc})"))
            continue
        try:
            parsed = json.loads(line)
        except ValueError as exc:
            found.append((number, f"line {number} is not valid JSON ({exc})"))
            continue
        if not isinstance(parsed, dict):
            found.append((number, f"line {number} is not a JSON object"))
    return found


def is_utf8(data: pa.Buffer) -> bool:
    """Whether ``data`` is UTF-8 throughout: one decode of the whole file, fast, so only a
    file that fails it is split into lines to find which."""
    try:
        str(data, "utf-8")
    except UnicodeDecodeError:
        return False
    return True


class OwnErrorKey(ValueError):
    """The data's own ``_error`` key: the framework would take its values for the rows the
    reader flags, dead-letter those rows and drop the key (and crash on one not a string)."""

    def __init__(self) -> None:
        super().__init__(
            f"a line has a key {ERROR_COLUMN!r}, the column where readers flag the rows they "
            "cannot produce - rename the key in the data"
        )


def read_lines(data: bytes | pa.Buffer, options: Any) -> pa.Table:
    import pyarrow.json as pajson

    table = pajson.read_json(pa.BufferReader(data), read_options=options)
    if ERROR_COLUMN in table.column_names:
        raise OwnErrorKey()
    return table


def with_bad_lines(
    lines: list[bytes], bad: list[tuple[int, str]], path: str, id_column: str, options: Any
) -> pa.Table:
    """The good lines' rows, then one row per bad line: null id and columns, the reason in
    ``_error``. The framework dead-letters those under ``errors.policy: skip`` and stops
    the run naming the first otherwise, so a bad line costs only itself."""
    skip = {number for number, _ in bad}
    good = b"\n".join(line for n, line in enumerate(lines, start=1) if n not in skip)
    table = with_id(read_lines(good, options) if good.strip() else pa.table({}), id_column)
    nulls = pa.table({f.name: pa.nulls(len(bad), f.type) for f in table.schema})
    reasons = [None] * table.num_rows + [f"{path}: {reason}" for _, reason in bad]
    table = pa.concat_tables([table, nulls])
    return table.append_column(ERROR_COLUMN, pa.array(reasons, pa.string()))


def with_id(table: pa.Table, id_column: str) -> pa.Table:
    """``table`` with a null ``id_column`` where none of its lines had the key: the
    framework dead-letters rows without an id (``MissingId``), but a block without the
    column stopped the run as a plugin bug (and ``id_column``'s rename crashed)."""
    if id_column in table.column_names:
        return table
    return table.append_column(id_column, pa.nulls(table.num_rows))


def file_table(buffer: pa.Buffer, where: str, id_column: str) -> pa.Table:
    """A whole JSON-lines file as one table, its bad lines flagged (``with_bad_lines``);
    ``ArrowInvalid`` for a file whose lines no one table can hold."""
    import pyarrow.json as pajson

    # One block for the whole file: no object straddles two blocks.
    options = pajson.ReadOptions(use_threads=False, block_size=min(buffer.size, 1 << 30))
    # Arrow does not check that strings are UTF-8: a file that is not goes the way of
    # one with a malformed line (a newline byte is never part of a multi-byte UTF-8
    # character, so some line of it is not UTF-8 on its own and bad_lines finds it).
    if is_utf8(buffer):
        try:
            return with_id(read_lines(buffer, options), id_column)
        except pa.ArrowInvalid:
            lines = buffer.to_pybytes().split(b"\n")
            bad = bad_lines(lines)
            if not bad:  # every line is an object: a file-wide problem (types that clash)
                raise
    else:
        lines = buffer.to_pybytes().split(b"\n")
        bad = bad_lines(lines)
    return with_bad_lines(lines, bad, where, id_column, options)
