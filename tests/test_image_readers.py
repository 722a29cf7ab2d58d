"""The image readers on real files: photos from scikit-image and matplotlib, encoded by PIL."""

from __future__ import annotations

import io
import json
import math
import tarfile
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray.data
import skimage
from PIL import Image

from framework.errors import InputError
from framework.plugins import load_registry
from plugins.images import ImageFolderReader, ImageParquetReader, WebDatasetReader
from plugins.images.image_columns import flat_to_tensor, null_tensors_flagged

pytestmark = pytest.mark.ray

# Not square, so a transposed height and width cannot pass for the right array.
HEIGHT, WIDTH = 24, 32

SKIMAGE_DATA = Path(skimage.__file__).parent / "data"
PHOTO_FILES = {
    "astronaut": SKIMAGE_DATA / "astronaut.png",
    "chelsea": SKIMAGE_DATA / "chelsea.png",
    "coffee": SKIMAGE_DATA / "coffee.png",
    "rocket": SKIMAGE_DATA / "rocket.jpg",
    "hopper": Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg",
}


def load_photos() -> dict[str, np.ndarray]:
    """Each sample photo as a small RGB uint8 array."""
    photos = {}
    for name, file in PHOTO_FILES.items():
        with Image.open(file) as image:
            small = image.convert("RGB").resize((WIDTH, HEIGHT))
        photos[name] = np.asarray(small, dtype=np.uint8)
    return photos


def encode(pixels: np.ndarray, fmt: str) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=fmt)
    return out.getvalue()


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for relative, data in files.items():
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def image_tree(photos: dict[str, np.ndarray]) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """(images the folder reader must return by id, files it must skip)."""
    images = {
        "astronaut.png": encode(photos["astronaut"], "PNG"),
        "cats/Chelsea.JPG": encode(photos["chelsea"], "JPEG"),
        "cats/deep/coffee 1.jpeg": encode(photos["coffee"], "JPEG"),
        "rocket.jpg": encode(photos["rocket"], "JPEG"),
        "people/hopper.webp": encode(photos["hopper"], "WEBP"),
    }
    skipped = {
        "notes.txt": b"not an image",
        "cats/deep/data.npy": photos["coffee"].tobytes(),
        "cats/._Chelsea.JPG": b"macOS resource fork",
        ".cache/rocket.jpg": encode(photos["rocket"], "JPEG"),
    }
    return images, skipped


