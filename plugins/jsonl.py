"""JSON Lines reader and writer, local or ``s3://``."""

from __future__ import annotations

from typing import Any

import pyarrow.fs as pafs
import ray.data

from framework import ID_COLUMN, Reader, Writer, filesystem_for, hookimpl, jsonl_ids


class JsonlReader(Reader):
    """One JSON object per line; ``id_column`` becomes ``id``."""

    def __init__(
        self,
        path: str | list[str],
        id_column: str = ID_COLUMN,
        storage: dict[str, Any] | None = None,
    ) -> None:
        self.paths = [path] if isinstance(path, str) else list(path)
        self.id_column = id_column
        self.storage = storage

    def read(self) -> ray.data.Dataset:
        fs, _ = filesystem_for(self.paths[0], self.storage)
        paths = [filesystem_for(p, self.storage)[1] for p in self.paths]
        ds = ray.data.read_json(
            paths,
            filesystem=fs,
            lines=True,
            file_extensions=["jsonl", "json"],
            **self.read_args,
        )
        if self.id_column != ID_COLUMN:
            ds = ds.rename_columns({self.id_column: ID_COLUMN})
        return ds


class JsonlWriter(Writer):
    """A directory of ``.json`` files, one JSON object per line; arrays become lists."""

    output_suffix = ".json"

    def file_ids(self, fs: pafs.FileSystem, path: str) -> list | None:
        with fs.open_input_stream(path) as f:
            found, whole = jsonl_ids(f.read())
        return found if whole and found else None  # cut mid-line, or before a byte

    def write(self, dataset: ray.data.Dataset) -> None:
        fs, where = filesystem_for(self.path, self.storage)
        dataset.write_json(
            where,
            filesystem=fs,
            lines=True,
            orient="records",
            ray_remote_args=self.ray_remote_args,
        )


@hookimpl
def register_readers(register):
    register("jsonl", JsonlReader)


@hookimpl
def register_writers(register):
    register("jsonl", JsonlWriter)
