"""The synthetic ImageNet-like dataset: layouts, determinism, image sizes, tensor column."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from framework import InputError, cli, datagen, filesystem_for
from framework.datagen import generate
from framework.datagen_photos import source_paths
from framework.errors import ExitCode
from tests.s3fixture import S3Server


def digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def check_jpeg(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG"
        assert image.mode == "RGB"
        image.load()  # decodes the whole image, not just the header
        return image.size


def check_size(size: tuple[int, int]) -> None:
    # 500x375 jittered by +-20% per side, either orientation.
    long, short = max(size), min(size)
    assert 400 <= long <= 600
    assert 300 <= short <= 450


@pytest.fixture
def small_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files of 10 rows in row groups of 4, so a few rows cover several files."""
    monkeypatch.setattr(datagen, "ROWS_PER_FILE", 10)
    monkeypatch.setattr(datagen, "ROWS_PER_ROW_GROUP", 4)


def test_same_seed_gives_identical_bytes_for_any_worker_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(datagen, "MIN_ROWS_PER_WORKER", 1)  # use the pool for 40 rows
    generate(tmp_path / "a", 40, "webdataset", seed=7, workers=1)
    generate(tmp_path / "b", 40, "webdataset", seed=7, workers=2)
    generate(tmp_path / "c", 40, "webdataset", seed=8, workers=1)
    assert digests(tmp_path / "a") == digests(tmp_path / "b")
    assert digests(tmp_path / "a") != digests(tmp_path / "c")


def test_parquet_layout(tmp_path: Path, small_files: None) -> None:
    result = generate(tmp_path / "out", 25, "parquet", seed=1)
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert result.rows == 25
    assert result.paths == [str(tmp_path / "out" / n) for n in names]
    assert result.bytes == sum((tmp_path / "out" / n).stat().st_size for n in names)

    first = pq.ParquetFile(tmp_path / "out" / "part-00000.parquet")
    assert first.metadata.num_rows == 10
    assert first.metadata.num_row_groups == 3  # 4 + 4 + 2
    table = pq.read_table(tmp_path / "out")
    assert table.schema == pa.schema(
        [("id", pa.string()), ("image", pa.binary()), ("source", pa.string())]
    )
    ids = table.column("id").to_pylist()
    assert sorted(ids) == [f"img-{i:06d}" for i in range(25)]
    assert set(table.column("source").to_pylist()) <= set(datagen.SOURCES)
    for data in table.column("image").to_pylist():
        check_size(check_jpeg(data))


def test_sources_are_natural_photos_found_in_installed_packages() -> None:
    paths = source_paths()
    assert set(paths) == set(datagen.SOURCES)
    assert {"astronaut", "chelsea", "coffee", "rocket", "grace_hopper"} <= set(paths)
    assert all(p.is_file() for p in paths.values())


def test_parquet_array_layout(tmp_path: Path, small_files: None) -> None:
    generate(tmp_path / "out", 12, "parquet-array", seed=2)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "part-00000.parquet",
        "part-00001.parquet",
    ]
    table = pq.read_table(tmp_path / "out")
    image_type = table.schema.field("image").type
    assert isinstance(image_type, pa.FixedShapeTensorType)
    assert image_type.extension_name == "arrow.fixed_shape_tensor"
    assert image_type.value_type == pa.uint8()
    assert image_type.shape == [256, 256, 3]
    images = table.column("image").combine_chunks().to_numpy_ndarray()
    assert images.shape == (12, 256, 256, 3)
    assert images.dtype == np.uint8
    assert images.std() > 10  # real photo content, not a constant fill


@pytest.mark.ray
def test_parquet_array_reads_back_through_ray(tmp_path: Path, ray_session: None) -> None:
    import ray.data

    generate(tmp_path / "out", 6, "parquet-array", seed=3)
    expected = pq.read_table(tmp_path / "out")
    ds = ray.data.read_parquet(str(tmp_path / "out"))
    # Ray 2.60 keeps Arrow's canonical type in the schema as it is ...
    assert isinstance(ds.schema().base_schema.field("image").type, pa.FixedShapeTensorType)
    batch = ds.take_batch(6)  # one small file: one block, rows in file order
    # ... and hands numpy batches one stacked uint8 array.
    assert batch["image"].dtype == np.uint8
    assert batch["image"].shape == (6, 256, 256, 3)
    assert list(batch["id"]) == expected.column("id").to_pylist()
    np.testing.assert_array_equal(
        batch["image"], expected.column("image").combine_chunks().to_numpy_ndarray()
    )


