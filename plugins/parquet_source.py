"""Ray Data's parquet read (its V2 datasource: listing, footers read ahead, row groups
packed into read tasks, column and limit pushdown) of exactly the files a reader checked,
with a file that breaks while it is read set aside as an unreadable input.

A parquet file whose footer is whole but whose data pages are damaged passes the footer
check before the run; Ray Data's read task then failed on it, and with it the run, under
either ``errors.policy``. Here each file's part of a read task is read on its own terms:
what breaks goes to ``Reader.report_bad_input`` (after the rows read before it), and the
task goes on with its other files.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, is_dataclass
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import ray.data

from framework.file_filter import ListedFilter

# Ray Data's own parquet pieces (tested with Ray 2.60; pyproject keeps Ray below 2.64): its
# public read_parquet offers no way in to the read task, and no way to keep files out of
# its extension check. A Ray whose pieces are missing or lack the methods overridden below
# reads through the public read_parquet, where a damaged page stops the run, naming the file.
try:
    from ray.data._internal.datasource_v2.formats.parquet.parquet_datasource_v2 import (
        ParquetDatasourceV2,
    )
    from ray.data._internal.datasource_v2.formats.parquet.parquet_file_reader import (
        ParquetFileReader,
    )
    from ray.data._internal.datasource_v2.formats.parquet.parquet_scanner import (
        ParquetScanner,
    )
    from ray.data.read_api import _read_datasource_v2
except ImportError:  # pragma: no cover - depends on the installed Ray
    ParquetDatasourceV2 = ParquetFileReader = ParquetScanner = object  # type: ignore[misc,assignment]


def pieces_fit(source: type, scanner: type, reader: type) -> bool:
    """Whether Ray's datasource, scanner and reader classes have what the subclasses below
    override or copy: checked at import, so that a Ray that reshaped them falls back to
    the public read instead of failing in the first read task."""
    return (
        callable(getattr(source, "create_scanner", None))
        and callable(getattr(scanner, "create_reader", None))
        and is_dataclass(scanner)
        and callable(getattr(reader, "_read_fragments_sequential", None))
    )


SETS_ASIDE = pieces_fit(ParquetDatasourceV2, ParquetScanner, ParquetFileReader)

ReportBadInput = Callable[[str, Exception, str], None]

# What a damaged page raises, once Ray Data's retries of storage errors are spent: Arrow's
# IOError ("Couldn't deserialize thrift", a corrupt compressed page) or, for values that
# cannot be, ArrowInvalid. Anything else (Ray's refusal of pickled columns) stays a failure.
PAGE_ERRORS = (OSError, pa.ArrowException)


def read_listed_parquet(
    paths: list[str],
    files: list[str],
    fs: pafs.FileSystem,
    *,
    report_bad_input: ReportBadInput,
    scheme: str,
    columns: list[str] | None = None,
    override_num_blocks: int | None = None,
    **read_args: Any,
) -> ray.data.Dataset:
    """The rows of ``files`` (found under ``paths``, inside ``fs``), as
    ``ray.data.read_parquet(paths, partition_filter=ListedFilter(files), ...)`` reads them;
    a file that breaks is reported by its name in the spec (``scheme`` + path)."""
    if not SETS_ASIDE:
        dataset = ray.data.read_parquet(
            paths,
            filesystem=fs,
            file_extensions=None,
            partition_filter=ListedFilter(files),
            override_num_blocks=override_num_blocks,
            **read_args,
        )
        return dataset if columns is None else dataset.select_columns(columns)
    source = ListedParquet(paths, filesystem=fs, report_bad_input=report_bad_input, scheme=scheme)
    dataset = _read_datasource_v2(
        source,
        parallelism=-1 if override_num_blocks is None else override_num_blocks,
        partition_filter=ListedFilter(files),
        **read_args,
    )
    return dataset if columns is None else dataset.select_columns(columns)


class ListedParquet(ParquetDatasourceV2):
    """Ray Data's parquet datasource, whose read tasks set damaged files aside."""

    def __init__(
        self,
        paths: list[str],
        *,
        filesystem: pafs.FileSystem,
        report_bad_input: ReportBadInput,
        scheme: str,
    ) -> None:
        super().__init__(paths, filesystem=filesystem)
        self.report_bad_input = report_bad_input
        self.scheme = scheme

    @property
    def file_extensions(self) -> None:
        # The ListedFilter keeps exactly the files checked. Ray's extension check compares
        # a path only up to its first "?": every file below a folder "q?" was left out.
        return None

    def create_scanner(
        self, schema: pa.Schema, filesystem: pafs.FileSystem | None = None, **options: Any
    ) -> ParquetScanner:
        scanner = super().create_scanner(schema, filesystem, **options)
        return SetAsideScanner(
            **{f.name: getattr(scanner, f.name) for f in fields(scanner)},
            report_bad_input=self.report_bad_input,
            scheme=self.scheme,
        )


@dataclass(frozen=True)
class SetAsideScanner(ParquetScanner):
    """Ray's scanner (column and limit pushdowns keep this class), whose readers set
    damaged files aside."""

    report_bad_input: ReportBadInput | None = None
    scheme: str = ""

    def create_reader(self) -> ParquetFileReader:
        reader = super().create_reader()
        # The reader Ray built, with every setting it chose, in the subclass below:
        # building one here would have to repeat (and keep up with) Ray's arguments.
        reader.__class__ = SetAsideReader
        reader.report_bad_input, reader.scheme = self.report_bad_input, self.scheme
        return reader


class SetAsideReader(ParquetFileReader):
    report_bad_input: ReportBadInput | None = None
    scheme = ""

    def _read_fragments_sequential(
        self, fragments_with_offsets: Iterator[Any], scanner_kwargs: dict
    ) -> Iterator[tuple[pa.Table, Any]]:
        """Ray's reading of each fragment (a file, or a run of its row groups), with its
        retries of storage errors, one fragment at a time: a fragment that still fails is
        reported after the rows read before the damage, and the next one is read."""
        for fragment in fragments_with_offsets:
            rows = 0
            try:
                parent = super()._read_fragments_sequential(iter([fragment]), scanner_kwargs)
                for table, position in parent:
                    yield table, position
                    rows += table.num_rows
            except PAGE_ERRORS as exc:
                assert self.report_bad_input is not None
                part = part_of(fragment.fragment)
                read = f"{rows} row{'' if rows == 1 else 's'}{part} read before it"
                self.report_bad_input(self.scheme + fragment.fragment.path, exc, read)


def part_of(fragment: Any) -> str:
    """ " of row groups 2, 3" for the part of a file a read task was given (Ray Data packs a
    large file's row groups into several tasks); "" for a whole file."""
    groups = [group.id for group in fragment.row_groups or []]
    if not groups or len(groups) == fragment.metadata.num_row_groups:
        return ""
    return f" of row group{'s' if len(groups) > 1 else ''} {', '.join(map(str, groups))}"
