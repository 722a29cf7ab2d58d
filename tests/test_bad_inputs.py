"""Bad inputs: under errors.policy=skip each case is processed or dead-lettered, never lost."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import skimage
from PIL import Image

from framework.cli import main
from framework.errors import ExitCode
from plugins import parquet_source

pytestmark = pytest.mark.ray
PHOTO = Path(skimage.__file__).parent / "data" / "chelsea.png"
GOOD = [
    "good.jpg",
    "alpha.png",
    "gray.png",
    "cmyk.jpg",
    "sixteen.png",
    "exif.jpg",
    "sub/nested.jpg",
]
BAD = [
    "bomb.png",
    "thin.png",
    "zero.jpg",
    "truncated.jpg",
    "cut.png",
    "random.jpg",
    "notes.jpg",
]
# The shorter side resized to the spec's 64 makes 64 x 192,000 pixels of a 3000x1 image.
THIN_MESSAGE = (
    "image_transform: image with id 'thin.png': 3000x1 would be resized to 192000x64 = "
    "12288000 pixels before the 56x56 crop, over max_pixels=1000000 (extreme aspect ratio "
    "3000:1; raise max_pixels only if a worker has the memory for it)"
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    (root / "sub").mkdir()
    photo = Image.open(PHOTO).convert("RGB").resize((160, 120))
    photo.save(root / "good.jpg", quality=90)
    photo.save(root / "sub" / "nested.jpg", quality=90)
    rgba = photo.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(root / "alpha.png")
    photo.convert("L").save(root / "gray.png")
    photo.convert("CMYK").save(root / "cmyk.jpg", quality=90)
    Image.fromarray(np.asarray(photo.convert("L"), np.uint16) * 257).save(root / "sixteen.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° on display
    photo.save(root / "exif.jpg", quality=90, exif=exif)
    Image.new("RGB", (1200, 1000)).save(root / "bomb.png")  # past the spec's 1e6-pixel limit
    Image.new("RGB", (3000, 1)).save(root / "thin.png")  # under it, but not once resized
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "whole.png")  # noise: 12 kB, cut inside the pixels
    (root / "cut.png").write_bytes((root / "whole.png").read_bytes()[:3000])
    (root / "whole.png").unlink()
    (root / "zero.jpg").write_bytes(b"")
    data = (root / "good.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "random.jpg").write_bytes(np.random.default_rng(0).bytes(4000))
    (root / "notes.jpg").write_text("not an image, whatever the name says")
    (root / "readme.txt").write_text("not an input: the reader filters by extension")
    return root


def spec(tmp_path: Path, reader: str, policy: str = "skip") -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(
        f"""
errors: {{policy: {policy}}}
reader: {reader}
preprocessors:
  - {{type: image_transform, resize_size: 64, crop_size: 56, max_pixels: 1000000}}
  - {{type: select_columns, drop: [image]}}
