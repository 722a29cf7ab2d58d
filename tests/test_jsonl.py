"""The jsonl plugin on a local Ray: lines that are not UTF-8, and float ids written back."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from framework.cli import main
from framework.errors import ExitCode
from tests.helpers import timestamp_id_spec

pytestmark = pytest.mark.ray


def latin1_input(tmp_path: Path) -> Path:
    """Three good lines around one written in Latin-1 (``é`` as the lone byte 0xE9)."""
    data = tmp_path / "in.jsonl"
    data.write_bytes(
        b'{"id": "r1", "s": "a"}\n'
        b'{"id": "r29", "s": "caf\xe9"}\n'
        b'{"id": "r3", "s": "caf\xc3\xa9"}\n'
        b'{"id": "r4", "s": "d"}\n'
    )
    return data


def jsonl_spec(tmp_path: Path, data: Path, extra: str = "") -> Path:
    """A spec reading ``data`` with the jsonl reader into parquet at ``tmp_path/o``;
    ``extra``: more YAML lines (an error policy, a model)."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"{extra}reader: {{type: jsonl, path: {data}}}\n"
        f"writer: {{type: parquet, path: {tmp_path / 'o'}}}\n"
    )
    return spec


def report_of(out: Path) -> dict[str, Any]:
    return json.loads((out / "_infer_run_report.json").read_text())


def test_a_line_that_is_not_utf8_is_dead_lettered_and_the_rest_written(ray_session, tmp_path):
    data = latin1_input(tmp_path)
    spec = jsonl_spec(tmp_path, data, "errors: {policy: skip}\n")
    assert main([str(spec)]) == ExitCode.OK
    out = tmp_path / "o"
    rows = pads.dataset(out, format="parquet").to_table().to_pylist()
    assert sorted((r["id"], r["s"]) for r in rows) == [("r1", "a"), ("r3", "café"), ("r4", "d")]
    records = [
        json.loads(line) for f in (out / "_dead_letter").glob("*.jsonl") for line in f.open()
    ]
    assert [(r["id"], r["stage"], r["error_type"]) for r in records] == [
        (None, "reader", "BadInput")
    ]
    assert records[0]["message"].startswith(f"{data}: line 2 is not valid UTF-8 (")
    report = report_of(out)
    assert (report["rows_read"], report["rows_written"], report["rows_failed"]) == (4, 3, 1)
    assert report["rows_read"] == report["rows_written"] + report["rows_failed"]


def test_a_line_that_is_not_utf8_stops_the_run_naming_file_and_line(ray_session, tmp_path, capsys):
    data = latin1_input(tmp_path)
    spec = jsonl_spec(tmp_path, data)
    assert main([str(spec)]) == ExitCode.RUN_FAILED
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith(
        f"infer-run: error: row None failed in reader: BadInput: {data}: line 2 is not valid "
        "UTF-8 ("
    )


# Floats that 10 significant digits (pandas' default) do not keep, beside ones they do.
FLOAT_IDS = [1 / 3, 0.1 + 0.2, 2 / 3, 1e-7 / 3, 123456.789012345, 0.5, -1.0, 1e300 / 7]


def written_rows(out: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for f in sorted(out.glob("[!_]*.json"))
        for line in f.read_text().splitlines()
    ]


def test_float_ids_and_values_round_trip_and_resume_writes_nothing_again(ray_session, tmp_path):
    data = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": FLOAT_IDS, "x": [i / 7 for i in FLOAT_IDS]}), data)
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"reader: {{type: parquet, path: {data}}}\n"
        "models: [{type: echo, scale: 3}]\n"
        f"writer: {{type: jsonl, path: {tmp_path / 'out'}}}\n"
    )
    out = tmp_path / "out"
    assert main([str(spec)]) == ExitCode.OK
    rows = written_rows(out)
    assert sorted(r["id"] for r in rows) == sorted(FLOAT_IDS)  # exactly, not approximately
    for row in rows:
        assert row["x"] == row["id"] / 7
        assert row["x_echo"] == 3 * (row["id"] / 7)

    assert main([str(spec), "--resume"]) == ExitCode.OK
    report = report_of(out)
    assert (report["rows_read"], report["resumed_rows"]) == (0, len(FLOAT_IDS))
    assert len(written_rows(out)) == len(FLOAT_IDS)


