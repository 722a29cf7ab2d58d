"""``webdataset``: WebDataset tar shards, one row per sample with its image's raw bytes."""

from __future__ import annotations

import tarfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import ray
import ray.data

# Ray's own WebDataset pieces, to catch a damaged shard in its read (pyproject keeps Ray
# below 2.64).
from ray.data._internal.datasource.webdataset_datasource import (
    WebDatasetDatasource,
    _group_by_keys,
)
from ray.data._internal.util import iterate_with_retry

from framework import (
    ERROR_COLUMN,
    ID_COLUMN,
    Reader,
    SpecError,
    distinct_paths_and_names,
    expand_globs,
    filesystem_for,
    missing_bucket_note,
    scheme_of,
)
from framework.file_filter import ExtensionFilter, misread_problems, paths_for_ray
from plugins.counts import count_problems
from plugins.images.common import (
    IMAGE_EXTENSIONS,
    as_paths,
    dangling_inputs,
    extension_problems,
    has_extension,
    list_relative,
    locate,
    normalize_extensions,
    path_list_problems,
)
from plugins.images.shard_keys import DuplicateKey, KeyClaims, clash_error
from plugins.images.tar_members import LinkMember, link_flagged, tar_members

# Gzipped shards are opened through Arrow's gzip stream (ShardDatasource.resolve_compression).
SHARD_EXTENSIONS: tuple[str, ...] = ("tar", "tar.gz", "tgz")


def pick_image(sample: dict[str, Any], extensions: tuple[str, ...]) -> dict[str, Any]:
    """A sample as its row: the key and the first image member, in tar order.

    A member's extension is the last part of its suffix, so "seg.png" counts as png. A
    sample without one gets b"" instead of disappearing, so the decode stage fails it as a
    bad row under its own id. A member that is a link stands in only for want of another.
    """
    images = [
        value
        for suffix, value in sample.items()
        if not suffix.startswith("__") and suffix.rsplit(".", 1)[-1].lower() in extensions
    ]
    # A link member (``tar_members``) only where the sample has no image of its own.
    image = next((v for v in images if not isinstance(v, LinkMember)), images[0] if images else b"")
    return {ID_COLUMN: sample["__key__"], "image": image}


def is_hidden_member(name: str) -> bool:
    """A member whose file name starts with ".": macOS's tar archives a "._x.jpg"
    AppleDouble file before each "x.jpg", and folders hold ".DS_Store". Ray keys such a
    member in a subfolder by the folder ("train/"), so it made a bogus sample, or, being
    one key met again, a shard Ray refuses to group. The folder readers skip them too.
    "./x.jpg" (a tar made with ``tar -cf x.tar .``) is not hidden: its name is "x.jpg"."""
    return name.rsplit("/", 1)[-1].startswith(".")


