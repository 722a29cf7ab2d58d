"""Parquet reader and writer, local or ``s3://``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray.data

from framework import (
    ERROR_COLUMN,
    ID_COLUMN,
    InputError,
    Reader,
    SpecError,
    did_you_mean,
    distinct_paths_and_names,
    expand_globs,
    filesystem_for,
    hookimpl,
    inner_path,
    missing_bucket_note,
    parquet_files,
    parquet_schema,
    scheme_of,
    unsuffixed_parquet,
)
from framework.file_filter import misread_problems, paths_for_ray
from plugins.counts import RowsPerFileWriter, count_problems
from plugins.output_files import not_written_here
from plugins.parquet_source import read_listed_parquet


def read_parquet_files(
    reader: Reader,
    paths: list[str],
    storage: Mapping[str, Any] | None,
    footer_check: Callable[[Any], Exception | None] | None = None,
    **kwargs: Any,
) -> ray.data.Dataset:
    """Ray Data's parquet read of the files under ``paths`` (globs expanded) whose footers
    read (and pass ``footer_check``); the others, and any whose pages fail to read,
    reported through ``reader.report_bad_input`` by the name the spec gives them
    (``s3://bucket/...``); files whose schemas cannot be merged named in one line. Each
    file is read once, however the paths overlap."""
    fs, good, unreadable = parquet_files(paths, storage, footer_check)
    scheme = scheme_of(paths[0])
    for path, error in unreadable:
        reader.report_bad_input(scheme + path, error)
    try:
        # Exactly the files whose footers were read (Ray's own listing differs); one whose
        # pages turn out damaged is reported from its read task, the others read on.
        # Ray lists each file once: the paths another one reaches are left to it (the
        # files it must keep, named ones too, are all in good).
        kept, listed = distinct_paths_and_names(paths, storage)
        # A readable file named through a symlink is listed under its target's name.
        readable = set(good)
        targets = [
            name for path, names in listed.items() if inner_path(path) in readable for name in names
        ]
        return read_listed_parquet(
            paths_for_ray(fs, [filesystem_for(p, storage)[1] for p in kept]),
            [*good, *targets],
            fs,
            report_bad_input=reader.report_bad_input,
            scheme=scheme,
            **kwargs,
        )
    except (pa.ArrowTypeError, pa.ArrowInvalid) as exc:
        raise InputError(f"reader.path: {schema_clash(paths, storage) or exc}") from None


def unsuffixed_problems(paths: list[str], storage: Mapping[str, Any] | None) -> list[str]:
    """A folder holding parquet files not named ``.parquet`` (Hive's ``000000_0``), which
    the read would leave out without a word: one line naming the first."""
    for path in paths:
        try:
            bare = unsuffixed_parquet(path, storage)
        except OSError as exc:  # a symlink loop, a store that does not answer
            return [f"path: cannot list {path}: {exc}"]
        if bare:
            more = f" and {len(bare) - 1} more" if len(bare) > 1 else ""
            return [
                f"path: {scheme_of(path)}{bare[0]}{more} hold parquet but are not named "
                "*.parquet, so Ray Data would leave them out - rename them to end in .parquet"
            ]
    return []


def schema_clash(paths: list[str], storage: Mapping[str, Any] | None) -> str | None:
    """The first two files whose schemas do not merge (which Ray Data does not say), read
    from their footers: only once reading has failed on it."""
    fs, files, _ = parquet_files(paths, storage)
    if not files:
        return None
    first = pq.read_schema(files[0], filesystem=fs)
    for file in files[1:]:
        try:
            pa.unify_schemas([first, pq.read_schema(file, filesystem=fs)])
        except (pa.ArrowTypeError, pa.ArrowInvalid) as exc:
            shown = scheme_of(paths[0])
            return f"{shown}{files[0]} and {shown}{file} disagree on a column's type ({exc})"
    return None


def missing_column_problems(first: str, names: list[str], columns: list[str] | None) -> list[str]:
    """``columns`` the first file does not have: Ray Data read the others and the run
    went on without the misspelt one."""
    return [
        f"columns: {first} has no column {name!r}{did_you_mean(name, names)} "
        f"(columns: {', '.join(names)})"
        for name in columns or []
        if name not in names
    ]


def error_column_problems(
    first: str, names: list[str], id_column: str, columns: list[str] | None
) -> list[str]:
    """The data's own ``_error`` column, read: the read tasks would take it for the rows
    a reader flags, dead-letter its rows and drop it (and crash on one not of strings)."""
    if ERROR_COLUMN not in (names if columns is None else columns):
        return []
    others = [n for n in names if n not in (id_column, ERROR_COLUMN)]
    return [
        f"path: {first} has a column {ERROR_COLUMN!r}, where readers flag the rows they "
        "cannot produce: its rows would be dead-lettered and the column dropped - leave it "
        f"out (columns: [{', '.join(others)}]) or rename it in the data"
    ]


class OwnErrorColumn(ValueError):
    """A file's own ``_error`` column, past the first file (which validation checks)."""

    def __init__(self) -> None:
        super().__init__(
            f"it has a column {ERROR_COLUMN!r}, where readers flag the rows they cannot "
            "produce - leave it out (reader.columns) or rename it in the data"
        )


def own_error_column(metadata: Any) -> Exception | None:
    return OwnErrorColumn() if ERROR_COLUMN in metadata.schema.names else None


class MissingColumn(ValueError):
    """A file past the first (which validation checks) without a column ``columns`` asks
    for: Ray Data read its rows with nulls there, and the models ran on them."""

    def __init__(self, missing: list[str], names: list[str]) -> None:
        which = ", ".join(map(repr, missing))
        super().__init__(
            f"it has no column {which} of reader.columns (columns: {', '.join(names)})"
        )


def footer_check(columns: list[str] | None) -> Callable[[Any], Exception | None]:
    """What makes a file past the first unreadable: its own ``_error`` column (read only
    when ``columns`` leaves it out, as it must), or a column of ``columns`` it lacks."""
    if columns is None:
        return own_error_column

    def lacks_a_column(metadata: Any) -> Exception | None:
        names = metadata.schema.to_arrow_schema().names
        missing = [name for name in columns if name not in names]
        return MissingColumn(missing, names) if missing else None

    return lacks_a_column


class ParquetReader(Reader):
    """Rows of one or more parquet files, directories or glob patterns (``data/*.parquet``,
    ``s3://bucket/2024-*/**/*.parquet``); ``id_column`` becomes ``id``."""

    def __init__(
        self,
        path: str | list[str],
        columns: list[str] | None = None,
        id_column: str = ID_COLUMN,
        storage: dict[str, Any] | None = None,
        num_blocks: int | None = None,
    ) -> None:
        self.paths = [path] if isinstance(path, str) else list(path)
        self.columns = columns
        self.id_column = id_column
        self.storage = storage
        self.num_blocks = num_blocks

    @classmethod
    def check(cls, params: Mapping[str, Any]) -> list[str]:
        return count_problems(params, "num_blocks") + cls._input_problems(params)

    @classmethod
    def _input_problems(cls, params: Mapping[str, Any]) -> list[str]:
        paths = params["path"]
        try:
            paths = expand_globs(
                [paths] if isinstance(paths, str) else paths, params.get("storage")
            )
        except SpecError as exc:
            return exc.problems
        first = paths[0]
        try:
            fs, where = filesystem_for(first, params.get("storage"))
            if fs.get_file_info(where).type == pafs.FileType.NotFound:
                return [f"path: no parquet data at {first}{missing_bucket_note(fs, where, first)}"]
        except (OSError, pa.ArrowInvalid) as exc:  # as the other readers: the path's problem
            return [f"path: cannot access {first}: {exc}"]
        if bare := unsuffixed_problems(paths, params.get("storage")):
            return bare
        if misread := misread_problems(paths, params.get("storage")):
            return misread
        try:
            schema = parquet_schema(first, params.get("storage"))
        except (OSError, pa.ArrowException) as exc:
            # No readable file at all: an input error under either errors.policy, since
            # there is nothing to run (one unreadable file among others is the run's to skip).
            raise InputError(f"reader.path: cannot read parquet at {first}: {exc}") from None
        if not schema.names:
            return [f"path: no parquet files under {first}"]
        id_column = params.get("id_column", ID_COLUMN)
        if id_column not in schema.names:
            return [
                f"id_column: {first} has no column {id_column!r} (columns: {', '.join(schema.names)})"
            ]
        return missing_column_problems(
            first, schema.names, params.get("columns")
        ) or error_column_problems(first, schema.names, id_column, params.get("columns"))

    def read(self) -> ray.data.Dataset:
        columns = None
        if self.columns is not None:
            columns = list(dict.fromkeys([self.id_column, *self.columns]))
        # The spec's own paths, listed by Ray's ListFiles task, minus the unreadable files.
        ds = read_parquet_files(
            self,
            expand_globs(self.paths, self.storage),
            self.storage,
            footer_check=footer_check(self.columns),
            columns=columns,
            override_num_blocks=self.num_blocks,
            **self.read_args,
        )
        if self.id_column != ID_COLUMN:
            ds = ds.rename_columns({self.id_column: ID_COLUMN})
        return ds


class ParquetWriter(RowsPerFileWriter):
    """A directory of parquet files; tensor columns keep their shape as Ray tensor extensions."""

    output_suffix = ".parquet"

    def file_ids(self, fs: pafs.FileSystem, path: str) -> list | None:
        # One open and one footer read for the check and the ids (on S3, requests).
        try:
            with fs.open_input_file(path) as f:
                parquet = pq.ParquetFile(f)
                if ID_COLUMN not in parquet.schema_arrow.names:
                    why = f"it has no {ID_COLUMN!r} column"
                    raise not_written_here(self, "parquet", path, why)
                return parquet.read(columns=[ID_COLUMN])[ID_COLUMN].to_pylist()
        except pa.ArrowInvalid:
            # No footer (what a kill leaves: it is written last). Any OSError (access
            # denied, an I/O error) is not a cut: the file may be whole (committed_ids).
            return None

    def write(self, dataset: ray.data.Dataset) -> None:
        fs, where = filesystem_for(self.path, self.storage)
        dataset.write_parquet(
            where,
            filesystem=fs,
            min_rows_per_file=self.rows_per_file,
            **self.write_args,
        )


@hookimpl
def register_readers(register):
    register("parquet", ParquetReader)


@hookimpl
def register_writers(register):
    register("parquet", ParquetWriter)