def make_shard(path: Path, members: Iterable[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def shard_samples(photos: dict[str, np.ndarray]) -> tuple[list[list[tuple[str, bytes]]], dict]:
    """Members of two shards, and the image each sample key must come out with."""
    # macOS's tar adds a "._" AppleDouble member before each file it archives, and a
    # folder may hold a .DS_Store: hidden members, not samples (Ray keyed them all "train/").
    apple_double = b"\x00\x05\x16\x07 Mac OS X extended attributes"
    first = [
        ("train/._000.cls", apple_double),
        ("train/000.cls", b"3"),
        ("train/._000.jpg", apple_double),
        ("train/000.jpg", encode(photos["astronaut"], "JPEG")),
        ("train/001.json", b'{"label": 1}'),
        ("train/._001.PNG", apple_double),
        ("train/001.PNG", encode(photos["chelsea"], "PNG")),
        ("train/001.jpg", encode(photos["coffee"], "JPEG")),
        ("train/002.txt", b"a caption and no image"),
        ("train/.DS_Store", b"Bud1 finder settings"),
    ]
    second = [
        ("train/003.seg.png", encode(photos["rocket"], "PNG")),
        ("train/004.webp", encode(photos["hopper"], "WEBP")),
    ]
    expected = {
        "train/000": dict(first)["train/000.jpg"],
        "train/001": dict(first)["train/001.PNG"],  # the first image member in tar order wins
        "train/002": b"",  # kept, so the decode stage can fail it under its id
        "train/003": second[0][1],
        "train/004": second[1][1],
    }
    return [first, second], expected


def rows(ds: ray.data.Dataset) -> dict[Any, dict[str, Any]]:
    """Every row by id, through numpy batches as the stages see them."""
    out: dict[Any, dict[str, Any]] = {}
    for batch in ds.iter_batches(batch_format="numpy", batch_size=3):
        for i, key in enumerate(batch["id"]):
            key = key.item() if isinstance(key, np.generic) else key
            assert key not in out, f"duplicate id {key!r}"
            out[key] = {name: column[i] for name, column in batch.items()}
    return out


def tensor_batches(ds: ray.data.Dataset) -> dict[Any, np.ndarray]:
    """Images by id, checking every batch holds them as one [N, H, W, 3] uint8 array."""
    out = {}
    for batch in ds.iter_batches(batch_format="numpy", batch_size=2):
        images = batch["image"]
        assert images.dtype == np.uint8
        assert images.shape == (len(batch["id"]), HEIGHT, WIDTH, 3)
        for key, image in zip(batch["id"], images, strict=True):
            out[key.item() if isinstance(key, np.generic) else key] = image
    return out


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return load_photos()


def test_readers_are_registered() -> None:
    registry = load_registry()
    for name, cls in (
        ("image_parquet", ImageParquetReader),
        ("image_folder", ImageFolderReader),
        ("webdataset", WebDatasetReader),
    ):
        entry = registry.find("reader", name)
        assert entry is not None and entry.cls is cls and entry.plugin == "images"


# --- image_folder -------------------------------------------------------------------


def test_folder_reads_images_recursively_with_relative_ids(ray_session, tmp_path, photos):
    images, skipped = image_tree(photos)
    write_tree(tmp_path, {**images, **skipped})
    assert ImageFolderReader.check({"path": str(tmp_path)}) == []

    got = rows(ImageFolderReader(path=str(tmp_path)).read())

    assert sorted(got) == sorted(images)
    for key, row in got.items():
        assert set(row) == {"id", "image"}
        assert isinstance(key, str)
        assert bytes(row["image"]) == images[key], key


def test_folder_extensions_are_case_insensitive(ray_session, tmp_path, photos):
    images, skipped = image_tree(photos)
    write_tree(tmp_path, {**images, **skipped})

    got = rows(ImageFolderReader(path=f"{tmp_path}/", extensions=[".JPG", "jpeg"]).read())

    assert sorted(got) == ["cats/Chelsea.JPG", "cats/deep/coffee 1.jpeg", "rocket.jpg"]


def test_folder_check_reports_missing_file_and_empty(tmp_path, photos):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "notes.txt").write_text("no images here")
    (tmp_path / "one.png").write_bytes(encode(photos["coffee"], "PNG"))

    assert ImageFolderReader.check({"path": str(tmp_path / "nope")}) == [
        f"path: no such directory {tmp_path / 'nope'}"
    ]
    assert ImageFolderReader.check({"path": str(tmp_path / "one.png")}) == [
        f"path: {tmp_path / 'one.png'} is a file, not a directory"
    ]
    assert ImageFolderReader.check({"path": str(tmp_path / "empty")}) == [
        "path: no image files (jpg, jpeg, png, bmp, webp, tif, tiff, gif) "
        f"under {tmp_path / 'empty'}"
    ]
    assert ImageFolderReader.check({"path": str(tmp_path), "extensions": "png"}) == [
        "extensions: expected a non-empty list such as [jpg, png], got 'png'"
    ]
    assert ImageFolderReader.check({"path": str(tmp_path), "extensions": ["gif"]}) == [
        f"path: no image files (gif) under {tmp_path}"
    ]
    # An empty list read every default extension instead, without a word.
    assert ImageFolderReader.check({"path": str(tmp_path), "extensions": []}) == [
        "extensions: expected a non-empty list such as [jpg, png], got []"
    ]
    assert WebDatasetReader.check({"path": str(tmp_path), "extensions": []}) == [
        "extensions: expected a non-empty list such as [jpg, png], got []"
    ]


# --- image_parquet ------------------------------------------------------------------


def test_parquet_with_encoded_images(ray_session, tmp_path, photos):
    names = sorted(photos)
    encoded = [encode(photos[n], "PNG" if i % 2 else "JPEG") for i, n in enumerate(names)]
    table = pa.table(
        {
            "key": pa.array(range(10, 10 + len(names)), pa.int64()),
            "jpeg": pa.array(encoded, pa.binary()),
            "label": names,
            "unused": [0.5] * len(names),
        }
    )
    pq.write_table(table, tmp_path / "part-0.parquet", row_group_size=2)
    params = {"path": str(tmp_path), "image_column": "jpeg", "id_column": "key"}
    assert ImageParquetReader.check(params) == []

    got = rows(ImageParquetReader(**params).read())
    assert sorted(got) == list(range(10, 10 + len(names)))
    assert all(set(row) == {"id", "image"} for row in got.values())
    assert [bytes(got[10 + i]["image"]) for i in range(len(names))] == encoded

    with_label = rows(ImageParquetReader(**params, columns=["label"]).read())
    assert {key: row["label"] for key, row in with_label.items()} == {
        10 + i: name for i, name in enumerate(names)
    }
    assert all(set(row) == {"id", "image", "label"} for row in with_label.values())


def test_a_parquet_file_without_a_column_of_columns_is_unreadable(ray_session, tmp_path):
    # Outside a run, an unreadable input stops the read, as under errors.policy=fail.
    png = encode(np.zeros((4, 4, 3), np.uint8), "PNG")
    pq.write_table(
        pa.table({"id": ["a"], "image": [png], "label": ["cat"]}), tmp_path / "a.parquet"
    )
    pq.write_table(pa.table({"id": ["b"], "image": [png]}), tmp_path / "b.parquet")
    reader = ImageParquetReader(path=str(tmp_path), columns=["label"])
    with pytest.raises(InputError) as raised:
        reader.read()
    assert str(raised.value) == (
        f"reader: cannot read {tmp_path / 'b.parquet'}: MissingColumn: it has no column "
        "'label' of reader.columns (columns: id, image)"
    )
    assert sorted(rows(ImageParquetReader(path=str(tmp_path)).read())) == ["a", "b"]


def test_parquet_with_hugging_face_image_structs(ray_session, tmp_path, photos):
    encoded = {name: encode(pixels, "PNG") for name, pixels in photos.items()}
    images = pa.array(
        [{"bytes": data, "path": f"{name}.png"} for name, data in encoded.items()],
        pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
    )
    pq.write_table(pa.table({"id": list(encoded), "image": images}), tmp_path / "hf.parquet")

    got = rows(ImageParquetReader(path=str(tmp_path / "hf.parquet")).read())
    assert {key: bytes(row["image"]) for key, row in got.items()} == encoded


def pixels_table(photos: dict[str, np.ndarray], column: pa.Array) -> pa.Table:
    return pa.table({"id": list(photos), "image": column})


def test_parquet_with_canonical_tensors(ray_session, tmp_path, photos):
    stack = np.stack(list(photos.values()))
    column = pa.FixedShapeTensorArray.from_numpy_ndarray(stack)
    pq.write_table(pixels_table(photos, column), tmp_path / "t.parquet", row_group_size=3)
    assert ImageParquetReader.check({"path": str(tmp_path)}) == []

    got = tensor_batches(ImageParquetReader(path=str(tmp_path), num_blocks=2).read())
    assert sorted(got) == sorted(photos)
    for name, pixels in photos.items():
        np.testing.assert_array_equal(got[name], pixels)


def test_parquet_with_ray_tensors_as_in_the_ray_benchmark(ray_session, tmp_path, photos):
    # The benchmark's data set was written by Ray: its tensor extension type, under "image".
    items = [{"ident": name, "pixels": pixels} for name, pixels in photos.items()]
    ray.data.from_items(items).write_parquet(str(tmp_path))
    params = {"path": str(tmp_path), "image_column": "pixels", "id_column": "ident"}
    assert ImageParquetReader.check(params) == []

    got = tensor_batches(ImageParquetReader(**params).read())
    for name, pixels in photos.items():
        np.testing.assert_array_equal(got[name], pixels)


@pytest.mark.parametrize(
    "make_column",
    [
        lambda flat: pa.array(list(flat), pa.list_(pa.uint8())),
        lambda flat: pa.array(list(flat), pa.large_list(pa.uint8())),
        lambda flat: pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1]),
    ],
    ids=["list", "large_list", "fixed_size_list"],
)
def test_parquet_with_flat_pixels_and_shape(ray_session, tmp_path, photos, make_column):
    flat = np.stack([p.reshape(-1) for p in photos.values()])
    pq.write_table(
        pixels_table(photos, make_column(flat)), tmp_path / "f.parquet", row_group_size=2
    )
    params = {"path": str(tmp_path / "f.parquet"), "shape": [HEIGHT, WIDTH, 3]}
    assert ImageParquetReader.check(params) == []

    got = tensor_batches(ImageParquetReader(**params).read())
    assert sorted(got) == sorted(photos)
    for name, pixels in photos.items():
        np.testing.assert_array_equal(got[name], pixels)