def test_the_writer_writes_what_pandas_wrote_for_other_types(ray_session, tmp_path):
    """Non-finite floats stay null, tensors and lists become lists, structs objects,
    timestamps epoch milliseconds, as the pandas writer wrote them."""
    import datetime

    import numpy as np
    import ray.data

    from plugins.jsonl import JsonlWriter

    when = datetime.datetime(2024, 1, 2, 3, 4, 5)
    items = [
        {
            "id": "a",
            "f": math.nan,
            "g": math.inf,
            "n": None,
            "lst": [0.1 + 0.2, math.nan],
            "t": np.arange(4, dtype=np.float32).reshape(2, 2),
            "d": {"k": 1 / 3},
            "b": True,
            "s": "café",
            "ts": when,
        }
    ]
    writer = JsonlWriter(str(tmp_path / "out"))
    writer.write(ray.data.from_items(items))
    assert written_rows(tmp_path / "out") == [
        {
            "id": "a",
            "f": None,
            "g": None,
            "n": None,
            "lst": [0.1 + 0.2, None],
            "t": [[0.0, 1.0], [2.0, 3.0]],
            "d": {"k": 1 / 3},
            "b": True,
            "s": "café",
            "ts": 1704164645000,
        }
    ]


@pytest.mark.parametrize("policy", ["skip", "fail"])
def test_files_whose_types_clash_stop_the_run_in_one_line(ray_session, tmp_path, capsys, policy):
    # Each file reads on its own; the clash shows only when a stage joins their rows.
    data = tmp_path / "in"
    data.mkdir()
    (data / "a.jsonl").write_text('{"id": "a", "x": 1}\n{"id": "b", "x": 2}\n')
    (data / "b.jsonl").write_text('{"id": "c", "x": "three"}\n')
    spec = jsonl_spec(
        tmp_path,
        data,
        f"errors: {{policy: {policy}}}\n"
        "models: [{type: echo, columns: [x], resources: {batch_size: 8}}]\n",
    )
    assert main([str(spec)]) == ExitCode.INPUT_ERROR
    err = capsys.readouterr().err
    assert err.startswith(
        f"infer-run: error: reader: {data / 'a.jsonl'} (x: int64) and {data / 'b.jsonl'} "
        "(x: string) disagree on a column's type (Unable to merge: Field x has incompatible "
        "types: "
    )  # int64 vs string, or the other way round: whichever file's block came first
    assert "string" in err and "int64" in err and ") - give the column one type" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_files_whose_id_types_clash_are_named_with_their_types(ray_session, tmp_path, capsys):
    # Ray Data's message names the column and the types, not the files; the reader reads
    # them again, in order, until it has found a file of each type.
    data = tmp_path / "in"
    data.mkdir()
    (data / "a.jsonl").write_text('{"key": "k1"}\n{"key": "k2"}\n')
    (data / "b.jsonl").write_text('{"key": null}\n{"key": "k3"}\n')
    (data / "c.jsonl").write_text('{"key": 4}\n')
    (data / "d.jsonl").write_text('{"key": 5}\n')
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"errors: {{policy: skip}}\nreader: {{type: jsonl, path: {data}, id_column: key}}\n"
        "models: [{type: echo, resources: {batch_size: 8}}]\n"
        f"writer: {{type: parquet, path: {tmp_path / 'o'}}}\n"
    )
    assert main([str(spec)]) == ExitCode.INPUT_ERROR
    err = capsys.readouterr().err
    assert err.startswith(
        f"infer-run: error: reader: {data / 'a.jsonl'} (key: string) and {data / 'c.jsonl'} "
        "(key: int64) disagree on a column's type (Unable to merge: Field id has "
        "incompatible types: "
    )
    assert err.endswith(") - give the column one type in every file\n")
    assert len(err.splitlines()) == 1


