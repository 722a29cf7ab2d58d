"""The image readers on ``s3://`` URIs, against moto's S3 server over real HTTP."""

from __future__ import annotations

import functools
import io
import urllib.parse

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from plugins.images import ImageFolderReader, ImageParquetReader, WebDatasetReader
from plugins.jsonl import JsonlReader
from plugins.parquet import ParquetReader
from tests.test_image_readers import (
    HEIGHT,
    WIDTH,
    image_tree,
    load_photos,
    make_shard,
    rows,
    shard_samples,
    tensor_batches,
    write_tree,
)

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return load_photos()


def test_server_listens_on_loopback_and_buckets_start_empty(s3_server, s3_bucket):
    assert urllib.parse.urlsplit(s3_server.endpoint_url).hostname == "127.0.0.1"
    client = s3_server.client()
    assert client.list_objects_v2(Bucket=s3_bucket)["KeyCount"] == 0
    client.put_object(Bucket=s3_bucket, Key="a/b.txt", Body=b"hello")
    assert client.get_object(Bucket=s3_bucket, Key="a/b.txt")["Body"].read() == b"hello"
    storage = s3_server.storage
    storage["region"] = "elsewhere"
    assert s3_server.storage["region"] == "us-east-1"


def test_image_folder_on_s3(ray_session, s3_server, s3_bucket, tmp_path, photos):
    images, skipped = image_tree(photos)
    write_tree(tmp_path, {**images, **skipped})
    s3_server.upload_tree(tmp_path, s3_bucket, "photos/set-1")
    s3_server.client().put_object(Bucket=s3_bucket, Key="photos/other.jpg", Body=b"outside")
    params = {"path": f"s3://{s3_bucket}/photos/set-1/", "storage": s3_server.storage}
    assert ImageFolderReader.check(params) == []

    got = rows(ImageFolderReader(**params).read())

    assert sorted(got) == sorted(images)
    for key, row in got.items():
        assert bytes(row["image"]) == images[key], key


def test_image_parquet_on_s3(ray_session, s3_server, s3_bucket, photos):
    client = s3_server.client()
    names = sorted(photos)
    for part, chunk in enumerate((names[:2], names[2:])):
        table = pa.table(
            {
                "id": chunk,
                "image": pa.FixedShapeTensorArray.from_numpy_ndarray(
                    np.stack([photos[n] for n in chunk])
                ),
            }
        )
        out = io.BytesIO()
        pq.write_table(table, out)
        client.put_object(Bucket=s3_bucket, Key=f"arrays/part-{part}.parquet", Body=out.getvalue())
    params = {"path": f"s3://{s3_bucket}/arrays", "storage": s3_server.storage}
    assert ImageParquetReader.check(params) == []

    got = tensor_batches(ImageParquetReader(**params).read())

    assert sorted(got) == names
    for name in names:
        assert got[name].shape == (HEIGHT, WIDTH, 3)
        np.testing.assert_array_equal(got[name], photos[name])


def assert_shards_read_back(s3_server, bucket, tmp_path, photos, prefix, path) -> None:
    """Shards of ``photos`` uploaded under ``prefix``, read back through ``path``."""
    shards, expected = shard_samples(photos)
    for i, members in enumerate(shards):
        make_shard(tmp_path / f"shard-{i:06d}.tar", members)
    s3_server.upload_tree(tmp_path, bucket, prefix)
    params = {"path": f"s3://{bucket}/{path}", "storage": s3_server.storage}
    assert WebDatasetReader.check(params) == []

    got = rows(WebDatasetReader(**params).read())

    assert {key: bytes(row["image"]) for key, row in got.items()} == expected


def test_webdataset_on_s3(ray_session, s3_server, s3_bucket, tmp_path, photos):
    assert_shards_read_back(s3_server, s3_bucket, tmp_path, photos, "wds", "wds")