def test_flat_pixels_that_cannot_fill_the_shape_are_flagged_not_dropped(photos):
    # The conversion Ray runs in the read tasks, called here directly to keep the test fast.
    flat = [p.reshape(-1) for p in photos.values()]
    ids = list(photos)
    flat[2] = flat[2][:-3]
    table = pixels_table(photos, pa.array([list(f) for f in flat], pa.list_(pa.uint8())))
    shape = (HEIGHT, WIDTH, 3)

    out = flat_to_tensor(table, column="image", id_column="id", shape=shape)
    assert out.num_rows == len(ids)
    reasons = out["_error"].to_pylist()
    assert reasons[2] == "'image' holds 2301 values, shape [24, 32, 3] needs 2304"
    assert [r for i, r in enumerate(reasons) if i != 2] == [""] * (len(ids) - 1)
    pixels = out["image"].combine_chunks().to_numpy_ndarray()
    for i, name in enumerate(ids):
        expected = np.zeros(shape, np.uint8) if i == 2 else photos[name]
        np.testing.assert_array_equal(pixels[i], expected)

    missing = table.set_column(1, "image", pa.array([None, *flat[:1] * 4], pa.list_(pa.uint8())))
    out = flat_to_tensor(missing, column="image", id_column="id", shape=shape)
    assert out["_error"].to_pylist()[0] == "'image' holds null, shape [24, 32, 3] needs 2304"

    holes = pa.array([list(f) for f in flat[:2]] + [[None] * 2304] * 3, pa.list_(pa.uint8()))
    out = flat_to_tensor(
        table.set_column(1, "image", holes), column="image", id_column="id", shape=shape
    )
    assert out["_error"].to_pylist() == ["", ""] + ["'image' holds null pixel values"] * 3

    clean = [p.reshape(-1) for p in photos.values()]
    table = pixels_table(photos, pa.array([list(f) for f in clean], pa.list_(pa.uint8())))
    assert (
        "_error"
        not in flat_to_tensor(table, column="image", id_column="id", shape=shape).column_names
    )

    empty = flat_to_tensor(table.slice(0, 0), column="image", id_column="id", shape=shape)
    assert empty.num_rows == 0 and empty.schema.field("image").type.shape == list(shape)


def test_null_rows_of_a_tensor_column_are_flagged_not_the_read_stopped(photos):
    # Ray's conversion to numpy refuses a tensor column holding a null: the whole read
    # stopped ("storage kept failing") over one missing image, as a left join leaves.
    stack = np.stack(list(photos.values()))
    whole = pa.FixedShapeTensorArray.from_numpy_ndarray(stack)
    holed = pa.ExtensionArray.from_storage(
        whole.type,
        pa.FixedSizeListArray.from_arrays(
            whole.storage.values,
            math.prod(stack.shape[1:]),
            mask=pa.array([i in (1, 4) for i in range(5)]),
        ),
    )
    out = null_tensors_flagged(pixels_table(photos, holed), column="image", id_column="id")
    reasons = out["_error"].to_pylist()
    assert reasons[1] == reasons[4] == "'image' holds null, shape [24, 32, 3] needs 2304"
    assert [reasons[i] for i in (0, 2, 3)] == ["", "", ""]
    pixels = out["image"].combine_chunks().to_numpy_ndarray()
    for i, name in enumerate(photos):
        expected = np.zeros_like(stack[0]) if i in (1, 4) else photos[name]
        np.testing.assert_array_equal(pixels[i], expected)

    table = pixels_table(photos, whole)
    assert null_tensors_flagged(table, column="image", id_column="id") is table


