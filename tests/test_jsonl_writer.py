"""The JSON-lines writer's encoding of one block, without Ray."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from framework import RunError
from plugins.jsonl_writer import json_lines


def test_bytes_that_are_utf8_text_are_written_as_text() -> None:
    table = pa.table({"id": ["a", "b"], "raw": pa.array([b"caf\xc3\xa9", None], pa.binary())})
    rows = [json.loads(line) for line in json_lines(table).splitlines()]
    assert rows == [{"id": "a", "raw": "café"}, {"id": "b", "raw": None}]


@pytest.mark.parametrize(
    "column",
    [
        pa.array([b"ok", b"\xff\xd8\xff\xe0JFIF"], pa.binary()),
        pa.array([b"ok", b"\xff\xd8"], pa.large_binary()),
        pa.array([[b"ok"], [b"ok", b"\xff"]], pa.list_(pa.binary())),
    ],
)
def test_bytes_that_are_not_text_stop_the_run_in_one_line_naming_column_and_row(
    column: pa.Array,
) -> None:
    # A JPEG kept beside its predictions (keep_image: true) crashed the write with a
    # UnicodeDecodeError traceback, called a bug in infer-run.
    table = pa.table({"id": ["good.jpg", "photo.jpg"], "image": column})
    with pytest.raises(RunError) as stopped:
        json_lines(table)
    assert str(stopped.value) == (
        "writer: column 'image' holds bytes that are not UTF-8 text (row 'photo.jpg'), and "
        "JSON has no bytes - write parquet (or csv, which writes bytes as base64), or drop "
        "the column first (select_columns with drop: [image])"
    )


def test_dictionary_encoded_string_ids_are_written_as_their_strings() -> None:
    # A pandas categorical column read from parquet: the ids are strings, and a resume
    # reads them back as such; they were refused as a type JSON cannot give back.
    ids = pa.array(["a", "b", "a2"]).dictionary_encode()
    rows = [json.loads(line) for line in json_lines(pa.table({"id": ids})).splitlines()]
    assert [row["id"] for row in rows] == ["a", "b", "a2"]


@pytest.mark.parametrize("bad", [float("inf"), float("-inf")])
def test_an_infinite_float_id_stops_the_run_before_it_is_written_as_null(bad: float) -> None:
    # JSON has no infinity: the id was written as null, which no --resume finds again, so
    # every resume wrote the row once more.
    table = pa.table({"id": [1.5, bad], "x": [1, 2]})
    with pytest.raises(RunError) as stopped:
        json_lines(table)
    assert str(stopped.value) == (
        f"writer: row id {bad} is not a finite number, which a JSON-lines file cannot hold "
        "(it would be written as null, and --resume and --replay would miss or repeat the "
        "row) - give the rows string or integer ids, or write parquet"
    )
    # Other float columns keep writing a non-finite value as null.
    rows = json_lines(pa.table({"id": [1.5], "x": [float("inf")]})).splitlines()
    assert [json.loads(line) for line in rows] == [{"id": 1.5, "x": None}]
