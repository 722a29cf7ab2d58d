"""JSON Lines reader, and the writer of ``plugins.jsonl_writer``, local or ``s3://``."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from functools import partial
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import ray.data
from ray.data.datasource import FileBasedDatasource

from framework import (
    ID_COLUMN,
    Reader,
    SpecError,
    distinct_paths_and_names,
    expand_globs,
    filesystem_for,
    hookimpl,
    map_files,
    missing_bucket_note,
    scheme_of,
)
from framework.file_filter import ExtensionFilter, misread_problems, paths_for_ray
from plugins.id_types import IdsPastInt64, check_id_digits
from plugins.images.common import dangling_inputs, has_extension, list_relative
from plugins.jsonl_lines import OwnErrorKey, file_table
from plugins.jsonl_writer import JsonlWriter

JSONL_EXTENSIONS = ("jsonl", "json")
# Files read at once while looking for two whose types clash, after a run stopped on it.
CLASH_READS = 32


class JsonLinesDatasource(FileBasedDatasource):
    """Arrow's JSON reader over whole files; a line that is not a JSON object becomes a
    flagged row naming its file and line, and a file Arrow cannot make one table of
    (a column that is a number on one line and a string on another) an unreadable input.

    Ray's own ``read_json(lines=True)`` refuses a filesystem (and with it S3 endpoints
    and credentials from the spec); without it, a malformed line fails the read with a
    decoder message that names neither the file nor the line.
    """

    def __init__(
        self,
        paths: list[str],
        *,
        id_column: str,
        report_bad_input: Callable[[str, Exception], None],
        scheme: str,
        **kwargs: Any,
    ) -> None:
        super().__init__(paths, **kwargs)
        self.id_column = id_column
        self.report_bad_input = report_bad_input
        self.scheme = scheme  # the records name the file as the spec would: s3://bucket/...

    def _read_stream(self, f: pa.NativeFile, path: str) -> Iterator[pa.Table]:
        buffer = f.read_buffer()
        if buffer.size == 0:
            return
        try:
            table = check_id_digits(
                file_table(buffer, self.scheme + path, self.id_column), self.id_column
            )
        except (pa.ArrowInvalid, OwnErrorKey, IdsPastInt64) as exc:  # types that clash
            self.report_bad_input(self.scheme + path, exc)
            return
        yield table


class JsonlReader(Reader):
    """One JSON object per line, from files, directories or glob patterns; ``id_column``
    becomes ``id``. A line that is not a JSON object is a bad row named by file and line."""

    def __init__(
        self,
        path: str | list[str],
        id_column: str = ID_COLUMN,
        storage: dict[str, Any] | None = None,
    ) -> None:
        self.paths = [path] if isinstance(path, str) else list(path)
        self.id_column = id_column
        self.storage = storage

    @classmethod
    def check(cls, params: Mapping[str, Any]) -> list[str]:
        paths = params["path"]
        storage = params.get("storage")
        path = paths if isinstance(paths, str) else ", ".join(map(str, paths))
        try:
            expanded = expand_globs([paths] if isinstance(paths, str) else paths, storage)
            for path in expanded:
                fs, where = filesystem_for(path, storage)
                kind = fs.get_file_info(where).type
                if kind == pafs.FileType.NotFound:
                    return [
                        f"path: no such file or directory {path}{missing_bucket_note(fs, where, path)}"
                    ]
                if kind == pafs.FileType.Directory and not any(
                    has_extension(name, JSONL_EXTENSIONS) for name in list_relative(fs, where)
                ):
                    return [f"path: no jsonl files ({', '.join(JSONL_EXTENSIONS)}) under {path}"]
        except SpecError as exc:
            return exc.problems
        except (OSError, pa.ArrowInvalid) as exc:  # unreachable store, refused keys, 'a//b'
            return [f"path: cannot access {path}: {exc}"]
        return misread_problems(expanded, storage)

    def read(self) -> ray.data.Dataset:
        expanded = expand_globs(self.paths, self.storage)
        fs, _ = filesystem_for(expanded[0], self.storage)
        given = [filesystem_for(p, self.storage)[1] for p in expanded]
        # Ray lists each file once: the paths another one reaches are left to it, and
        # the files the spec names are kept wherever they are listed.
        inside = dict(zip(expanded, given, strict=True))
        kept, listed = distinct_paths_and_names(expanded, self.storage)
        paths = [inside[p] for p in kept]
        in_folders = ExtensionFilter(JSONL_EXTENSIONS)
        for path in paths:
            for link, error in dangling_inputs(fs, path, in_folders.apply):
                self.report_bad_input(link, error)
        source = JsonLinesDatasource(
            paths_for_ray(fs, paths),  # a folder "in?" was read as "in"
            id_column=self.id_column,
            report_bad_input=self.report_bad_input,
            scheme=scheme_of(expanded[0]),
            filesystem=fs,
            # Also keeps "a?.jsonl"; a file the spec names is read whatever its suffix.
            partition_filter=ExtensionFilter(
                JSONL_EXTENSIONS,
                named=[*named_files(fs, given), *(n for ns in listed.values() for n in ns)],
                roots=paths,
            ),
        )
        ds = ray.data.read_datasource(source, **self.read_args)
        if self.id_column != ID_COLUMN:
            ds = ds.rename_columns({self.id_column: ID_COLUMN})
        return ds

    def type_clash(self, column: str, types: tuple[str, str]) -> str | None:
        """The first file, in the read's order, holding ``column`` as each of ``types``:
        Ray Data joins blocks without saying which file each came from. Files are read
        ``CLASH_READS`` at a time, until both are found."""
        name = self.id_column if column == ID_COLUMN else column  # renamed by read()
        expanded = expand_globs(self.paths, self.storage)
        fs, _ = filesystem_for(expanded[0], self.storage)
        files = listed_files(fs, [filesystem_for(p, self.storage)[1] for p in expanded])
        first: dict[str, str] = {}
        for start in range(0, len(files), CLASH_READS):
            chunk = files[start : start + CLASH_READS]
            kinds = map_files(partial(column_type, fs, self.id_column, name), chunk)
            for file, kind in zip(chunk, kinds, strict=True):
                if kind in types:
                    first.setdefault(kind, file)
            if len(first) == 2:
                scheme = scheme_of(expanded[0])
                found = sorted(first.items(), key=lambda pair: files.index(pair[1]))
                return " and ".join(f"{scheme}{file} ({name}: {kind})" for kind, file in found)
        return None


def listed_files(fs: pafs.FileSystem, paths: list[str]) -> list[str]:
    """The files a read of ``paths`` takes, in the order Ray Data lists them: a named file,
    and the files its listing keeps under a folder."""
    keep = ExtensionFilter(JSONL_EXTENSIONS, roots=paths)
    files = []
    for path, info in zip(paths, fs.get_file_info(paths), strict=True):
        if info.type != pafs.FileType.Directory:
            files.append(path)
            continue
        root = path.rstrip("/")
        listed = (f"{root}/{name}" for name in list_relative(fs, root))
        files += sorted(file for file in listed if keep.apply(file))
    return list(dict.fromkeys(files))  # each once, as the read takes them


def column_type(fs: pafs.FileSystem, id_column: str, column: str, file: str) -> str | None:
    """The type a read gives ``column`` of the JSON-lines ``file``, by Arrow's name; None
    where it has none (no such column, only nulls, a file no table can hold)."""
    with fs.open_input_file(file) as f:
        buffer = f.read_buffer()
    try:
        table = file_table(buffer, file, id_column) if buffer.size else pa.table({})
    except (pa.ArrowInvalid, OwnErrorKey):  # set aside by the read, as no table can hold
        return None
    if column not in table.column_names or pa.types.is_null(table.schema.field(column).type):
        return None
    return str(table.schema.field(column).type)


def named_files(fs: pafs.FileSystem, paths: list[str]) -> list[str]:
    """The ``paths`` that are files, not folders."""
    return [info.path for info in fs.get_file_info(paths) if info.type == pafs.FileType.File]


@hookimpl
def register_readers(register):
    register("jsonl", JsonlReader)


@hookimpl
def register_writers(register):  # here: one plugin, one entry point, reader and writer
    register("jsonl", JsonlWriter)
