"""Paths that overlap (a path given twice, a file inside a folder also given, two
patterns matching one file) read each input file once: Ray Data read each path given,
so such a file's rows were read, and written, twice."""

from __future__ import annotations

import io
import json
import logging
import tarfile
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray.data

from framework import distinct_paths
from framework.plugins import load_registry

SUFFIX = {"parquet": "parquet", "image_parquet": "parquet", "jsonl": "jsonl", "webdataset": "tar"}


def write_ids(path: Path, ids: list[str], reader: str) -> None:
    """A file of ``reader``'s kind holding a row (a sample) for each of ``ids``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if SUFFIX[reader] == "parquet":
        pq.write_table(pa.table({"id": ids, "image": [b"x"] * len(ids)}), path)
    elif reader == "jsonl":
        path.write_text("".join(json.dumps({"id": i}) + "\n" for i in ids))
    else:
        with tarfile.open(path, "w") as tar:
            for key in ids:
                info = tarfile.TarInfo(f"{key}.jpg")
                info.size = 1
                tar.addfile(info, io.BytesIO(b"x"))


def data_tree(root: Path, reader: str) -> dict[str, str]:
    """``data/`` with a file at the top, one in a subfolder, one whose ``_`` name the
    folder's listing skips at the top, one so named deeper (the parquet readers skip it,
    the others take it), and its paths by name."""
    ext = SUFFIX[reader]
    files = {
        "a": (f"a.{ext}", ["a0", "a1"]),
        "b": (f"sub/b.{ext}", ["b0"]),
        "top": (f"_top.{ext}", ["top"]),
        "deep": (f"sub/_deep.{ext}", ["deep"]),
    }
    for name, ids in files.values():
        write_ids(root / "data" / name, ids, reader)
    paths = {key: str(root / "data" / name) for key, (name, _) in files.items()}
    return {**paths, "data": str(root / "data"), "sub": str(root / "data" / "sub")}


def read_ids(reader: str, path: list[str]) -> Counter:
    reader_class = load_registry().find("reader", reader).cls
    assert reader_class.check({"path": path}) == []
    ds: ray.data.Dataset = reader_class(path=path).read()
    return Counter(row["id"] for row in ds.select_columns(["id"]).iter_rows())


@pytest.mark.parametrize("reader", ["parquet", "image_parquet", "jsonl", "webdataset"])
def test_a_file_given_again_or_inside_a_folder_given_is_read_once(
    ray_session, tmp_path, reader, caplog
):
    paths = data_tree(tmp_path, reader)
    given = [paths["data"], paths["a"], paths["sub"], paths["top"], paths["deep"], paths["a"]]
    with caplog.at_level(logging.WARNING, logger="infer_run"):
        got = read_ids(reader, given)
    # Each file once: "_top" as named (Ray's listing of the folder skips it), "_deep"
    # through the folder's listing (the parquet readers keep it only as named).
    assert got == Counter(["a0", "a1", "b0", "top", "deep"])
    warned = [r.getMessage() for r in caplog.records if "read once" in r.getMessage()]
    assert len(warned) == 1, warned
    assert f"{paths['a']} (inside {paths['data']})" in warned[0]
    assert f"{paths['sub']} (inside {paths['data']})" in warned[0]
    assert f"{paths['a']} (given twice)" in warned[0]
    assert paths["top"] + " " not in warned[0]


@pytest.mark.parametrize("reader", ["parquet", "jsonl", "webdataset"])
def test_two_patterns_matching_one_file_read_it_once(ray_session, tmp_path, reader):
    paths = data_tree(tmp_path, reader)
    data, ext = paths["data"], SUFFIX[reader]
    got = read_ids(reader, [f"{data}/*.{ext}", f"{data}/a*", f"{data}/**/*.{ext}"])
    assert got == Counter(["a0", "a1", "b0"])


def test_a_file_named_for_its_odd_suffix_inside_a_folder_given_is_read_once(ray_session, tmp_path):
    """A jsonl file the spec names is read whatever its suffix: through its folder's
    listing too, where the folder is given beside it."""
    paths = data_tree(tmp_path, "jsonl")
    write_ids(tmp_path / "data" / "sub" / "notes.txt", ["n0"], "jsonl")
    got = read_ids("jsonl", [paths["data"], f"{paths['sub']}/notes.txt"])
    assert got == Counter(["a0", "a1", "b0", "deep", "n0"])


def test_only_paths_another_given_path_reaches_are_left_out(tmp_path):
    """No Ray: the reduction itself, by what Ray's listing of a folder takes (all but a
    path below it starting with "_" or ".")."""
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "_skipped").mkdir()
    for name in ("a.jsonl", "a.txt", ".a.jsonl", "sub/b.jsonl", "_skipped/c.jsonl"):
        (tmp_path / "d" / name).write_text("{}\n")
    d = str(tmp_path / "d")
    given = [
        f"{d}/a.jsonl",  # inside d, given before it
        f"{d}/",  # d
        f"{d}/a.txt",  # listed through d (a filter keeps it as named, whatever its suffix)
        f"{d}/.a.jsonl",  # Ray's listing of d skips it
        f"{d}/sub",  # inside d
        f"{d}/_skipped",  # skipped too
        f"{d}/_skipped/c.jsonl",  # inside d/_skipped
        d,  # d again
        f"{d}/sub/_c.jsonl",  # "_" below the top is listed
    ]
    assert distinct_paths(given, None) == [f"{d}/", f"{d}/.a.jsonl", f"{d}/_skipped"]
    assert distinct_paths([f"{d}/a.jsonl", f"{d}/sub"], None) == [f"{d}/a.jsonl", f"{d}/sub"]


def test_a_run_over_overlapping_paths_writes_each_row_once(ray_session, tmp_path):
    """The run as a user sees it: each id once in the output, and rows that add up."""
    from framework.cli import main
    from framework.errors import ExitCode

    paths = data_tree(tmp_path, "parquet")
    given = [paths["data"], paths["a"], paths["a"]]
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        json.dumps(
            {
                "reader": {"type": "parquet", "path": given},
                "models": [{"type": "echo"}],
                "writer": {"type": "parquet", "path": str(tmp_path / "out")},
            }
        )
    )
    assert main([str(spec)]) == ExitCode.OK
    ids = pq.read_table(tmp_path / "out", columns=["id"])["id"].to_pylist()
    assert Counter(ids) == Counter(["a0", "a1", "b0"])
    report = json.loads((tmp_path / "out" / "_infer_run_report.json").read_text())
    assert (report["rows_read"], report["rows_written"], report["warnings"]) == (3, 3, [])


def test_parquet_footers_are_read_and_a_bad_file_named_once_where_paths_overlap(tmp_path):
    """Ray Data's own parquet read took a file listed twice within one read task once;
    the footer check read it, and set an unreadable one aside, each time."""
    from framework import parquet_files

    paths = data_tree(tmp_path, "parquet")
    (tmp_path / "data" / "bad.parquet").write_bytes(b"not parquet")
    bad = str(tmp_path / "data" / "bad.parquet")
    _, good, unreadable = parquet_files([paths["data"], paths["a"], paths["sub"], bad], None)
    assert sorted(good) == sorted([paths["a"], paths["b"]])
    assert [file for file, _ in unreadable] == [bad]


def test_overlapping_s3_paths_read_each_object_once(ray_session, s3_server, s3_bucket):
    client = s3_server.client()
    client.put_object(Bucket=s3_bucket, Key="in/a.jsonl", Body=b'{"id": "a"}\n')
    client.put_object(Bucket=s3_bucket, Key="in/sub/b.jsonl", Body=b'{"id": "b"}\n')
    root = f"s3://{s3_bucket}/in"
    given = [f"{root}/a.jsonl", f"{root}/", f"{root}/sub", f"{root}/*.jsonl", root]
    reader_class = load_registry().find("reader", "jsonl").cls
    params = {"path": given, "storage": s3_server.storage}
    assert reader_class.check(params) == []
    ds = reader_class(**params).read()
    assert Counter(row["id"] for row in ds.iter_rows()) == Counter(["a", "b"])


class CountingFiles:
    """The local filesystem, counting the paths asked about (on S3, a request each)."""

    def __init__(self) -> None:
        self.local = pa.fs.LocalFileSystem()
        self.asked: list[str] = []

    def get_file_info(self, paths):
        self.asked += paths
        return self.local.get_file_info(paths)


def test_only_paths_that_hold_another_are_asked_about(tmp_path, monkeypatch):
    # An expanded glob of 10,000 files on S3 was 10,000 requests before the run started.
    import framework.input_paths as input_paths

    (tmp_path / "data").mkdir()
    files = [str(tmp_path / "data" / f"{i}.parquet") for i in range(50)]
    handler = CountingFiles()
    monkeypatch.setattr(input_paths, "filesystem_for", lambda path, storage: (handler, path))
    assert distinct_paths(files, None) == files
    assert handler.asked == []
    folder = str(tmp_path / "data")
    assert distinct_paths([*files[:3], folder], None) == [folder]
    assert handler.asked == [folder]


def symlinked_tree(root: Path) -> dict[str, str]:
    """``data_tree`` for jsonl with symlinks beside it (to the folder, to its subfolder,
    to a file in it) and inside it (``data/ext``, to a folder outside it); their paths."""
    paths = data_tree(root, "jsonl")
    write_ids(root / "else" / "e.jsonl", ["e0"], "jsonl")
    links = {
        "data_link": (root / "data_link", root / "data"),
        "sub_link": (root / "sub_link", root / "data" / "sub"),
        "a_link": (root / "a_link.jsonl", root / "data" / "a.jsonl"),
        "ext": (root / "data" / "ext", root / "else"),
    }
    for link, target in links.values():
        link.symlink_to(target)
    return {**paths, "else": str(root / "else"), **{k: str(v[0]) for k, v in links.items()}}


def test_a_symlink_to_a_path_given_or_inside_a_folder_given_is_left_out(tmp_path, caplog):
    """No Ray: a symlink is another name for its target, which a folder's listing (through
    a symlinked folder in it too) reaches as well."""
    paths = symlinked_tree(tmp_path)
    data, link = paths["data"], paths["data_link"]
    with caplog.at_level(logging.WARNING, logger="infer_run"):
        kept = distinct_paths([data, link, paths["sub_link"], paths["a_link"]], None)
    assert kept == [data]
    warned = [r.getMessage() for r in caplog.records if "read once" in r.getMessage()]
    assert len(warned) == 1, warned
    assert f"{link} (given twice)" in warned[0]
    assert f"{paths['a_link']} (inside {data})" in warned[0]
    # The link first: the folder is the one left out, the link's listing reaching it all.
    assert distinct_paths([link, paths["a"], data], None) == [link]
    # Given through a symlinked folder inside a folder given: where it sits is inside.
    assert distinct_paths([data, f"{link}/ext/e.jsonl"], None) == [data]
    # A link to a file the listing skips ("_top") is that file's only way in: kept.
    top_link = tmp_path / "top_link.jsonl"
    top_link.symlink_to(paths["top"])
    assert distinct_paths([data, str(top_link)], None) == [data, str(top_link)]


@pytest.mark.parametrize("reader", ["parquet", "jsonl", "webdataset"])
def test_a_folder_given_beside_symlinks_to_it_and_into_it_is_read_once(
    ray_session, tmp_path, reader
):
    """Each file once, and a file the spec names through a link to it whatever its name:
    read through the folder's listing, its name there is the target's ("notes.txt")."""
    paths = data_tree(tmp_path, reader)
    write_ids(tmp_path / "data" / "sub" / "notes.txt", ["n0"], reader)
    (tmp_path / "data_link").symlink_to(tmp_path / "data")
    named = tmp_path / f"named.{SUFFIX[reader]}"
    named.symlink_to(tmp_path / "data" / "sub" / "notes.txt")
    got = read_ids(reader, [paths["data"], str(tmp_path / "data_link"), str(named)])
    deep = [] if reader == "parquet" else ["deep"]  # parquet's listing skips "_deep"
    assert got == Counter(["a0", "a1", "b0", "n0", *deep])


def test_parquet_footers_of_a_folder_and_a_symlink_to_it_name_a_bad_file_once(tmp_path):
    from framework import parquet_files

    paths = data_tree(tmp_path, "parquet")
    (tmp_path / "data" / "bad.parquet").write_bytes(b"not parquet")
    (tmp_path / "data" / "gone.parquet").symlink_to(tmp_path / "moved.parquet")
    (tmp_path / "data_link").symlink_to(tmp_path / "data")
    (tmp_path / "bad_link.parquet").symlink_to(tmp_path / "data" / "bad.parquet")
    given = [paths["data"], str(tmp_path / "data_link"), str(tmp_path / "bad_link.parquet")]
    _, good, unreadable = parquet_files(given, None)
    assert [file for file, _ in unreadable] == [
        str(tmp_path / "data" / "bad.parquet"),
        str(tmp_path / "data" / "gone.parquet"),
    ]
    # Every name of a readable file stays: the read lists the one of the path kept.
    assert str(tmp_path / "data_link" / "a.parquet") in good


@pytest.mark.parametrize("reader", ["jsonl", "webdataset"])
def test_files_below_a_hidden_folder_inside_a_folder_given_are_not_read(
    ray_session, tmp_path, reader
):
    """Jupyter keeps a copy of each file it edits in ``.ipynb_checkpoints`` beside it: a
    folder Ray's listing skips at the top, but read below it, every row twice. A file the
    spec names there is read."""
    paths = data_tree(tmp_path, reader)
    ext = SUFFIX[reader]
    copy = tmp_path / "data" / "sub" / ".ipynb_checkpoints" / f"b-checkpoint.{ext}"
    write_ids(copy, ["b0"], reader)
    write_ids(tmp_path / "data" / "sub" / ".keep" / f"k.{ext}", ["k0"], reader)
    got = read_ids(reader, [paths["data"], str(tmp_path / "data" / "sub" / ".keep" / f"k.{ext}")])
    assert got == Counter(["a0", "a1", "b0", "deep", "k0"])
