"""The CSV writer: tensors become one column per element, lists become JSON text."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pcsv
import pytest
from ray.data.extensions import ArrowTensorArray

from framework import filesystem_for
from framework.plugins import build_registry, make_plugin_manager
from plugins import csv_writer
from plugins.csv_writer import CsvWriter, csv_table
from tests.s3fixture import S3Server

LABELS = ["tabby", "tiger cat", "Egyptian cat", "lynx, catamount", "café"]


def test_registered_as_csv() -> None:
    pm = make_plugin_manager([csv_writer], load_entrypoints=False)
    entry = build_registry(pm).find("writer", "csv")
    assert entry is not None
    assert entry.cls is CsvWriter


def test_csv_table_turns_every_kind_of_column_into_text() -> None:
    table = pa.table(
        {
            "score": pa.array([0.1, 0.25], pa.float32()),
            "id": ["a", "b"],
            "top_ids": ArrowTensorArray.from_numpy(np.array([[3, 1], [5, 4]])),
            "grid": pa.FixedShapeTensorArray.from_numpy_ndarray(
                np.arange(8, dtype=np.uint8).reshape(2, 2, 2)
            ),
            "top_labels": ArrowTensorArray.from_numpy(np.array([LABELS[:2], LABELS[3:5]])),
            "labels": pa.array([LABELS[:2], []], pa.list_(pa.string())),
            "scores": pa.array([[0.1, 0.2], None], pa.list_(pa.float32())),
            "boxes": ArrowTensorArray.from_numpy(
                np.array([np.zeros(1, np.float32) + 0.1, np.arange(3, dtype=np.float32)], object)
            ),
            "meta": pa.array(
                [{"x": 0.1, "y": "q"}, {"x": 1.5, "y": None}],
                pa.struct([("x", pa.float32()), ("y", pa.string())]),
            ),
            "raw": [b"\xff\x00", None],
            "kind": pa.array(["x", "y"]).dictionary_encode(),
        }
    )
    out = csv_table(table)
    assert out.column_names == [
        "id",
        "score",
        "top_ids_0",
        "top_ids_1",
        "grid_0_0",
        "grid_0_1",
        "grid_1_0",
        "grid_1_1",
        "top_labels_0",
        "top_labels_1",
        "labels",
        "scores",
        "boxes",
        "meta",
        "raw",
        "kind",
    ]
    rows = out.to_pylist()
    assert rows[0]["top_ids_1"] == 1
    assert [rows[1][f"grid_1_{j}"] for j in range(2)] == [6, 7]
    assert [rows[1][f"top_labels_{j}"] for j in range(2)] == LABELS[3:5]
    assert json.loads(rows[0]["labels"]) == LABELS[:2]
    assert rows[1]["labels"] == "[]"
    # float32 values keep their short form inside JSON too.
    assert rows[0]["scores"] == "[0.1, 0.2]"
    assert rows[1]["scores"] is None
    assert rows[0]["boxes"] == "[0.1]"
    assert json.loads(rows[1]["boxes"]) == [0, 1, 2]
    assert json.loads(rows[0]["meta"]) == {"x": 0.1, "y": "q"}
    assert base64.b64decode(rows[0]["raw"]) == b"\xff\x00"
    assert rows[1]["raw"] is None
    assert [r["kind"] for r in rows] == ["x", "y"]
    assert all(not isinstance(t, pa.ExtensionType) for t in out.schema.types)


def test_names_that_clash_after_flattening_are_refused() -> None:
    from framework import RunError

    table = pa.table(
        {"id": ["a"], "top": ArrowTensorArray.from_numpy(np.array([[1, 2]])), "top_0": [9]}
    )
    with pytest.raises(RunError, match="top_0"):
        csv_table(table)


def predictions(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A stand-in classifier: top-3 ids, scores and label names for each row."""
    n = np.asarray([int(i[4:]) for i in batch["id"]])
    top_ids = (n[:, None] + np.arange(3)) % 1000
    return {
        **batch,
        "score": (n / 8).astype(np.float32),
        "top_ids": top_ids,
        "top_scores": np.stack([n / 100, n / 200, n / 400], axis=1).astype(np.float32),
        "top_labels": np.array([[LABELS[i % 5] for i in row] for row in top_ids]),
    }


