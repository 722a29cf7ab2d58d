"""datagen's output writers: rows in index order to parquet files, a folder tree or tar shards."""

from __future__ import annotations

import io
import json
import tarfile
from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from framework.components import ID_COLUMN
from framework.datagen_photos import ARRAY_SIDE

TAR_MTIME = 0  # a fixed timestamp keeps shards byte-identical between runs

ARRAY_SCHEMA = pa.schema(
    [
        (ID_COLUMN, pa.string()),
        ("image", pa.fixed_shape_tensor(pa.uint8(), (ARRAY_SIDE, ARRAY_SIDE, 3))),
        ("source", pa.string()),
    ]
)
BYTES_SCHEMA = pa.schema(
    [(ID_COLUMN, pa.string()), ("image", pa.binary()), ("source", pa.string())]
)


def make_sink(
    format: str, fs: pafs.FileSystem, root: str, rows_per_file: int, rows_per_row_group: int
) -> _Sink:
    """The writer of ``format`` under ``root``; parquet files and tar shards hold at most
    ``rows_per_file`` rows, parquet row groups at most ``rows_per_row_group``."""
    if format == "folder":
        return _FolderSink(fs, root)
    if format == "webdataset":
        return _TarSink(fs, root, rows_per_file)
    array = format == "parquet-array"
    return _ParquetSink(fs, root, array, rows_per_file, rows_per_row_group)


def _row_id(index: int) -> str:
    return f"img-{index:06d}"


class _Sink(ABC):
    """Receives rows in index order and writes them under ``root``."""

    def __init__(self, fs: pafs.FileSystem, root: str) -> None:
        self.fs = fs
        self.root = root
        self.written: list[str] = []

    @abstractmethod
    def add(self, index: int, source: str, payload: Any) -> None: ...

    def close(self) -> list[str]:
        return self.written

    def _open(self, relative: str) -> pa.NativeFile:
        path = f"{self.root}/{relative}"
        self.written.append(path)
        # No compression="detect": a name's extension must never change the bytes.
        return self.fs.open_output_stream(path, compression=None)


class _ParquetSink(_Sink):
    def __init__(
        self,
        fs: pafs.FileSystem,
        root: str,
        array: bool,
        rows_per_file: int,
        rows_per_row_group: int,
    ) -> None:
        super().__init__(fs, root)
        self.array = array
        self.rows_per_file = rows_per_file
        self.rows_per_row_group = rows_per_row_group
        self.schema = ARRAY_SCHEMA if array else BYTES_SCHEMA
        self.stream: pa.NativeFile | None = None
        self.writer: pq.ParquetWriter | None = None
        self.pending: list[tuple[str, Any, str]] = []

    def add(self, index: int, source: str, payload: Any) -> None:
        if index % self.rows_per_file == 0:
            self._close_file()
            name = f"part-{index // self.rows_per_file:05d}.parquet"
            self.stream = self._open(name)
            self.writer = pq.ParquetWriter(self.stream, self.schema)
        self.pending.append((_row_id(index), payload, source))
        if len(self.pending) == self.rows_per_row_group:
            self._flush()

    def close(self) -> list[str]:
        self._close_file()
        return self.written

    def _flush(self) -> None:
        if not self.pending or self.writer is None:
            return
        ids, images, sources = zip(*self.pending, strict=True)
        self.pending = []
        if self.array:
            column: pa.Array = pa.FixedShapeTensorArray.from_numpy_ndarray(np.stack(images))
        else:
            column = pa.array(images, type=pa.binary())
        table = pa.Table.from_arrays(
            [pa.array(ids, pa.string()), column, pa.array(sources, pa.string())],
            schema=self.schema,
        )
        self.writer.write_table(table, row_group_size=self.rows_per_row_group)

    def _close_file(self) -> None:
        self._flush()
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.stream is not None:
            # ParquetWriter leaves a stream it did not open to its owner.
            self.stream.close()
            self.stream = None


class _FolderSink(_Sink):
    def __init__(self, fs: pafs.FileSystem, root: str) -> None:
        super().__init__(fs, root)
        self.made: set[str] = set()

    def add(self, index: int, source: str, payload: Any) -> None:
        if source not in self.made:
            self.fs.create_dir(f"{self.root}/{source}", recursive=True)
            self.made.add(source)
        with self._open(f"{source}/{_row_id(index)}.jpg") as stream:
            stream.write(payload)


class _TarSink(_Sink):
    def __init__(self, fs: pafs.FileSystem, root: str, rows_per_file: int) -> None:
        super().__init__(fs, root)
        self.rows_per_file = rows_per_file
        self.stream: pa.NativeFile | None = None
        self.tar: tarfile.TarFile | None = None

    def add(self, index: int, source: str, payload: Any) -> None:
        if index % self.rows_per_file == 0:
            self._close_shard()
            self.stream = self._open(f"shard-{index // self.rows_per_file:06d}.tar")
            # Stays open across add() calls until the shard is full, hence no `with`.
            self.tar = tarfile.open(  # noqa: SIM115
                fileobj=self.stream, mode="w", format=tarfile.USTAR_FORMAT
            )
        key = _row_id(index)
        meta = json.dumps({"source": source}, sort_keys=True).encode()
        self._member(f"{key}.jpg", payload)
        self._member(f"{key}.json", meta)

    def close(self) -> list[str]:
        self._close_shard()
        return self.written

    def _member(self, name: str, data: bytes) -> None:
        assert self.tar is not None
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = TAR_MTIME
        info.mode = 0o644
        self.tar.addfile(info, io.BytesIO(data))

    def _close_shard(self) -> None:
        if self.tar is not None:
            self.tar.close()
            self.tar = None
        if self.stream is not None:
            self.stream.close()
            self.stream = None