def test_a_file_named_with_a_question_mark_is_read(ray_session, tmp_path):
    # Ray's file_extensions compares "a?.jsonl" as "a", and left the file out unrecorded.
    data = tmp_path / "in"
    data.mkdir()
    (data / "a?.jsonl").write_text('{"id": "a", "x": 1}\n')
    (data / "b.jsonl").write_text('{"id": "b", "x": 2}\n')
    spec = jsonl_spec(tmp_path, data)
    assert main([str(spec)]) == ExitCode.OK
    ids = pads.dataset(tmp_path / "o", format="parquet").to_table()["id"].to_pylist()
    assert sorted(ids) == ["a", "b"]


def test_a_folder_without_jsonl_files_is_a_spec_problem_and_leaves_no_output(tmp_path, capsys):
    empty = tmp_path / "in"
    empty.mkdir()
    (empty / "notes.txt").write_text("not jsonl")
    (empty / "_hidden.jsonl").write_text('{"id": 1}\n')  # Ray Data's listing skips it
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"reader: {{type: jsonl, path: {empty}}}\nmodels: [{{type: echo}}]\n"
        f"writer: {{type: parquet, path: {tmp_path / 'out'}}}\n"
    )
    assert main([str(spec)]) == ExitCode.SPEC_ERROR
    assert f"reader.path: no jsonl files (jsonl, json) under {empty}\n" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_timestamp_ids_stop_the_run_before_a_resume_could_repeat_them(
    ray_session, tmp_path, capsys
):
    # Written as epoch milliseconds, they came back as ints: every --resume wrote them again.
    spec = timestamp_id_spec(tmp_path, "jsonl")
    assert main([str(spec)]) == ExitCode.RUN_FAILED
    assert capsys.readouterr().err.splitlines()[-1] == (
        "infer-run: error: writer: the 'id' column is timestamp[us], which a JSON-lines file "
        "cannot give back as the same values, so --resume and --replay would miss or repeat "
        "rows - give the rows string or integer ids, or write parquet"
    )
    assert main([str(spec), "writer.type=parquet", "--overwrite"]) == ExitCode.OK


def test_hidden_files_in_a_folder_are_not_data_and_a_named_file_is_read(ray_session, tmp_path):
    data = tmp_path / "in" / "year=2024"
    data.mkdir(parents=True)
    (data / "part-0.jsonl").write_text('{"id": "a", "x": 1}\n')
    # macOS's companion of every file copied to a shared drive: it was a bad line.
    (data / "._part-0.jsonl").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X")
    spec = jsonl_spec(tmp_path, tmp_path / "in")  # errors.policy fail: any bad line stops
    assert main([str(spec)]) == ExitCode.OK
    assert pq.read_table(tmp_path / "o")["id"].to_pylist() == ["a"]
    # A file the spec names is read whatever its suffix (it was a traceback after check).
    named = tmp_path / "export.ndjson"
    named.write_text('{"id": "n", "x": 2}\n')
    spec = jsonl_spec(tmp_path, named)
    assert main([str(spec), "--overwrite"]) == ExitCode.OK
    assert pq.read_table(tmp_path / "o")["id"].to_pylist() == ["n"]


def test_a_dangling_symlink_in_a_folder_is_an_unreadable_input(ray_session, tmp_path, capsys):
    data = tmp_path / "in"
    data.mkdir()
    (data / "a.jsonl").write_text('{"id": "a", "x": 1}\n')
    # pyarrow's listing, and so Ray Data's read, left it out without a record.
    (data / "b.jsonl").symlink_to(tmp_path / "moved.jsonl")
    spec = jsonl_spec(tmp_path, data, "errors: {policy: skip}\n")
    assert main([str(spec)]) == ExitCode.OK
    assert pq.read_table(tmp_path / "o")["id"].to_pylist() == ["a"]
    records = [
        json.loads(line)
        for file in (tmp_path / "o" / "_dead_letter").glob("*.jsonl")
        for line in file.read_text().splitlines()
    ]
    assert [(r["id"], r["stage"], r["error_type"], r["message"]) for r in records] == [
        (
            str(data / "b.jsonl"),
            "reader",
            "FileNotFoundError",
            f"a symlink to {tmp_path / 'moved.jsonl'}, which does not exist",
        )
    ]
    assert report_of(tmp_path / "o")["errors"]["unreadable_inputs"] == [str(data / "b.jsonl")]

    capsys.readouterr()
    spec = jsonl_spec(tmp_path, data)  # errors.policy fail
    assert main([str(spec), "--overwrite"]) == ExitCode.INPUT_ERROR
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"infer-run: error: reader: cannot read {data / 'b.jsonl'}: FileNotFoundError: "
        f"a symlink to {tmp_path / 'moved.jsonl'}, which does not exist"
    )