def test_whole_flat_pixels_become_the_tensor_without_a_copy(photos):
    # 1,000 rows of 256x256 pixels are 196 MB a read task used to copy twice, plus 1.5 GB
    # of per-pixel row indices; whole rows (the usual case) are now used as read.
    flat = np.stack([p.reshape(-1) for p in photos.values()])
    table = pixels_table(photos, pa.array(list(flat), pa.list_(pa.uint8())))
    out = flat_to_tensor(table, column="image", id_column="id", shape=(HEIGHT, WIDTH, 3))
    storage = out["image"].chunk(0).storage  # combine_chunks() would copy
    read = table["image"].chunk(0).values
    assert storage.values.buffers()[1].address == read.buffers()[1].address
    np.testing.assert_array_equal(
        out["image"].combine_chunks().to_numpy_ndarray()[1], flat[1].reshape(HEIGHT, WIDTH, 3)
    )


def test_parquet_check_reports_layout_problems(tmp_path):
    table = pa.table(
        {
            "id": ["a"],
            "name": ["x"],
            "ints": pa.array([[1, 2, 3, 4]], pa.list_(pa.int32())),
            "flat": pa.array([[1, 2, 3, 4, 5, 6]], pa.list_(pa.uint8())),
            "fixed": pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(6, np.uint8)), 6),
            "floats": pa.FixedShapeTensorArray.from_numpy_ndarray(np.zeros((1, 2, 2), np.float32)),
            "score": [0.5],
            "image": pa.array([b"\x89PNG"], pa.binary()),
        }
    )
    path = str(tmp_path / "p.parquet")
    pq.write_table(table, path)

    def check(**params: Any) -> list[str]:
        return ImageParquetReader.check({"path": path, **params})

    assert check() == []
    assert check(path=str(tmp_path / "none")) == [
        f"path: no such file or directory {tmp_path / 'none'}"
    ]
    assert check(image_column="img") == [
        f"image_column: {path} has no column 'img' "
        "(columns: id, name, ints, flat, fixed, floats, score, image)"
    ]
    assert check(image_column="flat") == [
        "image_column: column 'flat' is list<element: uint8>, flat pixels: "
        "give shape: [height, width, channels]"
    ]
    assert check(image_column="flat", shape=[1, 2, 3]) == []
    assert check(image_column="fixed", shape=[2, 2]) == [
        "image_column: column 'fixed' holds 6 values per row, shape [2, 2] needs 4"
    ]
    assert check(image_column="ints", shape=[2, 2]) == [
        "image_column: column 'ints' is list<element: int32>; image arrays must be uint8"
    ]
    assert check(image_column="floats") == [
        "image_column: column 'floats' holds float tensors; image arrays must be uint8"
    ]
    assert check(image_column="score") == [
        "image_column: column 'score' is double: expected encoded image bytes or uint8 arrays"
    ]
    assert check(shape=[2, 2]) == [
        "image_column: column 'image' is binary; shape: applies only to list columns of pixels"
    ]
    assert check(shape=[0, 2]) == [
        "shape: expected [height, width] or [height, width, channels], got [0, 2]"
    ]
    assert check(id_column="score") == [
        "id_column: column 'score' is double; ids must be strings or integers"
    ]
    assert check(columns="name") == ["columns: expected a list of column names, got 'name'"]
    assert check(image_column="id") == ["image_column: must name a different column than id_column"]
    assert check(image_column="name", columns=["image"]) == [
        "columns: 'image' would clash with the output column 'image'"
    ]


# --- webdataset -----------------------------------------------------------------------


def test_webdataset_reads_keys_and_first_image_member(ray_session, tmp_path, photos):
    shards, expected = shard_samples(photos)
    make_shard(tmp_path / "shard-000000.tar", shards[0])
    make_shard(tmp_path / "shard-000001.tar", shards[1])
    (tmp_path / "README.md").write_text("shards of a test set")
    assert WebDatasetReader.check({"path": str(tmp_path)}) == []

    got = rows(WebDatasetReader(path=str(tmp_path)).read())

    assert sorted(got) == sorted(expected)
    for key, row in got.items():
        assert set(row) == {"id", "image"}
        assert bytes(row["image"]) == expected[key], key


def test_webdataset_reads_a_list_of_shards_gzipped_or_not(ray_session, tmp_path, photos):
    shards, expected = shard_samples(photos)
    make_shard(tmp_path / "a.tar", shards[0])
    zipped = tmp_path / "c.tgz"
    with tarfile.open(zipped, "w:gz") as tar:
        for name, data in shards[1]:
            info = tarfile.TarInfo(name.replace("train/", "val/"))
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    paths = [str(tmp_path / "a.tar"), str(zipped)]
    assert WebDatasetReader.check({"path": paths}) == []

    got = rows(WebDatasetReader(path=paths, extensions=["jpg", "webp"]).read())

    assert sorted(got) == ["train/000", "train/001", "train/002", "val/003", "val/004"]
    assert (
        bytes(got["train/001"]["image"]) == dict(shards[0])["train/001.jpg"]
    )  # the .PNG is not asked for
    assert bytes(got["val/003"]["image"]) == b""
    assert bytes(got["val/004"]["image"]) == expected["train/004"]