class WebDatasetReader(Reader):
    """Samples of WebDataset shards (``.tar``, ``.tar.gz``, ``.tgz`` files or directories of them).

    ``id`` is the sample key (the member path up to the first "." of its file name) and
    ``image`` the bytes of the sample's first member whose extension is in
    ``extensions``, or b"" when it has none. Keys are taken to be unique across shards;
    with ``check_keys`` a key met in a second shard sets that shard aside from there on
    (``shard_keys``), as Ray's grouping does a key repeated in a shard.
    Members whose file name starts with "." (macOS's "._x.jpg", ".DS_Store") are skipped.
    """

    def __init__(
        self,
        path: str | list[str],
        extensions: list[str] | None = None,
        storage: dict[str, Any] | None = None,
        num_blocks: int | None = None,
        check_keys: bool = False,
    ) -> None:
        self.paths = as_paths(path)
        self.extensions = normalize_extensions(extensions or IMAGE_EXTENSIONS)
        self.storage = storage
        self.num_blocks = num_blocks
        # One actor holds every key of the run: memory grows with the input, so it is asked.
        self.check_keys = check_keys

    @classmethod
    def check(cls, params: Mapping[str, Any]) -> list[str]:
        return count_problems(params, "num_blocks") + cls._input_problems(params)

    @classmethod
    def _input_problems(cls, params: Mapping[str, Any]) -> list[str]:
        paths = as_paths(params["path"])
        extensions = params.get("extensions")  # None: the defaults; [] is a mistake
        problems = path_list_problems(paths) + extension_problems(
            IMAGE_EXTENSIONS if extensions is None else extensions
        )
        if problems:
            return problems
        try:
            paths = expand_globs(paths, params.get("storage"))
        except SpecError as exc:
            return exc.problems
        for path in paths:
            problems += shard_problems(path, params.get("storage"))
        return problems or misread_problems(paths, params.get("storage"))

    def read(self) -> ray.data.Dataset:
        # Each shard once: the paths another one reaches are left to it.
        paths, listed = distinct_paths_and_names(
            expand_globs(self.paths, self.storage), self.storage
        )
        fs, _ = filesystem_for(paths[0], self.storage)
        # A shard named through a symlink is listed under its target's name, which
        # may end otherwise.
        inside = [filesystem_for(p, self.storage)[1] for p in paths]
        names = (n for ns in listed.values() for n in ns)
        shards = ExtensionFilter(SHARD_EXTENSIONS, named=names, roots=inside)
        for path in paths:
            for link, error in dangling_inputs(
                fs, filesystem_for(path, self.storage)[1], shards.apply
            ):
                self.report_bad_input(link, error)
        source = ShardDatasource(
            paths_for_ray(fs, inside),
            extensions=self.extensions,
            report_bad_input=self.report_bad_input,
            scheme=scheme_of(paths[0]),
            claims=KeyClaims.remote() if self.check_keys else None,
            filesystem=fs,
            partition_filter=shards,  # also keeps "a?.tar"
        )
        return ray.data.read_datasource(
            source, override_num_blocks=self.num_blocks, **self.read_args
        )


# What reading a damaged shard raises: tarfile's errors, and gzip's for .tar.gz
# (BadGzipFile is an OSError; a file cut short, EOFError; bad data, zlib.error).
# Ray's grouping of members into samples raises ValueError for a shard whose samples'
# members are not contiguous or that repeats a member: the shard's problem, not a bug.
SHARD_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, ValueError)
TAR_BLOCK = 512
TAR_END = 2 * TAR_BLOCK  # the end-of-archive marker: two zero blocks
CHUNK_SAMPLES = 512  # rows per block, as Ray Data's WebDataset reader makes them
SAMPLE_SCHEMA = pa.schema([(ID_COLUMN, pa.string()), ("image", pa.binary())])
FLAGGED_SCHEMA = SAMPLE_SCHEMA.append(pa.field(ERROR_COLUMN, pa.string()))