def test_anonymous_storage_reads_a_public_bucket_without_signing(
    ray_session, s3_server, s3_bucket, tmp_path, photos
):
    images, _ = image_tree(photos)
    write_tree(tmp_path, images)
    # moto refuses unsigned reads of private objects, as S3 does: these are public.
    s3_server.upload_tree(tmp_path, s3_bucket, "public", ACL="public-read")
    s3_server.upload_tree(tmp_path, s3_bucket, "private")
    storage = {"endpoint_url": s3_server.endpoint_url, "region": "us-east-1", "anonymous": True}
    params = {"path": f"s3://{s3_bucket}/public", "storage": storage}
    requests = s3_server.requests
    requests.signed.clear()

    assert ImageFolderReader.check(params) == []
    got = rows(ImageFolderReader(**params).read())  # listed here, read by Ray's workers

    assert sorted(got) == sorted(images)
    assert requests.signed and not any(requests.signed)  # every request went unsigned
    requests.signed.clear()
    ImageFolderReader.check({**params, "storage": s3_server.storage})
    assert requests.signed and all(requests.signed)  # the log tells the two apart
    private = ImageFolderReader(path=f"s3://{s3_bucket}/private", storage=storage)
    with pytest.raises(Exception, match="ACCESS_DENIED"):
        rows(private.read())


def test_jsonl_on_s3(ray_session, s3_server, s3_bucket):
    lines = "".join(f'{{"key": "k{i}", "x": {i}}}\n' for i in range(5))
    s3_server.client().put_object(Bucket=s3_bucket, Key="rows/part-0.jsonl", Body=lines.encode())
    reader = JsonlReader(path=f"s3://{s3_bucket}/rows", id_column="key", storage=s3_server.storage)
    got = {row["id"]: row["x"] for row in reader.read().take_all()}
    assert got == {f"k{i}": i for i in range(5)}
    # A bucket named as a folder, with or without its "/", and a key of spaces, non-ASCII
    # letters, "+" and "=" (which an HTTP path or query reads otherwise).
    odd = "more/ü x+y=1.jsonl"
    s3_server.client().put_object(Bucket=s3_bucket, Key=odd, Body=b'{"key": "odd", "x": 9}\n')
    for root in (f"s3://{s3_bucket}", f"s3://{s3_bucket}/"):
        reader = JsonlReader(path=root, id_column="key", storage=s3_server.storage)
        got = {row["id"]: row["x"] for row in reader.read().take_all()}
        assert got == {**{f"k{i}": i for i in range(5)}, "odd": 9}, root


def test_checks_on_s3_report_missing_and_empty(s3_server, s3_bucket):
    s3_server.client().put_object(Bucket=s3_bucket, Key="docs/readme.txt", Body=b"no images")
    storage = s3_server.storage

    assert ImageFolderReader.check({"path": f"s3://{s3_bucket}/nope", "storage": storage}) == [
        f"path: no such directory s3://{s3_bucket}/nope"
    ]
    assert ImageFolderReader.check({"path": f"s3://{s3_bucket}/docs", "storage": storage}) == [
        "path: no image files (jpg, jpeg, png, bmp, webp, tif, tiff, gif) "
        f"under s3://{s3_bucket}/docs"
    ]
    assert WebDatasetReader.check({"path": f"s3://{s3_bucket}/docs", "storage": storage}) == [
        f"path: no tar shards (tar, tar.gz, tgz) under s3://{s3_bucket}/docs"
    ]
    assert ImageParquetReader.check({"path": f"s3://{s3_bucket}/nope", "storage": storage}) == [
        f"path: no such file or directory s3://{s3_bucket}/nope"
    ]
    assert ImageFolderReader.check(
        {"path": f"s3://{s3_bucket}/docs", "storage": {**storage, "secret": "x"}}
    ) == [
        "storage.secret: unknown key (known: endpoint_url, region, access_key_id, "
        "secret_access_key, session_token, anonymous)"
    ]


def test_glob_patterns_on_s3(ray_session, s3_server, s3_bucket, tmp_path, photos):
    client = s3_server.client()
    for day, i in (("2024-01", 0), ("2024-02", 1), ("2025-01", 2)):
        line = f'{{"key": "k{i}", "x": {i}}}\n'.encode()
        client.put_object(Bucket=s3_bucket, Key=f"logs/{day}/part.jsonl", Body=line)
    params = {"path": f"s3://{s3_bucket}/logs/2024-*/*.jsonl", "storage": s3_server.storage}
    assert JsonlReader.check(params) == []
    got = JsonlReader(**params, id_column="key").read().take_all()
    assert sorted(row["id"] for row in got) == ["k0", "k1"]
    missing = {**params, "path": f"s3://{s3_bucket}/logs/2023-*/*.jsonl"}
    assert JsonlReader.check(missing) == [f"path: no file matches {missing['path']}"]

    glob = "globbed/shard-*.tar"
    assert_shards_read_back(s3_server, s3_bucket, tmp_path, photos, "globbed", glob)


