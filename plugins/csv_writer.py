"""CSV writer, local or ``s3://``.

CSV has no arrays, so each column is turned into plain cells by its type alone, and
files written from blocks of the same schema share one header:

* fixed-shape tensors (a stage's ``[N, k]`` top-k ids or scores, stored as Ray's tensor
  type or Arrow's ``fixed_shape_tensor``) become one column per element, ``top_ids_0``,
  ``top_ids_1``, ... (``name_i_j`` for more dimensions, in C order), so spreadsheets
  and ``pandas.read_csv`` see numbers;
* lists, variable-shaped tensors, structs, maps and Python objects (a list of label
  strings) become one JSON text per row, e.g. ``["tabby", "tiger cat"]``; a null
  stays an empty cell, an empty list is ``[]``;
* binary values (encoded images) become base64 text, since raw bytes are not text;
* other columns are written as pyarrow formats them; ``id`` always comes first.

Floats keep their shortest round-trip form: a float32 ``0.1`` is written ``0.1``,
in JSON too, not ``0.10000000149011612``.

Ray types each block on its own: a stage returning an object array of ndarrays whose
shapes happen to agree within one block gets a fixed-shape tensor there, and that file
would be flattened while others hold JSON. Return ragged values as Python lists (Ray
keeps those a list type) or as one fixed-shape array to keep every header the same.
"""

from __future__ import annotations

import base64
import csv
import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import ray.data
from ray.data.extensions import (
    ArrowPythonObjectType,
    ArrowTensorType,
    ArrowTensorTypeV2,
    ArrowVariableShapedTensorType,
)

from framework import ID_COLUMN, RunError, filesystem_for, hookimpl
from plugins.counts import RowsPerFileWriter
from plugins.id_types import CSV_IDS, check_id_type
from plugins.output_files import not_written_here

FIXED_TENSOR_TYPES = (ArrowTensorType, ArrowTensorTypeV2, pa.FixedShapeTensorType)
# Arrow types whose values have parts; the CSV writer cannot format them.
NESTED_TYPE_CHECKS = (
    pa.types.is_list,
    pa.types.is_large_list,
    pa.types.is_fixed_size_list,
    pa.types.is_list_view,
    pa.types.is_large_list_view,
    pa.types.is_struct,
    pa.types.is_map,
)
BINARY_TYPE_CHECKS = (
    pa.types.is_binary,
    pa.types.is_large_binary,
    pa.types.is_fixed_size_binary,
    pa.types.is_binary_view,
)


class CsvWriter(RowsPerFileWriter):
    """A directory of ``.csv`` files with a header each; arrays are flattened (module doc)."""

    output_suffix = ".csv"

    def file_ids(self, fs: pafs.FileSystem, path: str) -> list | None:
        with fs.open_input_stream(path) as f:
            # Written as UTF-8, so only a cut inside a character (at the end) fails to
            # decode: replaced, the text then ends mid-row, as the cut file does.
            text = f.read().decode(errors="replace")
        ids = _csv_ids(text)
        first = _first_cell(text)
        if ids is None and first is not None and first != ID_COLUMN:
            why = f"its first column is {first!r}, not {ID_COLUMN!r}"
            raise not_written_here(self, "csv", path, why)
        return ids

    def write(self, dataset: ray.data.Dataset) -> None:
        fs, where = filesystem_for(self.path, self.storage)
        flat = dataset.map_batches(
            csv_table,
            batch_format="pyarrow",
            udf_modifying_row_count=False,
            **self.map_args,
        )
        flat.write_csv(
            where, filesystem=fs, min_rows_per_file=self.rows_per_file, **self.write_args
        )


def _csv_ids(text: str) -> list | None:
    """The ids of a written file (its first column), or None if it ends mid-row.

    Arrow quotes every string cell and no number, so a record whose first line starts
    with a quote has a string id, and any other a number or a boolean. A file cut just
    after a newline inside a quoted cell ends in a newline too: ``strict`` makes its open
    quote an error, and a row with fewer cells than the header is cut short as well.
    """
    if not text.endswith("\n"):
        return None
    lines = text.splitlines(keepends=True)
    consumed = 0

    def feed() -> Iterator[str]:
        nonlocal consumed
        while consumed < len(lines):
            consumed += 1
            yield lines[consumed - 1]

    reader = csv.reader(feed(), strict=True)
    try:
        header = next(reader, None)
        if not header or header[0] != ID_COLUMN:
            return None
        ids: list = []
        while True:
            first_line = consumed
            row = next(reader, None)
            if row is None:
                return ids
            if len(row) != len(header):
                return None
            quoted = lines[first_line].startswith('"')
            ids.append(row[0] if quoted else _number(row[0]))
    except (csv.Error, ValueError, IndexError):
        return None


def _first_cell(text: str) -> str | None:
    """The header's first cell, or None while the header is cut short (no newline yet):
    a whole header is what tells a file of ours, cut anywhere after it, from another."""
    header, newline, _ = text.partition("\n")
    if not newline:
        return None
    try:
        return next(csv.reader([header]), [""])[0]
    except (csv.Error, IndexError):
        return ""