def test_webdataset_check_reports_missing_wrong_and_empty(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no shards")
    (tmp_path / "data.zip").write_bytes(b"PK")

    assert WebDatasetReader.check({"path": [str(tmp_path / "x.tar"), str(tmp_path / "empty")]}) == [
        f"path: no such file or directory {tmp_path / 'x.tar'}",
        f"path: no tar shards (tar, tar.gz, tgz) under {tmp_path / 'empty'}",
    ]
    assert WebDatasetReader.check({"path": str(tmp_path / "data.zip")}) == [
        f"path: {tmp_path / 'data.zip'} is not a tar shard (tar, tar.gz, tgz)"
    ]
    assert WebDatasetReader.check({"path": [str(tmp_path), "s3://bucket/shards"]}) == [
        "path: all paths must use the same storage, got file, s3"
    ]


# --- inputs that must not vanish ------------------------------------------------------


def run_spec(tmp_path: Path, reader: str, policy: str, out: str = "out") -> int:
    """A run of ``reader`` straight to parquet (ids and image bytes), under ``policy``."""
    from framework.cli import main

    spec = tmp_path / f"{out}.yaml"
    spec.write_text(
        f"errors: {{policy: {policy}}}\nreader: {reader}\n"
        f"writer: {{type: parquet, path: {tmp_path / out}}}\n"
    )
    return main([str(spec)])


def run_outcome(out: Path) -> tuple[dict[str, bytes], dict[str, dict], list[str]]:
    """(image bytes written by id, dead letters by id, the report's unreadable inputs)."""
    table = pq.read_table(out, columns=["id", "image"])
    written = dict(zip(table["id"].to_pylist(), table["image"].to_pylist(), strict=True))
    dead = {
        record["id"]: record
        for file in sorted((out / "_dead_letter").glob("*.jsonl"))
        for record in map(json.loads, file.read_text().splitlines())
    }
    report = json.loads((out / "_infer_run_report.json").read_text())
    return written, dead, report["errors"]["unreadable_inputs"]


def cut_before_third_sample(keys: list[str], images: list[bytes]) -> bytes:
    """A tar archive of one image per key, cut just before the third sample's header:
    whole 512-byte blocks, so its size looks like a whole archive's."""
    whole = io.BytesIO()
    starts = []
    with tarfile.open(fileobj=whole, mode="w") as tar:
        for key, data in zip(keys, images, strict=False):
            starts.append(tar.offset)
            info = tarfile.TarInfo(f"{key}.jpg")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert starts[2] % 512 == 0 and len(whole.getvalue()) > starts[2] + 512
    return whole.getvalue()[: starts[2]]


def test_shards_cut_at_a_member_boundary_are_reported_not_read_as_whole(
    ray_session, tmp_path, photos, capsys
):
    from framework.errors import ExitCode

    images = [encode(pixels, "JPEG") for pixels in photos.values()]
    shards = tmp_path / "shards"
    shards.mkdir()
    # Whole shards as Python's tarfile writes them (end marker, record padding) read fully,
    # a "?" in the name included (Ray's file_extensions would drop it).
    make_shard(shards / "whole.tar", [(f"w{i}.jpg", data) for i, data in enumerate(images)])
    make_shard(shards / "what?.tar", [("q0.jpg", images[0])])
    (shards / "cut.tar").write_bytes(cut_before_third_sample(["c0", "c1", "c2"], images))
    # The same cut in a gzip stream that stops there, as a .tgz (Arrow does not take that
    # name for gzip, and tarfile's own gzip reading ends quietly where the data does).
    packer = zlib.compressobj(wbits=31)
    cut = cut_before_third_sample(["z0", "z1", "z2"], images)
    (shards / "cut.tgz").write_bytes(packer.compress(cut) + packer.flush(zlib.Z_SYNC_FLUSH))

    assert run_spec(tmp_path, f"{{type: webdataset, path: {shards}}}", "skip") == ExitCode.OK
    written, dead, unreadable = run_outcome(tmp_path / "out")
    whole = {f"w{i}": data for i, data in enumerate(images)} | {"q0": images[0]}
    before_cut = {"c0": images[0], "c1": images[1]}
    # Arrow's gzip stream may fail the read holding the data before the cut.
    assert {k: v for k, v in written.items() if not k.startswith("z")} == whole | before_cut
    assert set(written) - set(whole) - set(before_cut) <= {"z0", "z1"}
    bad = [str(shards / "cut.tar"), str(shards / "cut.tgz")]
    assert sorted(unreadable) == sorted(dead) == bad
    assert {record["stage"] for record in dead.values()} == {"reader"}
    assert dead[bad[0]]["message"] == (
        "cut short: no end-of-archive marker (two zero 512-byte blocks) (2 samples read before it)"
    )
    assert dead[bad[1]]["message"].startswith("Truncated compressed stream")

    capsys.readouterr()
    failing = f"{{type: webdataset, path: {shards / 'cut.tar'}}}"
    assert run_spec(tmp_path, failing, "fail", out="out2") == ExitCode.INPUT_ERROR
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"infer-run: error: reader: cannot read {shards / 'cut.tar'}: ReadError: cut short: "
        "no end-of-archive marker (two zero 512-byte blocks) (2 samples read before it)"
    )


def test_folder_reads_images_with_a_question_mark_in_their_name(ray_session, tmp_path, photos):
    from framework.errors import ExitCode

    images = {
        "plain.jpg": encode(photos["rocket"], "JPEG"),
        "q?.jpg": encode(photos["chelsea"], "JPEG"),
        "sub/why?not.png": encode(photos["coffee"], "PNG"),
        "a.jpg?b.png": encode(photos["hopper"], "PNG"),
        "odd #1 [x] %20 é.jpg": encode(photos["astronaut"], "JPEG"),
    }
    root = tmp_path / "images"
    write_tree(root, {**images, "notes?.txt": b"not an image", "x.jpg?v=2": b"nor this"})

    assert run_spec(tmp_path, f"{{type: image_folder, path: {root}}}", "skip") == ExitCode.OK
    written, dead, unreadable = run_outcome(tmp_path / "out")
    assert written == images
    assert (dead, unreadable) == ({}, [])


