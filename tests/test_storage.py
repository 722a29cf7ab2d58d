"""Metadata reads go out many at a time: on S3 each file costs a round trip or two, and a
run over thousands of files otherwise waits minutes before it starts (or resumes)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

import framework.components
import framework.listing
import framework.storage
from framework.listing import parquet_files
from framework.storage import FILE_READS_AT_ONCE
from plugins.parquet import ParquetWriter


class RoundTripHandler(pafs.FileSystemHandler):
    """The local disk, with a wait for every file opened (a store's round trip), counting
    how many files are open at once."""

    def __init__(self, wait_s: float) -> None:
        self.local = pafs.LocalFileSystem()
        self.wait_s = wait_s
        self.lock = threading.Lock()
        self.open_now = 0
        self.most_at_once = 0

    def _round_trip(self) -> None:
        with self.lock:
            self.open_now += 1
            self.most_at_once = max(self.most_at_once, self.open_now)
        time.sleep(self.wait_s)
        with self.lock:
            self.open_now -= 1

    def open_input_file(self, path):
        self._round_trip()
        return self.local.open_input_file(path)

    def open_input_stream(self, path):
        self._round_trip()
        return self.local.open_input_stream(path)

    def get_type_name(self):
        return "round-trip"

    def normalize_path(self, path):
        return path

    def get_file_info(self, paths):
        return self.local.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.local.get_file_info(selector)

    def delete_file(self, path):
        self.local.delete_file(path)

    def __eq__(self, other):
        return self is other

    def __ne__(self, other):
        return self is not other

    def create_dir(self, path, recursive):
        raise NotImplementedError

    def delete_dir(self, path):
        raise NotImplementedError

    def delete_dir_contents(self, path, missing_dir_ok=False):
        raise NotImplementedError

    def delete_root_dir_contents(self):
        raise NotImplementedError

    def move(self, src, dest):
        raise NotImplementedError

    def copy_file(self, src, dest):
        raise NotImplementedError

    def open_output_stream(self, path, metadata):
        raise NotImplementedError

    def open_append_stream(self, path, metadata):
        raise NotImplementedError


@pytest.fixture
def store(monkeypatch) -> RoundTripHandler:
    handler = RoundTripHandler(wait_s=0.02)
    fs = pafs.PyFileSystem(handler)
    for module in (framework.storage, framework.listing, framework.components):
        monkeypatch.setattr(module, "filesystem_for", lambda path, storage: (fs, path))
    return handler


def write_parts(directory: Path, count: int) -> list[str]:
    directory.mkdir()
    for i in range(count):
        pq.write_table(pa.table({"id": [f"r{i:03d}"]}), directory / f"p{i:03d}.parquet")
    return [str(directory / f"p{i:03d}.parquet") for i in range(count)]


def test_parquet_footers_are_read_many_at_a_time(tmp_path, store):
    files = write_parts(tmp_path / "in", 40)
    Path(files[5]).write_bytes(b"not parquet")
    _, good, bad = parquet_files([str(tmp_path / "in")], None)
    assert good == files[:5] + files[6:]  # in order, whatever order the reads ended in
    assert [path for path, _ in bad] == [files[5]]
    assert 1 < store.most_at_once <= FILE_READS_AT_ONCE


def test_resume_reads_the_output_files_ids_many_at_a_time(tmp_path, store):
    files = write_parts(tmp_path / "out", 40)
    Path(files[7]).write_bytes(Path(files[7]).read_bytes()[:-10])  # no footer: cut short
    ids = ParquetWriter(str(tmp_path / "out")).committed_ids()
    assert ids == [f"r{i:03d}" for i in range(40) if i != 7]
    assert not Path(files[7]).exists()
    assert 1 < store.most_at_once <= FILE_READS_AT_ONCE


def test_glob_patterns_expand_to_the_files_they_match(tmp_path):
    from framework import SpecError, expand_globs

    for name in ("c.parquet", "a/x.parquet", "a/b/y.parquet", "a/_SUCCESS", "a/.hidden.parquet"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    root = str(tmp_path)
    assert expand_globs([f"{root}/*.parquet"]) == [f"{root}/c.parquet"]
    assert expand_globs([f"{root}/a/*"]) == [f"{root}/a/x.parquet"]  # no dirs, _ or . files
    assert expand_globs([f"{root}/**/*.parquet"]) == [
        f"{root}/a/b/y.parquet",
        f"{root}/a/x.parquet",
        f"{root}/c.parquet",
    ]
    assert expand_globs([f"{root}/a/?/[xy].parquet", f"{root}/c.parquet"]) == [
        f"{root}/a/b/y.parquet",
        f"{root}/c.parquet",  # a path without a pattern stays as it is
    ]
    assert expand_globs([f"file://{root}/*.parquet"]) == [f"{root}/c.parquet"]
    with pytest.raises(SpecError) as none:
        expand_globs([f"{root}/*.json"])
    assert none.value.problems == [f"path: no file matches {root}/*.json"]


def test_glob_patterns_do_not_descend_into_folders_named_with_a_dot_or_underscore(tmp_path):
    """A job's ``_temporary`` (half-written output) and Jupyter's ``.ipynb_checkpoints``
    (a copy of each file) are skipped by the folder's listing; matched by ``*`` or ``**``
    below the pattern's fixed part, their rows were read too, the copies' twice. A pattern
    whose own segment starts with the character names them, as in a shell."""
    from framework import expand_globs

    for name in (
        "a.jsonl",
        "sub/b.jsonl",
        ".ipynb_checkpoints/a-checkpoint.jsonl",
        "_temporary/0/part.jsonl",
        "sub/_staging/c.jsonl",
    ):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}\n")
    root = str(tmp_path)
    expected = [f"{root}/a.jsonl", f"{root}/sub/b.jsonl"]
    assert expand_globs([f"{root}/**/*.jsonl"]) == expected
    assert expand_globs([f"{root}/*/*.jsonl"]) == expected[1:]
    assert expand_globs([f"{root}/**/_staging/*.jsonl"]) == [f"{root}/sub/_staging/c.jsonl"]
    assert expand_globs([f"{root}/.ipynb*/*.jsonl"]) == [
        f"{root}/.ipynb_checkpoints/a-checkpoint.jsonl"
    ]