class ShardDatasource(WebDatasetDatasource):
    """Ray Data's WebDataset reading (its tar iteration, grouping and I/O retries), one row
    per sample (``pick_image``), with a damaged shard reported as an unreadable input
    instead of failing the read task: the samples read before the damage go on. So is a
    shard from its first key that another shard's read met first (``claims``)."""

    def __init__(
        self,
        paths: list[str],
        *,
        extensions: tuple[str, ...],
        report_bad_input: Callable[[str, Exception, str], None],
        scheme: str,
        claims: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(paths, **kwargs)
        self.extensions = extensions
        self.claims = claims  # a KeyClaims actor; None: keys are not compared across shards
        self.report_bad_input = report_bad_input
        self.scheme = scheme  # the records name the shard as the spec would: s3://bucket/...

    def resolve_compression(self, path: str, open_args: dict[str, Any]) -> str | None:
        """Gzip for ``.tgz`` and ``.TAR.GZ`` too: Arrow takes only a lower-case ``.gz``
        name for gzip. Left to tarfile, a gzip stream cut short ends quietly and loses
        the samples after the cut; Arrow's gzip stream raises "Truncated compressed
        stream" instead."""
        if open_args.get("compression") is None and has_extension(path, ("tgz", "tar.gz")):
            return "gzip"
        return super().resolve_compression(path, open_args)

    def _read_stream(self, stream: Any, path: str) -> Iterator[pa.Table]:
        done = 0
        for rows, error in self._chunks(stream, path):
            rows, clash = self._claimed(path, rows)
            if rows:
                flagged = any(ERROR_COLUMN in row for row in rows)
                yield pa.Table.from_pylist(rows, FLAGGED_SCHEMA if flagged else SAMPLE_SCHEMA)
                done += len(rows)
            error = clash or error
            if error is not None:
                # The sample in progress at the damage is left out: its other members may
                # be lost. At a clash, the rest of the shard goes with its first repeated
                # key, as at a key repeated within the shard (Ray's ValueError).
                read = f"{done} sample{'' if done == 1 else 's'} read before it"
                self.report_bad_input(self.scheme + path, error, read)
                return

    def _chunks(
        self, stream: Any, path: str
    ) -> Iterator[tuple[list[dict[str, Any]], Exception | None]]:
        """The shard's rows, ``CHUNK_SAMPLES`` at a time, the last with what broke the
        shard (None if nothing did)."""

        def members() -> Iterator[dict[str, Any]]:
            return (m for m in tar_members(stream) if not is_hidden_member(m["fname"]))

        rows: list[dict[str, Any]] = []
        try:
            files = iterate_with_retry(
                members, "iterate tar file", match=self._data_context.retried_io_errors
            )
            for sample in _group_by_keys(files, meta={"__url__": path}):
                rows.append(link_flagged(pick_image(sample, self.extensions), self.scheme + path))
                if len(rows) == CHUNK_SAMPLES:
                    yield rows, None
                    rows = []
        except SHARD_ERRORS as exc:
            error: Exception | None = exc
        else:
            # tarfile ends quietly where a cut falls inside a member's header or between
            # two members. An uncompressed shard is checked from its end; a compressed
            # one is not: Arrow's gzip stream raises at a cut (see resolve_compression).
            error = None
            if self.resolve_compression(path, dict(self._open_stream_args or {})) is None:
                error = tar_end_problem(self._filesystem, path)
        yield rows, error

    def _claimed(
        self, path: str, rows: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], DuplicateKey | None]:
        """``rows`` up to the first whose key another shard's read met first, and the
        error naming it (None when there is none)."""
        if self.claims is None or not rows:
            return rows, None
        keys = [row[ID_COLUMN] for row in rows]
        found = ray.get(self.claims.claim.remote(self.scheme + path, keys))
        if found is None:
            return rows, None
        position, other = found
        return rows[:position], clash_error(keys[position], other)


def tar_end_problem(fs: pafs.FileSystem, path: str) -> tarfile.ReadError | None:
    """Why an uncompressed tar file read to its end quietly is not whole, or None.

    A whole archive is a whole number of 512-byte blocks ending with the end-of-archive
    marker, two zero blocks (tarfile and GNU tar pad further, with zeros, to a 10240-byte
    record). A file cut at a member boundary is whole blocks, so only the marker tells.
    Opening the file costs the one size lookup the size check needs anyway (a HEAD on
    S3), and the marker one small ranged read.
    """
    with fs.open_input_file(path) as file:
        size = file.size()
        if size % TAR_BLOCK:
            return tarfile.ReadError("cut short: not a whole number of 512-byte tar blocks")
        tail = file.read_at(min(size, TAR_END), max(size - TAR_END, 0))
    if tail != bytes(TAR_END):
        return tarfile.ReadError("cut short: no end-of-archive marker (two zero 512-byte blocks)")
    return None


def shard_problems(path: str, storage: Mapping[str, Any] | None) -> list[str]:
    located = locate(path, storage)
    if isinstance(located, list):
        return located
    fs, where, kind = located
    if kind == pafs.FileType.NotFound:
        return [f"path: no such file or directory {path}{missing_bucket_note(fs, where, path)}"]
    if kind == pafs.FileType.File:
        if has_extension(where, SHARD_EXTENSIONS):
            return []
        return [f"path: {path} is not a tar shard ({', '.join(SHARD_EXTENSIONS)})"]
    try:
        names = list_relative(fs, where)
    except OSError as exc:
        return [f"path: cannot list {path}: {exc}"]
    if not any(has_extension(n, SHARD_EXTENSIONS) for n in names):
        return [f"path: no tar shards ({', '.join(SHARD_EXTENSIONS)}) under {path}"]
    return []