# Ray Data reads a path as a URL, and a glob pattern is a path with *, ? or [ in it.
SPECIAL_NAMES = ["photos?", "photos;", "a*b", "c[1]", "d#e", "f%41", "g?h"]


def test_folders_named_with_url_and_glob_characters_are_read_as_named(
    ray_session, tmp_path, photos
):
    # "photos?" and "photos;" passed the check and were read as "photos": a
    # FileNotFoundError traceback, or, with a folder "photos" beside them, its images.
    image = encode(photos["rocket"], "JPEG")
    write_tree(tmp_path / "photos", {"decoy.jpg": image})
    for number, name in enumerate(SPECIAL_NAMES):
        root = tmp_path / name
        write_tree(root, {f"img{number}.jpg": image, f"sub?/deep{number}.png": image})
        assert ImageFolderReader.check({"path": str(root)}) == [], name
        got = rows(ImageFolderReader(path=str(root)).read())
        assert sorted(got) == [f"img{number}.jpg", f"sub?/deep{number}.png"], name


@pytest.mark.parametrize(
    "reader",
    [
        "webdataset",
        # Lists as webdataset does and reads through parquet's read_parquet_files.
        pytest.param("image_parquet", marks=pytest.mark.slow),
        "parquet",
        "jsonl",
    ],
)
def test_other_readers_read_folders_named_with_url_and_glob_characters(
    ray_session, tmp_path, photos, reader
):
    reader_class = load_registry().find("reader", reader).cls
    # A path with "?", "*" or "[" is a glob pattern, which matched no file: a spec problem.
    # As written, "photos?" was read as "photos".
    image = encode(photos["rocket"], "JPEG")
    (tmp_path / "photos").mkdir()
    make_shard(tmp_path / "photos" / "decoy.tar", [("decoy.jpg", image)])
    pq.write_table(pa.table({"id": ["decoy"], "image": [image]}), tmp_path / "photos" / "d.parquet")
    (tmp_path / "photos" / "d.jsonl").write_text('{"id": "decoy"}\n')
    for number, name in enumerate(SPECIAL_NAMES):
        root = tmp_path / name
        (root / "sub?").mkdir(parents=True)
        # Below a folder "sub?", Ray Data's parquet read left the files out unrecorded.
        for where, key in ((root, f"top{number}"), (root / "sub?", f"deep{number}")):
            make_shard(where / f"{key}.tar", [(f"{key}.jpg", image)])
            pq.write_table(pa.table({"id": [key], "image": [image]}), where / f"{key}.parquet")
            (where / f"{key}.jsonl").write_text(json.dumps({"id": key}) + "\n")
        assert reader_class.check({"path": str(root)}) == [], name
        got = rows(reader_class(path=str(root)).read())
        assert sorted(got) == [f"deep{number}", f"top{number}"], name


def test_a_file_ray_data_would_read_under_another_name_is_a_spec_problem(tmp_path, photos):
    from plugins.jsonl import JsonlReader
    from plugins.parquet import ParquetReader

    named = tmp_path / "data.jsonl?"
    named.write_text('{"id": "a"}\n')
    problem = (
        f"path: Ray Data cannot read {named} by its name: it reads a path as a URL, and "
        "drops a '?' or ';' at its end - rename it"
    )
    assert JsonlReader.check({"path": str(named)}) == [problem]
    pq.write_table(pa.table({"id": ["a"]}), tmp_path / "data.parquet;")
    assert ParquetReader.check({"path": str(tmp_path / "data.parquet;")}) == [
        problem.replace(str(named), str(tmp_path / "data.parquet;"))
    ]


def test_a_shard_ray_cannot_group_is_an_unreadable_input_not_a_bug(
    ray_session, tmp_path, photos, capsys
):
    from framework.errors import ExitCode

    image = encode(next(iter(photos.values())), "JPEG")
    shards = tmp_path / "shards"
    shards.mkdir()
    make_shard(shards / "good.tar", [("g0.jpg", image), ("g1.jpg", image)])
    # k1's members are not contiguous: Ray's grouping raises ValueError.
    members = [("k1.jpg", image), ("k2.jpg", image), ("k1.cls", b"3"), ("k3.jpg", image)]
    make_shard(shards / "unsorted.tar", members)
    assert run_spec(tmp_path, f"{{type: webdataset, path: {shards}}}", "skip") == ExitCode.OK
    written, dead, unreadable = run_outcome(tmp_path / "out")
    assert set(written) == {"g0", "g1", "k1", "k2"}  # the samples before the problem go on
    assert unreadable == [str(shards / "unsorted.tar")]
    assert "not contiguous" in dead[str(shards / "unsorted.tar")]["message"]


def test_a_symlink_loop_is_one_line_instead_of_a_listing_that_never_ends(tmp_path, photos):
    root = tmp_path / "images"
    (root / "x").mkdir(parents=True)
    (root / "x" / "a.png").write_bytes(encode(next(iter(photos.values())), "PNG"))
    (root / "x" / "up").symlink_to("..")
    (root / "x" / "up2").symlink_to("..")  # two of them: pyarrow's listing never returned
    (root / "same").symlink_to(root / "x")  # a link to a folder, not a loop, is fine
    assert ImageFolderReader.check({"path": str(root)}) == [
        f"path: cannot list {root}: a symlink loop ({root / 'x' / 'up'} -> {root}): remove the link"
    ]
    (root / "x" / "up").unlink()
    (root / "x" / "up2").unlink()
    assert ImageFolderReader.check({"path": str(root)}) == []