def _number(text: str) -> int | float | bool:
    if text in ("true", "false"):  # Arrow's unquoted booleans
        return text == "true"
    try:
        return int(text)
    except ValueError:
        return float(text)


def csv_table(table: pa.Table) -> pa.Table:
    """``table`` with every column turned into CSV-ready ones, ``id`` first."""
    check_id_type(table, CSV_IDS, "a CSV file")
    names = table.column_names
    if ID_COLUMN in names:
        names = [ID_COLUMN, *(n for n in names if n != ID_COLUMN)]
    out_names: list[str] = []
    out_columns: list[pa.Array | pa.ChunkedArray] = []
    for name in names:
        for out_name, column in _csv_columns(name, table.column(name)):
            out_names.append(out_name)
            out_columns.append(column)
    clashes = sorted(n for n, count in Counter(out_names).items() if count > 1)
    if clashes:
        raise RunError(
            f"csv writer: flattening arrays gives column names that already exist: {clashes}"
            " - rename those columns first"
        )
    return pa.Table.from_arrays(out_columns, names=out_names)


def _csv_columns(
    name: str, column: pa.ChunkedArray
) -> list[tuple[str, pa.Array | pa.ChunkedArray]]:
    """The CSV column(s) one dataset column becomes, with their names."""
    kind = column.type
    if isinstance(kind, FIXED_TENSOR_TYPES):
        return _element_columns(name, _fixed_tensor_values(column))
    if isinstance(kind, ArrowVariableShapedTensorType | ArrowPythonObjectType):
        # Ray's own arrays know how to turn into ndarrays and Python objects.
        return [(name, _json_cells(column.combine_chunks().to_numpy()))]
    if isinstance(kind, pa.ExtensionType):
        return _csv_columns(name, _storage(column))
    if pa.types.is_dictionary(kind):
        return _csv_columns(name, column.cast(kind.value_type))
    if any(check(kind) for check in NESTED_TYPE_CHECKS):
        return [(name, _json_cells(_shortest_floats(column).to_pylist()))]
    if any(check(kind) for check in BINARY_TYPE_CHECKS):
        return [(name, pa.array([_base64(v) for v in column.to_pylist()], pa.string()))]
    return [(name, column)]


def _fixed_tensor_values(column: pa.ChunkedArray) -> np.ndarray:
    array = column.combine_chunks()
    if isinstance(array, pa.FixedShapeTensorArray):
        return array.to_numpy_ndarray()
    return array.to_numpy()


def _element_columns(name: str, values: np.ndarray) -> list[tuple[str, pa.Array]]:
    shape = values.shape[1:]
    flat = values.reshape(len(values), -1)
    return [
        ("_".join([name, *map(str, index)]), pa.array(flat[:, j]))
        for j, index in enumerate(np.ndindex(*shape))
    ]


def _storage(column: pa.ChunkedArray) -> pa.ChunkedArray:
    return pa.chunked_array([chunk.storage for chunk in column.chunks], column.type.storage_type)


def _shortest_floats(column: pa.ChunkedArray) -> pa.ChunkedArray:
    # Through text, float32 0.1 becomes the float64 0.1 rather than 0.10000000149011612.
    as_text = _replace_float32(column.type, pa.string())
    if as_text == column.type:
        return column
    return column.cast(as_text).cast(_replace_float32(column.type, pa.float64()))


def _replace_float32(kind: pa.DataType, leaf: pa.DataType) -> pa.DataType:
    if pa.types.is_float32(kind):
        return leaf
    if pa.types.is_list(kind):
        return pa.list_(kind.value_field.with_type(_replace_float32(kind.value_type, leaf)))
    if pa.types.is_large_list(kind):
        return pa.large_list(kind.value_field.with_type(_replace_float32(kind.value_type, leaf)))
    if pa.types.is_fixed_size_list(kind):
        field = kind.value_field.with_type(_replace_float32(kind.value_type, leaf))
        return pa.list_(field, kind.list_size)
    if pa.types.is_struct(kind):
        return pa.struct([f.with_type(_replace_float32(f.type, leaf)) for f in kind])
    return kind


def _json_cells(values: Any) -> pa.Array:
    return pa.array(
        [
            None if value is None else json.dumps(_plain(value), ensure_ascii=False, default=str)
            for value in values
        ],
        pa.string(),
    )


def _plain(value: Any) -> Any:
    """``value`` as JSON-ready Python: ndarrays to lists, bytes to base64, float32 kept short."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "f" and value.dtype.itemsize < 8:
            value = value.astype(str).astype(np.float64)
        if value.dtype == object:
            return [_plain(v) for v in value]
        return value.tolist()
    if isinstance(value, np.generic):
        return _plain(np.asarray(value))
    if isinstance(value, bytes | bytearray):
        return _base64(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _base64(value: bytes | None) -> str | None:
    return None if value is None else base64.b64encode(value).decode("ascii")


@hookimpl
def register_writers(register):
    register("csv", CsvWriter)