@pytest.mark.parametrize("reader_class", [ParquetReader, ImageParquetReader])
def test_parquet_readers_name_an_unreadable_file_on_s3_by_its_uri(
    s3_server, s3_bucket, photos, reader_class
):
    """As the spec names it, and as the jsonl and webdataset readers name theirs: the
    dead-letter record, the report and a replay all go by that name."""
    client = s3_server.client()
    name = sorted(photos)[0]
    table = pa.table(
        {
            "id": [name],
            "image": pa.FixedShapeTensorArray.from_numpy_ndarray(np.stack([photos[name]])),
        }
    )
    out = io.BytesIO()
    pq.write_table(table, out)
    client.put_object(Bucket=s3_bucket, Key="mixed/good.parquet", Body=out.getvalue())
    client.put_object(Bucket=s3_bucket, Key="mixed/cut.parquet", Body=b"PAR1 cut short")
    reader = reader_class(path=f"s3://{s3_bucket}/mixed", storage=s3_server.storage)
    seen: list[str] = []
    reader.bad_input = lambda where, error, detail="": seen.append(where)
    reader.read()
    assert seen == [f"s3://{s3_bucket}/mixed/cut.parquet"]


def note_bad_input(notes: str, where: str, error: Exception, detail: str = "") -> None:
    """A reader's ``bad_input`` that a read task can call: a line per input in ``notes``."""
    with open(notes, "a") as out:
        out.write(f"{where}\t{type(error).__name__}\t{detail}\n")


def test_a_parquet_file_damaged_past_its_footer_on_s3_is_set_aside_by_its_uri(
    ray_session, s3_server, s3_bucket, tmp_path
):
    """Found by the read task, which goes on with the other file of its task."""
    client = s3_server.client()
    for key, ids in (("good", ["a"]), ("damaged", [f"r{i}" for i in range(20)])):
        out = io.BytesIO()
        pq.write_table(pa.table({"id": ids, "x": [float(i) for i in range(len(ids))]}), out)
        body = out.getvalue()
        if key == "damaged":  # the footer whole, the first data page zeros
            body = body[:100] + b"\0" * 200 + body[300:]
        client.put_object(Bucket=s3_bucket, Key=f"paged/{key}.parquet", Body=body)
    reader = ParquetReader(path=f"s3://{s3_bucket}/paged", storage=s3_server.storage)
    reader.bad_input = functools.partial(note_bad_input, str(tmp_path / "notes.tsv"))
    assert [row["id"] for row in reader.read().take_all()] == ["a"]
    assert (tmp_path / "notes.tsv").read_text().splitlines() == [
        f"s3://{s3_bucket}/paged/damaged.parquet\tOSError\t0 rows read before it"
    ]


def test_a_reader_on_a_missing_bucket_says_the_bucket_is_missing(s3_server, s3_bucket):
    """A bucket misspelt was reported as a missing file (``no such file or directory
    s3://bukcet/in``), which sent the user looking for the key."""
    storage = s3_server.storage
    missing = f"no-such-{s3_bucket}"
    note = f"(the bucket {missing} does not exist)"
    for reader, path in (
        (JsonlReader, f"s3://{missing}/in"),
        (JsonlReader, f"s3://{missing}/in/*.jsonl"),
        (ParquetReader, f"s3://{missing}/in"),
        (ImageParquetReader, f"s3://{missing}/in"),
        (WebDatasetReader, f"s3://{missing}/in"),
        (ImageFolderReader, f"s3://{missing}/in"),
    ):
        (problem,) = reader.check({"path": path, "storage": storage})
        assert problem.endswith(f"{path} {note}"), (reader, problem)
    # A key missing from a bucket that is there is only that.
    (problem,) = JsonlReader.check({"path": f"s3://{s3_bucket}/in", "storage": storage})
    assert problem == f"path: no such file or directory s3://{s3_bucket}/in"