def read_one_file(
    tmp_path: Path, lines: bytes, id_column: str = "id"
) -> tuple[list[pa.Table], list[tuple[str, Exception]]]:
    """What the jsonl read task makes of one file ``in.jsonl`` holding ``lines``: its
    tables, and the (file, error) of each input it reported unreadable."""
    from plugins.jsonl import JsonLinesDatasource

    data = tmp_path / "in.jsonl"
    data.write_bytes(lines)
    reported: list[tuple[str, Exception]] = []
    source = JsonLinesDatasource(
        [str(data)],
        id_column=id_column,
        report_bad_input=lambda where, error: reported.append((where, error)),
        scheme="",
    )
    return list(source._read_stream(pa.BufferReader(lines), str(data))), reported


@pytest.mark.parametrize(
    "lines",
    [
        b'{"id": "a", "_error": "late"}\n{"id": "b"}\n',  # taken for flags: b dead-lettered
        b'{"id": "a", "_error": 3}\n',  # not a string: every read task crashed
        b'{"id": "a", "_error": ""}\nnot json\n',  # beside a bad line: two _error columns
    ],
)
def test_a_file_with_a_key_of_its_own_named_error_is_an_unreadable_input(tmp_path, lines):
    tables, reported = read_one_file(tmp_path, lines)
    assert tables == []
    [(where, error)] = reported
    assert where == str(tmp_path / "in.jsonl")
    assert str(error).startswith("a line has a key '_error', the column where readers flag")


def test_a_type_clash_is_named_past_a_file_with_its_own_error_key(tmp_path):
    # That file was set aside by the read; naming the clash must not stop on it.
    from plugins.jsonl import JsonlReader

    (tmp_path / "a.jsonl").write_text('{"id": "a", "x": 1}\n')
    (tmp_path / "b.jsonl").write_text('{"id": "b", "_error": "x"}\n')
    (tmp_path / "c.jsonl").write_text('{"id": "c", "x": "three"}\n')
    clash = JsonlReader(str(tmp_path)).type_clash("x", ("int64", "string"))
    assert clash == f"{tmp_path}/a.jsonl (x: int64) and {tmp_path}/c.jsonl (x: string)"


@pytest.mark.parametrize("id_column", ["id", "key"])
def test_a_file_whose_lines_have_no_id_gives_rows_with_null_ids(tmp_path, id_column):
    """Rows without an id are dead-lettered (MissingId); a file where no line had the id
    key gave a block without the column: the run stopped calling it a plugin bug, and
    with ``id_column`` the rename crashed the read."""
    [table], reported = read_one_file(tmp_path, b'{"x": 1}\n{"x": 2}\n', id_column)
    assert reported == []
    assert table.to_pylist() == [{"x": 1, id_column: None}, {"x": 2, id_column: None}]


def test_integer_ids_past_int64_are_an_unreadable_input_not_ids_that_collapse(tmp_path):
    """Arrow reads an integer past int64 as a double: 12345678901234567890 and ...891 both
    became 1.2345678901234567e19, one id for two rows (a --resume skipped the second)."""
    lines = b'{"id": 12345678901234567890}\n{"id": 12345678901234567891}\n{"id": 5}\n'
    tables, reported = read_one_file(tmp_path, lines)
    assert tables == []
    [(where, error)] = reported
    assert where == str(tmp_path / "in.jsonl")
    assert str(error) == (
        "integer ids past int64 (1.2345678901234567e+19) lose digits as JSON numbers, and "
        "distinct ones become one - write the ids as strings"
    )
    # Float ids of an ordinary size are kept as they are.
    [table], reported = read_one_file(tmp_path, b'{"id": 1.5}\n{"id": 2}\n')
    assert reported == []
    assert table["id"].to_pylist() == [1.5, 2.0]