def test_folder_layout_matches_parquet_bytes(tmp_path: Path) -> None:
    generate(tmp_path / "folder", 15, "folder", seed=4)
    generate(tmp_path / "parquet", 15, "parquet", seed=4)
    table = pq.read_table(tmp_path / "parquet").to_pylist()
    files = sorted((tmp_path / "folder").rglob("*.jpg"))
    assert len(files) == 15
    by_id = {row["id"]: row for row in table}
    for path in files:
        row = by_id[path.stem]
        assert path.parent.name == row["source"]
        # The image does not depend on the layout it is written in.
        assert path.read_bytes() == row["image"]
        check_size(check_jpeg(path.read_bytes()))


def test_webdataset_layout(tmp_path: Path, small_files: None) -> None:
    generate(tmp_path / "out", 13, "webdataset", seed=5)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "shard-000000.tar",
        "shard-000001.tar",
    ]
    with tarfile.open(tmp_path / "out" / "shard-000001.tar") as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == [
            f"img-{i:06d}.{ext}" for i in range(10, 13) for ext in ("jpg", "json")
        ]
        for jpg, meta in zip(members[::2], members[1::2], strict=True):
            check_size(check_jpeg(tar.extractfile(jpg).read()))
            assert json.loads(tar.extractfile(meta).read())["source"] in datagen.SOURCES


def test_refuses_non_empty_output_unless_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    generate(out, 2, "parquet")  # an empty directory is fine
    (out / "stale.txt").write_text("old")
    with pytest.raises(InputError, match="already exists"):
        generate(out, 2, "parquet")
    generate(out, 2, "parquet", overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["part-00000.parquet"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"format": "parket"}, "did you mean 'parquet'"),
        ({"rows": 0}, "at least 1"),
        ({"seed": -1}, "zero or positive"),
        ({"workers": 0}, "workers must be at least 1"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    arguments = {"rows": 2, **kwargs}
    with pytest.raises(InputError, match=message):
        generate(tmp_path / "out", **arguments)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("out", ["", " ", "file://"])
def test_an_empty_output_is_refused_not_taken_for_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], out: str
) -> None:
    # An unset variable (`infer-run datagen "$OUT" ... --overwrite`) emptied the folder
    # infer-run was started from: pyarrow takes an empty path for it.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(InputError, match="OUT is empty"):
        generate(out, 2, overwrite=True)
    with pytest.raises(SystemExit) as exited:
        cli.main(["datagen", out, "--rows", "2", "--overwrite"])
    assert exited.value.code == ExitCode.USAGE_ERROR
    assert "argument out: must not be empty" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious.txt"]


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    datagen.add_arguments(parser)
    argv = [str(tmp_path / "out"), "--rows", "3", "--format", "folder", "--seed", "9"]
    assert datagen.main(parser.parse_args(argv)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"datagen: 3 rows (folder, seed 9) -> {tmp_path / 'out'}: 3 files")
    with pytest.raises(InputError, match="--overwrite"):
        datagen.main(parser.parse_args(argv))
    assert datagen.main(parser.parse_args([*argv, "--overwrite"])) == 0


def test_writes_to_s3(
    tmp_path: Path, s3_server: S3Server, s3_bucket: str, small_files: None
) -> None:
    storage = s3_server.storage
    result = generate(f"s3://{s3_bucket}/data/", 12, "webdataset", seed=6, storage=storage)
    assert result.paths == [
        f"s3://{s3_bucket}/data/shard-000000.tar",
        f"s3://{s3_bucket}/data/shard-000001.tar",
    ]
    generate(tmp_path / "local", 12, "webdataset", seed=6)
    fs, _ = filesystem_for(f"s3://{s3_bucket}", storage)
    for name in ("shard-000000.tar", "shard-000001.tar"):
        with fs.open_input_stream(f"{s3_bucket}/data/{name}") as stream:
            assert stream.read() == (tmp_path / "local" / name).read_bytes()
    assert result.bytes == sum(fs.get_file_info(p[len("s3://") :]).size for p in result.paths)
    with pytest.raises(InputError, match="already exists"):
        generate(f"s3://{s3_bucket}/data", 1, storage=storage)