writer: {{type: parquet, path: {tmp_path / "out"}}}
"""
    )
    return path


def outcome(out: Path) -> tuple[list[str], dict[str, dict]]:
    written = pads.dataset(out, format="parquet").to_table()["id"].to_pylist()
    dead = {
        r["id"]: r
        for f in sorted((out / "_dead_letter").glob("*.jsonl"))
        for r in map(json.loads, f.read_text().splitlines())
    }
    return written, dead


def test_folder_corpus_under_skip(ray_session, corpus, tmp_path):
    path = spec(tmp_path, f"{{type: image_folder, path: {corpus}}}")
    assert main([str(path)]) == ExitCode.OK
    written, dead = outcome(tmp_path / "out")
    assert sorted(written) == sorted(GOOD)
    assert sorted(dead) == sorted(BAD)
    assert all(r["stage"] == "preprocessors[0]" and r["message"] for r in dead.values())
    assert "pixel" in dead["bomb.png"]["message"]
    assert dead["thin.png"]["message"] == THIN_MESSAGE
    # libpng's reason, without torchvision's C++ function and source file in front of it.
    assert dead["cut.png"]["message"].startswith(
        "image_transform: image with id 'cut.png': Out of bound read in decode_png"
    )
    report = json.loads((tmp_path / "out" / "_infer_run_report.json").read_text())
    assert (report["rows_read"], report["rows_written"], report["rows_failed"]) == (14, 7, 7)
    assert report["errors"]["by_stage"] == {"preprocessors[0]": {"RunError": 7}}
    assert report["warnings"] == []


def test_fail_policy_names_the_first_bad_row(ray_session, corpus, tmp_path, capsys):
    one_bad = tmp_path / "imgs"
    one_bad.mkdir()
    for name in ("good.jpg", "zero.jpg", "gray.png"):
        (one_bad / name).write_bytes((corpus / name).read_bytes())
    path = spec(tmp_path, f"{{type: image_folder, path: {one_bad}}}", policy="fail")
    assert main([str(path)]) == ExitCode.RUN_FAILED
    assert capsys.readouterr().err.splitlines()[-1] == (
        "infer-run: error: row 'zero.jpg' failed in preprocessors[0]: RunError: image_transform: "
        "image with id 'zero.jpg': not an image in a format Pillow or torchvision can read "
        "(0 bytes) - errors.policy=skip writes bad rows aside"
    )
    report = json.loads((tmp_path / "out" / "_infer_run_report.json").read_text())
    assert report["status"] == "failed"

    thin = tmp_path / "thin"
    thin.mkdir()
    for name in ("good.jpg", "thin.png"):
        (thin / name).write_bytes((corpus / name).read_bytes())
    path = spec(tmp_path, f"{{type: image_folder, path: {thin}}}", policy="fail")
    assert main([str(path), "--overwrite"]) == ExitCode.RUN_FAILED
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"infer-run: error: row 'thin.png' failed in preprocessors[0]: RunError: {THIN_MESSAGE}"
        " - errors.policy=skip writes bad rows aside"
    )


def test_parquet_null_image_and_wrong_shape_array(ray_session, corpus, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    jpeg = (corpus / "good.jpg").read_bytes()
    pq.write_table(
        pa.table({"id": ["a", "b", "c"], "image": pa.array([jpeg, None, jpeg], pa.binary())}),
        data / "bytes.parquet",
    )
    path = spec(tmp_path, f"{{type: image_parquet, path: {data}}}")
    assert main([str(path)]) == ExitCode.OK
    written, dead = outcome(tmp_path / "out")
    assert (sorted(written), sorted(dead)) == (["a", "c"], ["b"])

    arrays = tmp_path / "arrays"
    arrays.mkdir()
    pixels = [list(range(48)), list(range(45)), list(range(48))]  # 4x4x3; row y is short
    pq.write_table(
        pa.table({"id": ["x", "y", "z"], "image": pa.array(pixels, pa.list_(pa.uint8()))}),
        arrays / "flat.parquet",
    )
    out = tmp_path / "out2"
    path = spec(tmp_path, f"{{type: image_parquet, path: {arrays}, shape: [4, 4, 3]}}")
    assert main([str(path), f"writer.path={out}"]) == ExitCode.OK
    written, dead = outcome(out)
    assert (sorted(written), sorted(dead)) == (["x", "z"], ["y"])
    assert dead["y"]["stage"] == "reader"
    assert dead["y"]["message"] == "'image' holds 45 values, shape [4, 4, 3] needs 48"

    # A null row of a tensor column stopped the whole read in Ray's conversion to numpy.
    tensors = tmp_path / "tensors"
    tensors.mkdir()
    stack = np.arange(3 * 48, dtype=np.uint8).reshape(3, 4, 4, 3)
    whole = pa.FixedShapeTensorArray.from_numpy_ndarray(stack)
    holed = pa.FixedSizeListArray.from_arrays(
        whole.storage.values, 48, mask=pa.array([False, True, False])
    )
    column = pa.ExtensionArray.from_storage(whole.type, holed)
    pq.write_table(pa.table({"id": ["p", "q", "r"], "image": column}), tensors / "t.parquet")
    out = tmp_path / "out3"
    path = spec(tmp_path, f"{{type: image_parquet, path: {tensors}}}")
    assert main([str(path), f"writer.path={out}"]) == ExitCode.OK
    written, dead = outcome(out)
    assert (sorted(written), sorted(dead)) == (["p", "r"], ["q"])
    assert dead["q"]["stage"] == "reader"
    assert dead["q"]["message"] == "'image' holds null, shape [4, 4, 3] needs 48"


def test_unreadable_parquet_file_is_set_aside(ray_session, corpus, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    jpeg = (corpus / "good.jpg").read_bytes()
    for part, ids in enumerate((["a", "b"], ["c"])):
        pq.write_table(pa.table({"id": ids, "image": [jpeg] * len(ids)}), data / f"p{part}.parquet")
    # Sorted first, where the dataset's schema would be read from: checked all the same.
    (data / "cut.parquet").write_bytes(b"PAR1 this file was cut short")
    path = spec(tmp_path, f"{{type: image_parquet, path: {data}}}")
    assert main([str(path)]) == ExitCode.OK
    written, dead = outcome(tmp_path / "out")
    assert sorted(written) == ["a", "b", "c"]
    assert list(dead) == [str(data / "cut.parquet")]
    assert dead[str(data / "cut.parquet")]["stage"] == "reader"
    report = json.loads((tmp_path / "out" / "_infer_run_report.json").read_text())
    assert report["errors"]["unreadable_inputs"] == [str(data / "cut.parquet")]

    capsys.readouterr()
    failing = spec(tmp_path, f"{{type: image_parquet, path: {data}}}", policy="fail")
    assert main([str(failing), "--overwrite"]) == ExitCode.INPUT_ERROR
    assert capsys.readouterr().err.startswith(
        f"infer-run: error: reader: cannot read {data / 'cut.parquet'}: "
    )


@pytest.mark.parametrize("reader", ["image_parquet", "parquet"])
def test_a_dangling_symlink_among_parquet_files_is_set_aside(
    ray_session, corpus, tmp_path, capsys, reader
):
    data = tmp_path / "data"
    data.mkdir()
    jpeg = (corpus / "good.jpg").read_bytes()
    pq.write_table(pa.table({"id": ["a", "b"], "image": [jpeg] * 2}), data / "p.parquet")
    # pyarrow's listing, and so the footer check and Ray Data's read, left it out unrecorded.
    (data / "gone.parquet").symlink_to(tmp_path / "moved.parquet")
    (data / "_temporary.parquet").symlink_to(tmp_path / "t.parquet")  # never data: no record
    path = spec(tmp_path, f"{{type: {reader}, path: {data}}}")
    assert main([str(path)]) == ExitCode.OK
    written, dead = outcome(tmp_path / "out")
    assert sorted(written) == ["a", "b"]
    assert list(dead) == [str(data / "gone.parquet")]
    assert (
        dead[str(data / "gone.parquet")]["error_type"],
        dead[str(data / "gone.parquet")]["message"],
    ) == (
        "FileNotFoundError",
        f"a symlink to {tmp_path / 'moved.parquet'}, which does not exist",
    )
    report = json.loads((tmp_path / "out" / "_infer_run_report.json").read_text())
    assert report["errors"]["unreadable_inputs"] == [str(data / "gone.parquet")]

    capsys.readouterr()
    failing = spec(tmp_path, f"{{type: {reader}, path: {data}}}", policy="fail")
    assert main([str(failing), "--overwrite"]) == ExitCode.INPUT_ERROR
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"infer-run: error: reader: cannot read {data / 'gone.parquet'}: FileNotFoundError: "
        f"a symlink to {tmp_path / 'moved.parquet'}, which does not exist"
    )


def tar_bytes(samples: list[str], jpeg: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for key in samples:
            info = tarfile.TarInfo(f"{key}.jpg")
            info.size = len(jpeg)
            tar.addfile(info, io.BytesIO(jpeg))
    return buffer.getvalue()


def test_damaged_shards_are_set_aside_after_the_samples_read_before_the_damage(
    ray_session, corpus, tmp_path, capsys
):
    jpeg = (corpus / "good.jpg").read_bytes()
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "good.tar").write_bytes(tar_bytes(["g0", "g1"], jpeg))
    whole = tar_bytes(["m0", "m1", "m2"], jpeg)
    member = 512 + -(-len(jpeg) // 512) * 512  # a header block, then the padded data
    # Cut inside the third member's data: tarfile raises.
    (shards / "mid.tar").write_bytes(whole[: 2 * member + 600])
    # Cut inside the third member's header: tarfile ends quietly; the size gives it away.
    (shards / "header.tar").write_bytes(tar_bytes(["h0", "h1", "h2"], jpeg)[: 2 * member + 100])
    (shards / "junk.tar").write_bytes(b"not a tar file" * 50)
    gzipped = io.BytesIO()
    with gzip.GzipFile(fileobj=gzipped, mode="wb") as out:
        out.write(tar_bytes(["z0", "z1"], jpeg))
    (shards / "cut.tar.gz").write_bytes(gzipped.getvalue()[:-40])
    path = spec(tmp_path, f"{{type: webdataset, path: {shards}}}")
    assert main([str(path)]) == ExitCode.OK
    written, dead = outcome(tmp_path / "out")
    # Every sample whole before the damage goes on (m1 was still open when m2 broke); the
    # gzip cut may lose what its last blocks held.
    whole_before = {"g0", "g1", "m0", "h0", "h1"}
    assert whole_before <= set(written) <= whole_before | {"z0", "z1"}
    bad = {str(shards / n) for n in ("mid.tar", "header.tar", "junk.tar", "cut.tar.gz")}
    assert set(dead) == bad
    assert {r["stage"] for r in dead.values()} == {"reader"}
    assert dead[str(shards / "mid.tar")]["message"] == (
        "unexpected end of data (1 sample read before it)"
    )
    assert dead[str(shards / "header.tar")]["message"] == (
        "cut short: not a whole number of 512-byte tar blocks (2 samples read before it)"
    )
    assert dead[str(shards / "junk.tar")]["error_type"] == "ReadError"
    assert dead[str(shards / "cut.tar.gz")]["error_type"] == "OSError"  # Arrow's gzip stream
    report = json.loads((tmp_path / "out" / "_infer_run_report.json").read_text())
    assert sorted(report["errors"]["unreadable_inputs"]) == sorted(bad)
    assert report["rows_read"] == report["rows_written"] == len(written)

    capsys.readouterr()
    failing = spec(tmp_path, f"{{type: webdataset, path: {shards / 'junk.tar'}}}", policy="fail")
    # Found by a read task, not on the driver: the same exit code as a corrupt parquet file.
    assert main([str(failing), "--overwrite"]) == ExitCode.INPUT_ERROR
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"infer-run: error: reader: cannot read {shards / 'junk.tar'}: ReadError: invalid "
        "header (0 samples read before it)"
    )


@pytest.mark.parametrize("reader", ["image_parquet", "parquet"])
@pytest.mark.parametrize("policy", ["skip", "fail"])
def test_an_input_without_one_readable_file_stops_as_an_input_error(
    tmp_path, capsys, reader, policy
):
    data = tmp_path / "data"
    data.mkdir()
    (data / "cut.parquet").write_bytes(b"PAR1 this file was cut short")
    path = spec(tmp_path, f"{{type: {reader}, path: {data}}}", policy=policy)
    assert main([str(path), "--validate"]) == ExitCode.INPUT_ERROR
    err = capsys.readouterr().err
    assert err.startswith(f"infer-run: error: reader.path: cannot read parquet at {data}: ")
    assert len(err.splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("reader", ["image_parquet", "parquet"])
def test_a_folder_without_parquet_files_says_so(tmp_path, capsys, reader):
    (tmp_path / "data").mkdir()
    path = spec(tmp_path, f"{{type: {reader}, path: {tmp_path / 'data'}}}")
    assert main([str(path), "--validate"]) == ExitCode.SPEC_ERROR
    assert f"reader.path: no parquet files under {tmp_path / 'data'}\n" in capsys.readouterr().err


def table_spec(tmp_path: Path, data: Path, policy: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(
        f"errors: {{policy: {policy}}}\nreader: {{type: parquet, path: {data}}}\n"
        f"models: [{{type: echo, columns: [x]}}]\nwriter: {{type: parquet, path: {tmp_path / 'out'}}}\n"
    )
    return path


def test_files_whose_column_types_clash_are_named_in_one_line(ray_session, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(pa.table({"id": ["a", "b"], "x": [1.0, 2.0]}), data / "a.parquet")
    pq.write_table(pa.table({"id": [3, 4], "x": [3.0, 4.0]}), data / "b.parquet")
    assert main([str(table_spec(tmp_path, data, "skip"))]) == ExitCode.INPUT_ERROR
    err = capsys.readouterr().err
    assert err.startswith(
        f"infer-run: error: reader.path: {data / 'a.parquet'} and {data / 'b.parquet'} "
        "disagree on a column's type (Unable to merge: Field id has incompatible types"
    )


def damaged_past_the_footer(data: Path) -> Path:
    """``a.parquet``, ``c.parquet`` and between them ``b.parquet``, whose footer is whole (so
    the check before the run passes) but whose first data page is zeros."""
    data.mkdir()
    pq.write_table(pa.table({"id": ["a", "b"], "x": [1.0, 2.0]}), data / "a.parquet")
    table = pa.table({"id": [f"r{i}" for i in range(20)], "x": [float(i) for i in range(20)]})
    pq.write_table(table, data / "b.parquet")
    raw = (data / "b.parquet").read_bytes()
    (data / "b.parquet").write_bytes(raw[:100] + b"\0" * 200 + raw[300:])
    pq.write_table(pa.table({"id": ["c"], "x": [3.0]}), data / "c.parquet")
    return data / "b.parquet"


def test_a_file_damaged_past_its_footer_is_set_aside_and_the_run_goes_on(ray_session, tmp_path):
    # Found by the read task, which reads all three files: it stopped the run, skip or not.
    damaged = damaged_past_the_footer(tmp_path / "data")
    assert main([str(table_spec(tmp_path, tmp_path / "data", "skip"))]) == ExitCode.OK
    written, dead = outcome(tmp_path / "out")
    assert sorted(written) == ["a", "b", "c"]
    assert list(dead) == [str(damaged)]
    record = dead[str(damaged)]
    assert (record["stage"], record["error_type"]) == ("reader", "OSError")
    assert record["message"].endswith(" (0 rows read before it)")
    assert "\n" not in record["message"]  # Arrow's message runs over two lines
    report = json.loads((tmp_path / "out" / "_infer_run_report.json").read_text())
    assert report["errors"]["unreadable_inputs"] == [str(damaged)]
    assert (report["status"], report["rows_read"], report["rows_written"]) == ("ok", 3, 3)


def test_a_large_damaged_file_is_set_aside_by_the_part_that_broke(ray_session, tmp_path):
    # Ray Data packs a large file's row groups into several read tasks (one each here, at
    # a run.block_mb of 1 kB): the others' rows go on, and the record says which broke.
    data = tmp_path / "data"
    data.mkdir()
    ids = [f"r{i}" for i in range(4000)]
    table = pa.table({"id": ids, "x": [float(i) for i in range(4000)]})
    path = data / "big.parquet"
    pq.write_table(table, path, row_group_size=1000, use_dictionary=False, compression="none")
    start = pq.read_metadata(path).row_group(2).column(0).data_page_offset
    raw = path.read_bytes()
    path.write_bytes(raw[:start] + b"\0" * 40 + raw[start + 40 :])
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"errors: {{policy: skip}}\nreader: {{type: parquet, path: {data}}}\n"
        f"writer: {{type: parquet, path: {tmp_path / 'out'}}}\nrun: {{block_mb: 0.001}}\n"
    )
    assert main([str(spec)]) == ExitCode.OK
    written, dead = outcome(tmp_path / "out")
    assert sorted(written) == sorted(ids[:2000] + ids[3000:])
    assert list(dead) == [str(path)]
    assert dead[str(path)]["message"].endswith(" (0 rows of row group 2 read before it)")


def test_a_ray_without_the_v2_parquet_source_reads_through_read_parquet(
    ray_session, tmp_path, monkeypatch
):
    # A Ray without the V2 datasource's pieces (or with them reshaped) gives nothing to
    # subclass: the readers fall back to the public read_parquet, which reads exactly the
    # checked files too (a hidden one is left out).
    monkeypatch.setattr(parquet_source, "SETS_ASIDE", False)
    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(pa.table({"id": ["a", "b"], "x": [1.0, 2.0]}), data / "a.parquet")
    pq.write_table(pa.table({"id": ["c"], "x": [3.0]}), data / "c.parquet")
    pq.write_table(pa.table({"id": ["h"], "x": [4.0]}), data / "._h.parquet")
    assert main([str(table_spec(tmp_path, data, "skip"))]) == ExitCode.OK
    written, dead = outcome(tmp_path / "out")
    assert (sorted(written), dead) == (["a", "b", "c"], {})


def test_a_ray_whose_parquet_pieces_were_reshaped_is_not_subclassed():
    # Checked at import: a Ray 2.6x that renamed the overridden read method must fall back
    # to the public read_parquet, not fail in every read task.
    source, scanner, reader = (
        parquet_source.ParquetDatasourceV2,
        parquet_source.ParquetScanner,
        parquet_source.ParquetFileReader,
    )
    assert parquet_source.pieces_fit(source, scanner, reader)
    reshaped = type("Reader", (), {"_read_fragments": lambda self: None})
    assert not parquet_source.pieces_fit(source, scanner, reshaped)
    assert not parquet_source.pieces_fit(source, object, reader)  # no create_reader


def test_a_file_damaged_past_its_footer_stops_the_run_naming_it_under_fail(
    ray_session, tmp_path, capsys
):
    damaged = damaged_past_the_footer(tmp_path / "data")
    assert main([str(table_spec(tmp_path, tmp_path / "data", "fail"))]) == ExitCode.INPUT_ERROR
    err = capsys.readouterr().err
    assert err.startswith(f"infer-run: error: reader: cannot read {damaged}: OSError: ")
    assert err.splitlines()[0].endswith(" (0 rows read before it)")  # all on one line
    assert "Traceback" not in err
    report = json.loads((tmp_path / "out" / "_infer_run_report.json").read_text())
    assert report["status"] == "failed"


def test_a_file_without_a_column_of_columns_is_set_aside_not_read_as_nulls(
    ray_session, tmp_path, capsys
):
    # Validation checks the first file; Ray Data read a later one's rows with x null, and
    # the model ran on them without a word.
    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(pa.table({"id": ["a"], "x": [1.0]}), data / "a.parquet")
    pq.write_table(pa.table({"id": ["b"], "y": [2.0]}), data / "b.parquet")
    path = table_spec(tmp_path, data, "skip")
    assert main([str(path), "reader.columns=[x]"]) == ExitCode.OK
    written, dead = outcome(tmp_path / "out")
    assert written == ["a"]
    record = dead[str(data / "b.parquet")]
    assert (record["stage"], record["error_type"]) == ("reader", "MissingColumn")
    assert record["message"] == "it has no column 'x' of reader.columns (columns: id, y)"
    assert main([str(path), "--overwrite", "reader.columns=[x]", "errors.policy=fail"]) == (
        ExitCode.INPUT_ERROR
    )
    assert capsys.readouterr().err.endswith(
        f"infer-run: error: reader: cannot read {data / 'b.parquet'}: MissingColumn: it has no "
        "column 'x' of reader.columns (columns: id, y)\n"
    )


def test_missing_column_is_named_before_anything_runs(corpus, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(pa.table({"id": ["a"], "picture": [b"x"]}), data / "p.parquet")
    path = spec(tmp_path, f"{{type: image_parquet, path: {data}}}")
    assert main([str(path)]) == ExitCode.SPEC_ERROR
    assert "reader.image_column:" in capsys.readouterr().err


@pytest.mark.parametrize("flags", [[0, 1], ["", "timeout upstream"]], ids=["int", "string"])
def test_a_column_named_error_in_the_data_is_a_spec_problem(tmp_path, capsys, flags):
    """``_error`` is where readers flag rows they cannot produce: the data's own column of
    that name had its rows dead-lettered and its values dropped, or (not strings) crashed
    the read tasks as a bug."""
    from plugins.parquet import ParquetReader

    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(pa.table({"id": ["a", "b"], "_error": flags, "x": [1, 2]}), data / "p.parquet")
    problem = (
        f"path: {data} has a column '_error', where readers flag the rows they cannot "
        "produce: its rows would be dead-lettered and the column dropped - leave it out "
        "(columns: [x]) or rename it in the data"
    )
    assert ParquetReader.check({"path": str(data)}) == [problem]
    assert ParquetReader.check({"path": str(data), "columns": ["x"]}) == []
    path = spec(tmp_path, f"{{type: parquet, path: {data}}}")
    assert main([str(path)]) == ExitCode.SPEC_ERROR
    assert f"reader.{problem}" in capsys.readouterr().err


def test_a_later_file_with_its_own_error_column_is_an_unreadable_input(ray_session, tmp_path):
    # Validation reads the first file's schema only: a later file's _error was taken for
    # reader flags (row c dead-lettered as "oops", the column dropped from d).
    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(pa.table({"id": ["a", "b"], "x": [1.0, 2.0]}), data / "a.parquet")
    later = pa.table({"id": ["c", "d"], "x": [3.0, 4.0], "_error": ["oops", None]})
    pq.write_table(later, data / "b.parquet")
    assert main([str(table_spec(tmp_path, data, "skip"))]) == ExitCode.OK
    written, dead = outcome(tmp_path / "out")
    assert sorted(written) == ["a", "b"]
    assert list(dead) == [str(data / "b.parquet")]
    assert dead[str(data / "b.parquet")]["message"].startswith("it has a column '_error'")


@pytest.mark.parametrize("stages", ["models: [{type: echo}]", ""], ids=["stage", "no-stage"])
def test_a_row_without_an_id_is_dead_lettered_not_written(ray_session, tmp_path, stages, capsys):
    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(pa.table({"id": ["a", None, "c"], "x": [1.0, 2.0, 3.0]}), data / "s.parquet")
    pq.write_table(pa.table({"id": [4.0, float("nan")], "x": [4.0, 5.0]}), tmp_path / "f.parquet")
    path = tmp_path / "spec.yaml"
    path.write_text(
        f"errors: {{policy: skip}}\nreader: {{type: parquet, path: {data}}}\n{stages}\n"
        f"writer: {{type: parquet, path: {tmp_path / 'out'}}}\n"
    )
    assert main([str(path)]) == ExitCode.OK
    out = tmp_path / "out"
    assert sorted(pads.dataset(out, format="parquet").to_table()["id"].to_pylist()) == ["a", "c"]
    records = [
        json.loads(line) for f in (out / "_dead_letter").glob("*.jsonl") for line in f.open()
    ]
    assert records == [
        {
            "id": None,
            "stage": "reader",
            "error_type": "MissingId",
            "message": "the row has no id: its id column is null",
        }
    ]
    report = json.loads((out / "_infer_run_report.json").read_text())
    assert (report["rows_read"], report["rows_written"], report["rows_failed"]) == (3, 2, 1)

    # Float ids whose nulls became NaN; under the default policy the run stops on it.
    capsys.readouterr()
    nan_run = [str(path), f"reader.path={tmp_path / 'f.parquet'}", "errors.policy=fail"]
    assert main([*nan_run, f"writer.path={tmp_path / 'out2'}"]) == ExitCode.RUN_FAILED
    assert capsys.readouterr().err.splitlines()[-1] == (
        "infer-run: error: row None failed in reader: MissingId: the row has no id: its id "
        "column is null - errors.policy=skip writes bad rows aside"
    )


def test_a_reader_outside_a_run_stops_at_an_unreadable_input_as_under_fail() -> None:
    """No run, no sink (a plugin's own tests): the message a run's fail policy gives, with
    Ray's retry note cut off, and what was read before the damage."""
    from framework.errors import RAY_RETRY_NOTE, InputError
    from plugins.jsonl import JsonlReader

    reader = JsonlReader(path="/data/part-0.jsonl")
    error = OSError(f"connection reset{RAY_RETRY_NOTE} (attempt 3)")
    with pytest.raises(InputError) as raised:
        reader.report_bad_input("s3://bucket/part-0.jsonl", error, "12 rows read before it")
    assert str(raised.value) == (
        "reader: cannot read s3://bucket/part-0.jsonl: OSError: connection reset "
        "(12 rows read before it)"
    )