def test_a_symlink_loop_in_a_parquet_folder_is_one_line(tmp_path):
    from plugins.parquet import ParquetReader

    data = tmp_path / "data"
    (data / "x").mkdir(parents=True)
    pq.write_table(pa.table({"id": ["a"]}), data / "x" / "a.parquet")
    (data / "x" / "up").symlink_to("..")
    (data / "x" / "up2").symlink_to("..")
    line = (
        f"path: cannot list {data}: a symlink loop ({data / 'x' / 'up'} -> {data}): remove the link"
    )
    assert ParquetReader.check({"path": str(data)}) == [line]
    assert ImageParquetReader.check({"path": str(data)}) == [line]


def test_image_parquet_reads_exactly_the_files_its_check_looked_at(ray_session, tmp_path, photos):
    image = encode(next(iter(photos.values())), "PNG")

    def part(path: Path, ids: list[str]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"id": ids, "image": [image] * len(ids)}), path)

    data = tmp_path / "data"
    part(data / "year=2024" / "a.parquet", ["a"])
    part(data / "year=2024" / "B.PARQUET", ["upper"])  # any case, as Ray Data takes it
    (data / "year=2024" / "README").write_text("no suffix, not parquet: not data")
    # Never read: what macOS leaves beside each file, a job's unfinished output. Ray's own
    # listing read both (it skips such names at the top only), and the footer check did not.
    (data / "year=2024" / "._a.parquet").write_bytes(b"\x00\x05\x16\x07 Mac OS X")
    part(data / "year=2024" / "_temporary" / "0" / "part-9.parquet", ["half"])
    reader = f"{{type: image_parquet, path: {data}}}"
    assert run_spec(tmp_path, reader, "fail") == 0
    written, dead, unreadable = run_outcome(tmp_path / "out")
    assert sorted(written) == ["a", "upper"]
    assert (dead, unreadable) == ({}, [])
    # Hive's names: parquet without the suffix, which the read would silently leave out.
    part(data / "year=2024" / "000000_0", ["hive"])
    part(data / "year=2024" / "000001_0", ["hive2"])
    expected = (
        f"path: {data / 'year=2024' / '000000_0'} and 1 more hold parquet but are not named "
        "*.parquet, so Ray Data would leave them out - rename them to end in .parquet"
    )
    assert ImageParquetReader.check({"path": str(data)}) == [expected]
    from plugins.parquet import ParquetReader

    assert ParquetReader.check({"path": str(data)}) == [expected]


def test_a_dangling_symlink_is_an_unreadable_input_not_a_vanished_image(
    ray_session, tmp_path, photos, capsys
):
    from framework.errors import ExitCode

    image = encode(photos["rocket"], "JPEG")
    root = tmp_path / "images"
    write_tree(root, {"a.jpg": image, "sub/b.jpg": image})
    (root / "gone.jpg").symlink_to(tmp_path / "moved.jpg")  # pyarrow's listing left it out
    (root / "sub" / "up.png").symlink_to("../missing/c.png")
    # Links the read would not have taken anyway, had they led somewhere: no records.
    (root / "sub" / "notes.txt").symlink_to(tmp_path / "notes.txt")
    (root / "sub" / "._d.jpg").symlink_to(tmp_path / "d.jpg")
    (root / "_e.jpg").symlink_to(tmp_path / "e.jpg")
    reader = f"{{type: image_folder, path: {root}}}"

    assert run_spec(tmp_path, reader, "skip") == ExitCode.OK
    written, dead, unreadable = run_outcome(tmp_path / "out")
    assert sorted(written) == ["a.jpg", "sub/b.jpg"]
    links = [str(root / "gone.jpg"), str(root / "sub" / "up.png")]
    assert unreadable == links
    assert {link: (r["stage"], r["error_type"], r["message"]) for link, r in dead.items()} == {
        links[0]: (
            "reader",
            "FileNotFoundError",
            f"a symlink to {tmp_path / 'moved.jpg'}, which does not exist",
        ),
        links[1]: (
            "reader",
            "FileNotFoundError",
            f"a symlink to {root / 'missing' / 'c.png'}, which does not exist",
        ),
    }

    capsys.readouterr()
    assert run_spec(tmp_path, reader, "fail", out="out2") == ExitCode.INPUT_ERROR
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (
        f"infer-run: error: reader: cannot read {links[0]}: FileNotFoundError: a symlink to "
        f"{tmp_path / 'moved.jpg'}, which does not exist"
    )
    assert "Traceback" not in err


def test_a_dangling_symlink_among_shards_is_an_unreadable_input(ray_session, tmp_path, photos):
    from framework.errors import ExitCode

    shards = tmp_path / "shards"
    shards.mkdir()
    make_shard(shards / "good.tar", [("g0.jpg", encode(photos["rocket"], "JPEG"))])
    (shards / "gone.tar").symlink_to(tmp_path / "elsewhere" / "gone.tar")
    assert run_spec(tmp_path, f"{{type: webdataset, path: {shards}}}", "skip") == ExitCode.OK
    written, dead, unreadable = run_outcome(tmp_path / "out")
    assert list(written) == ["g0"]
    assert unreadable == list(dead) == [str(shards / "gone.tar")]
    assert dead[str(shards / "gone.tar")]["error_type"] == "FileNotFoundError"