def expected_row(n: int) -> dict[str, object]:
    top = [(n + j) % 1000 for j in range(3)]
    return {
        "id": f"img-{n:03d}",
        "labels": LABELS[: n % 3],
        "score": np.float32(n / 8),
        **{f"top_ids_{j}": top[j] for j in range(3)},
        **{f"top_scores_{j}": np.float32(n / d) for j, d in enumerate((100, 200, 400))},
        **{f"top_labels_{j}": LABELS[top[j] % 5] for j in range(3)},
    }


def make_dataset(rows: int):
    import ray.data

    items = [{"id": f"img-{n:03d}", "labels": LABELS[: n % 3]} for n in range(rows)]
    return ray.data.from_items(items, override_num_blocks=3).map_batches(predictions)


def read_back(files: list[Path] | list[bytes]) -> pd.DataFrame:
    headers = set()
    frames = []
    for file in files:
        data = file if isinstance(file, bytes) else file.read_bytes()
        headers.add(data.split(b"\n", 1)[0])
        frames.append(pcsv.read_csv(pa.BufferReader(data)).to_pandas())
    assert len(headers) == 1  # every file has the same header
    return pd.concat(frames).sort_values("id").reset_index(drop=True)


def check_frame(frame: pd.DataFrame, rows: int) -> None:
    assert list(frame.columns) == list(expected_row(0))
    assert len(frame) == rows
    for n, row in frame.iterrows():
        expected = expected_row(int(n))
        for name, value in expected.items():
            if name == "labels":
                assert json.loads(row[name]) == value
            elif isinstance(value, np.float32):
                # Parsed as float64 from the shortest float32 text: equal once narrowed.
                assert np.float32(row[name]) == value, name
            else:
                assert row[name] == value, name
    assert frame["top_ids_0"].dtype == np.int64
    assert frame["top_scores_0"].dtype == np.float64


@pytest.mark.ray
def test_writes_one_readable_row_per_input(tmp_path: Path, ray_session: None) -> None:
    writer = CsvWriter(str(tmp_path / "out"))
    writer.prepare()
    writer.write(make_dataset(12))
    files = sorted((tmp_path / "out").glob("*.csv"))
    assert len(files) >= 2  # several blocks, several files, one header
    frame = read_back(files)
    check_frame(frame, 12)
    # pandas alone reads it too: numbers as numbers, JSON as text.
    direct = pd.read_csv(files[0])
    assert direct["top_ids_0"].dtype == np.int64
    assert direct["labels"].map(json.loads).map(type).eq(list).all()


@pytest.mark.ray
def test_writes_to_s3(s3_server: S3Server, s3_bucket: str, ray_session: None) -> None:
    path = f"s3://{s3_bucket}/predictions"
    CsvWriter(path, storage=s3_server.storage).write(make_dataset(6))
    fs, where = filesystem_for(path, s3_server.storage)
    files = []
    for info in fs.get_file_info(pa.fs.FileSelector(where)):
        with fs.open_input_stream(info.path) as stream:
            files.append(stream.read())
    check_frame(read_back(files), 6)