def test_a_key_in_two_shards_sets_a_shard_aside_as_a_key_repeated_in_one_shard_does(
    ray_session, tmp_path, photos, capsys
):
    from framework.errors import ExitCode

    images = [encode(pixels, "JPEG") for pixels in photos.values()]
    shards = tmp_path / "shards"
    shards.mkdir()
    # Keys restarted in each shard: "s1" and the two samples after it are in both.
    in_a = {f"s{i}": images[i] for i in range(4)}
    in_b = {"only-b": images[1]} | {f"s{i}": images[(i + 2) % 5] for i in (1, 2, 3)}
    make_shard(shards / "a.tar", [(f"{key}.jpg", data) for key, data in in_a.items()])
    make_shard(shards / "b.tar", [(f"{key}.jpg", data) for key, data in in_b.items()])
    make_shard(shards / "c.tar", [("c0.jpg", images[0])])
    # Unasked, keys are taken as unique (checking holds every key in memory): both shards
    # are read whole, and the three keys they share are written twice.
    reader = f"{{type: webdataset, path: {shards}}}"
    assert run_spec(tmp_path, reader, "skip", out="unchecked") == ExitCode.OK
    ids = pq.read_table(tmp_path / "unchecked", columns=["id"])["id"].to_pylist()
    assert len(ids) == 9 and len(set(ids)) == 6
    reader = f"{{type: webdataset, path: {shards}, check_keys: true}}"
    assert run_spec(tmp_path, reader, "skip") == ExitCode.OK
    written, dead, unreadable = run_outcome(tmp_path / "out")
    # Whichever of a.tar and b.tar met "s1" second is set aside from there on, as a shard
    # whose own key comes again is: no id is written twice, no sample taken for another.
    a, b = str(shards / "a.tar"), str(shards / "b.tar")
    assert unreadable in ([a], [b]) and list(dead) == unreadable
    loser = unreadable[0]
    winner, kept = (b, in_b) if loser == a else (a, in_a)
    assert dead[loser]["stage"] == "reader"
    assert dead[loser]["error_type"] == "DuplicateKey"
    assert dead[loser]["message"] == (
        f"sample key 's1' is also in {winner}: sample keys are the rows' ids and must be "
        "unique across shards (1 sample read before it)"
    )
    first = {"s0": in_a["s0"]} if loser == a else {"only-b": in_b["only-b"]}
    assert written == kept | first | {"c0": images[0]}
    # --resume reads both shards again, whichever meets "s1" first: still one row per id.
    from framework.cli import main

    assert main([str(tmp_path / "out.yaml"), "--resume"]) == ExitCode.OK
    ids = pq.read_table(tmp_path / "out", columns=["id"])["id"].to_pylist()
    assert sorted(ids) == sorted(written)

    capsys.readouterr()
    failing = f"{{type: webdataset, path: [{a}, {b}], check_keys: true}}"
    assert run_spec(tmp_path, failing, "fail", out="out2") == ExitCode.INPUT_ERROR
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.splitlines()[-1]
    assert last.startswith("infer-run: error: reader: cannot read ")
    assert "DuplicateKey: sample key 's1' is also in " in last


def test_an_image_member_that_is_a_link_is_a_flagged_row_not_a_vanished_sample(tmp_path):
    """tar stores a file linked twice (or a symlink farm) as link members, which a stream
    read cannot follow: Ray's tar iteration skipped them, and a sample whose image was one
    vanished from the run without a word. Now it is a row flagged in ``_error``."""
    import pyarrow.fs as pafs

    from plugins.images.common import IMAGE_EXTENSIONS
    from plugins.images.webdataset import ShardDatasource

    shard = tmp_path / "s.tar"
    with tarfile.open(shard, "w") as tar:
        for name, data, kind, target in [
            ("000.jpg", b"img0", tarfile.REGTYPE, ""),
            ("001.cls", b"1", tarfile.REGTYPE, ""),
            ("001.jpg", b"", tarfile.LNKTYPE, "000.jpg"),
            ("002.png", b"", tarfile.SYMTYPE, "/photos/2.png"),
            ("003.jpg", b"img3", tarfile.REGTYPE, ""),
        ]:
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.size = kind, target, len(data)
            tar.addfile(info, io.BytesIO(data))
    reported: list[Any] = []
    source = ShardDatasource(
        [str(shard)],
        extensions=IMAGE_EXTENSIONS,
        report_bad_input=lambda *args: reported.append(args),
        scheme="",
        filesystem=pafs.LocalFileSystem(),
    )
    with shard.open("rb") as stream:
        rows = [
            row for table in source._read_stream(stream, str(shard)) for row in table.to_pylist()
        ]
    assert reported == []
    link = "which a streaming read cannot follow - archive the file itself"
    assert rows == [
        {"id": "000", "image": b"img0", "_error": None},
        {
            "id": "001",
            "image": b"",
            "_error": f"{shard}: 001.jpg is a hard link to 000.jpg, {link}",
        },
        {
            "id": "002",
            "image": b"",
            "_error": f"{shard}: 002.png is a symlink to /photos/2.png, {link}",
        },
        {"id": "003", "image": b"img3", "_error": None},
    ]


@pytest.mark.parametrize("reader", [ImageFolderReader, ImageParquetReader, WebDatasetReader])
def test_a_num_blocks_below_one_is_told_beside_the_path_problem(tmp_path, reader):
    # Ray Data refused it only mid-run ("number sections must be larger than 0.").
    found = reader.check({"path": str(tmp_path / "nope"), "num_blocks": 0})
    assert found[0] == "num_blocks: must be at least 1 (null: Ray Data's choice), got 0"
    assert len(found) == 2 and found[1].startswith("path: no such")


def test_folder_check_tells_a_missing_folder_beside_bad_extensions(tmp_path):
    # Only the extensions were told; the missing folder came on the next try.
    assert ImageFolderReader.check({"path": str(tmp_path / "nope"), "extensions": []}) == [
        "extensions: expected a non-empty list such as [jpg, png], got []",
        f"path: no such directory {tmp_path / 'nope'}",
    ]