def test_committed_ids_keep_their_type_and_cut_files_go(tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    pcsv.write_csv(pa.table({"id": [1, 2], "ok": [True, None]}), out / "a.csv")
    text = pa.table({"id": ["0003", 'say "4"'], "label": ["two\nlines", ""]})
    pcsv.write_csv(text, out / "b.csv")
    (out / "c.csv").write_bytes((out / "b.csv").read_bytes()[:-4])  # killed mid-row
    ids = CsvWriter(str(out)).committed_ids()
    # Numbers stay numbers and quoted ids stay strings, so a resumed run skips exactly them.
    assert len(ids) == 4 and set(ids) == {1, 2, "0003", 'say "4"'}
    assert sorted(p.name for p in out.iterdir()) == ["a.csv", "b.csv"]


def test_a_file_cut_inside_a_quoted_cell_after_its_newline_goes(tmp_path: Path) -> None:
    """A kill that cuts a file just after a newline inside a quoted cell leaves a file
    ending in a newline: its last row is still cut short, and must be redone, not kept."""
    out = tmp_path / "out"
    out.mkdir()
    table = pa.table({"id": ["a", "b"], "caption": ["one line", "two\nlines"], "n": [1, 2]})
    pcsv.write_csv(table, out / "whole.csv")
    whole = (out / "whole.csv").read_bytes()
    (out / "cut.csv").write_bytes(whole[: whole.index(b"two\n") + 4])
    assert CsvWriter(str(out)).committed_ids() == ["a", "b"]
    assert sorted(p.name for p in out.iterdir()) == ["whole.csv"]


def test_a_file_cut_inside_a_character_goes(tmp_path: Path) -> None:
    # A kill cuts at any byte: inside a label's UTF-8 character, the resume crashed on it
    # with a UnicodeDecodeError traceback instead of redoing the file's rows.
    out = tmp_path / "out"
    out.mkdir()
    pcsv.write_csv(pa.table({"id": ["a", "b"], "label": ["café", "漢字"]}), out / "whole.csv")
    whole = (out / "whole.csv").read_bytes()
    (out / "cut.csv").write_bytes(whole[: whole.index("漢".encode()) + 1])
    assert CsvWriter(str(out)).committed_ids() == ["a", "b"]
    assert sorted(p.name for p in out.iterdir()) == ["whole.csv"]


def test_dictionary_encoded_string_ids_read_back_as_strings(tmp_path: Path) -> None:
    # A pandas categorical column read from parquet, written by a spec without stages.
    out = tmp_path / "out"
    out.mkdir()
    ids = pa.array(["0003", "b"]).dictionary_encode()
    pcsv.write_csv(csv_table(pa.table({"id": ids, "x": [1, 2]})), out / "a.csv")
    assert CsvWriter(str(out)).committed_ids() == ["0003", "b"]


def test_boolean_ids_read_back_as_booleans(tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    pcsv.write_csv(pa.table({"id": [True, False]}), out / "a.csv")
    assert sorted(CsvWriter(str(out)).committed_ids()) == [False, True]


@pytest.mark.parametrize(
    "ids",
    [
        pa.array([0], pa.timestamp("us")),
        pa.array([0], pa.date32()),
        pa.array([0.1], pa.float32()),
        pa.array([b"x"], pa.binary()),
    ],
)
def test_ids_a_csv_file_cannot_give_back_stop_the_run(ids: pa.Array) -> None:
    from framework import RunError

    with pytest.raises(RunError) as stopped:
        csv_table(pa.table({"id": ids, "x": [1]}))
    assert str(stopped.value) == (
        f"writer: the 'id' column is {ids.type}, which a CSV file cannot give back as the "
        "same values, so --resume and --replay would miss or repeat rows - give the rows "
        "string or integer ids, or write parquet"
    )


def test_an_id_type_csv_cannot_give_back_stops_the_run_in_one_line(ray_session, tmp_path, capsys):
    from framework.cli import main
    from framework.errors import ExitCode
    from tests.helpers import timestamp_id_spec

    spec = timestamp_id_spec(tmp_path, "csv")
    assert main([str(spec)]) == ExitCode.RUN_FAILED
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (
        "infer-run: error: writer: the 'id' column is timestamp[us], which a CSV file cannot "
        "give back as the same values, so --resume and --replay would miss or repeat rows - "
        "give the rows string or integer ids, or write parquet"
    )


def test_rows_per_file_below_one_is_a_spec_problem():
    # Ray Data refused it only once the run wrote: "min_rows_per_file must be a positive
    # integer", with a traceback.
    assert CsvWriter.check({"path": "out", "rows_per_file": 0}) == [
        "rows_per_file: must be at least 1 (null: Ray Data's choice), got 0"
    ]
