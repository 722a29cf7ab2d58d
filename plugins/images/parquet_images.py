"""``image_parquet``: parquet whose image column holds encoded images or pixel arrays.

The image column may hold:

- encoded images (JPEG, PNG...) as ``binary``/``large_binary``, passed on as bytes;
- Hugging Face ``datasets`` images, ``struct<bytes: binary, path: string>``: the bytes;
- fixed-shape uint8 tensors, pyarrow's canonical ``arrow.fixed_shape_tensor`` or Ray's
  tensor extension (what ``ray.data`` writes, as in the Ray/Spark/SageMaker benchmark);
- flat ``list<uint8>`` or ``fixed_size_list<uint8>`` pixels, given ``shape: [H, W, C]``.

Arrays leave as one uint8 ndarray ``[N, *shape]`` per batch. Ray's variable-shaped
tensors pass through as Ray gives them: an object array of per-row arrays.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import ray.data

from framework import (
    ID_COLUMN,
    InputError,
    Reader,
    SpecError,
    expand_globs,
    missing_bucket_note,
    parquet_schema,
)
from framework.file_filter import misread_problems
from plugins.counts import count_problems
from plugins.images.common import as_paths, locate, path_list_problems
from plugins.images.image_columns import (
    flat_to_tensor,
    layout_of,
    null_tensors_flagged,
    shape_problems,
    struct_to_bytes,
)
from plugins.parquet import footer_check, read_parquet_files, unsuffixed_problems

IMAGE_COLUMN = "image"


class ImageParquetReader(Reader):
    """Rows of parquet files or directories: ``id``, ``image`` and the ``columns`` asked for.

    ``id_column`` becomes ``id`` and ``image_column`` becomes ``image``; other columns are
    read only when listed in ``columns``, under their own names.
    """

    def __init__(
        self,
        path: str | list[str],
        image_column: str = IMAGE_COLUMN,
        id_column: str = ID_COLUMN,
        columns: list[str] | None = None,
        shape: list[int] | None = None,
        storage: dict[str, Any] | None = None,
        num_blocks: int | None = None,
    ) -> None:
        self.paths = as_paths(path)
        self.image_column = image_column
        self.id_column = id_column
        self.columns = list(columns or [])
        self.shape = tuple(shape) if shape is not None else None
        self.storage = storage
        self.num_blocks = num_blocks

    @classmethod
    def check(cls, params: Mapping[str, Any]) -> list[str]:
        return count_problems(params, "num_blocks") + cls._input_problems(params)

    @classmethod
    def _input_problems(cls, params: Mapping[str, Any]) -> list[str]:
        paths = as_paths(params["path"])
        problems = path_list_problems(paths) + shape_problems(params.get("shape"))
        columns = params.get("columns")
        if columns is not None and (
            isinstance(columns, str) or not all(isinstance(c, str) for c in columns)
        ):
            problems.append(f"columns: expected a list of column names, got {columns!r}")
        if params.get("image_column", IMAGE_COLUMN) == params.get("id_column", ID_COLUMN):
            problems.append("image_column: must name a different column than id_column")
        if problems:
            return problems
        try:
            paths = expand_globs(paths, params.get("storage"))
        except SpecError as exc:
            return exc.problems
        for path in paths:
            located = locate(path, params.get("storage"))
            if isinstance(located, list):
                problems += located
            elif located[2] == pafs.FileType.NotFound:
                note = missing_bucket_note(located[0], located[1], path)
                problems.append(f"path: no such file or directory {path}{note}")
        if problems:
            return problems
        if bare := unsuffixed_problems(paths, params.get("storage")) or misread_problems(
            paths, params.get("storage")
        ):
            return bare
        shape = params.get("shape")
        reader = cls(
            paths,
            image_column=params.get("image_column", IMAGE_COLUMN),
            id_column=params.get("id_column", ID_COLUMN),
            columns=params.get("columns"),
            shape=list(shape) if shape is not None else None,
            storage=params.get("storage"),
        )
        try:
            schema = reader.schema()
        except (OSError, ValueError) as exc:
            # No readable file at all (see plugins.parquet): nothing to run, whatever the policy.
            raise InputError(f"reader.path: cannot read parquet at {paths[0]}: {exc}") from None
        return reader.schema_problems(schema)

    def schema(self) -> pa.Schema:
        return parquet_schema(self.paths[0], self.storage)

    def schema_problems(self, schema: pa.Schema) -> list[str]:
        first = self.paths[0]
        if not schema.names:
            return [f"path: no parquet files under {first}"]
        names = schema.names
        problems = [
            f"{param}: {first} has no column {name!r} (columns: {', '.join(names)})"
            for param, name in (
                ("id_column", self.id_column),
                ("image_column", self.image_column),
                *(("columns", c) for c in self.columns),
            )
            if name not in names
        ]
        for name in self.columns:
            if name in (ID_COLUMN, IMAGE_COLUMN) and name not in (
                self.id_column,
                self.image_column,
            ):
                problems.append(f"columns: {name!r} would clash with the output column {name!r}")
        if problems:
            return problems
        id_type = schema.field(self.id_column).type
        if not (
            pa.types.is_integer(id_type)
            or pa.types.is_string(id_type)
            or pa.types.is_large_string(id_type)
        ):
            problems.append(
                f"id_column: column {self.id_column!r} is {id_type}; "
                "ids must be strings or integers"
            )
        layout = layout_of(self.image_column, schema.field(self.image_column).type, self.shape)
        if layout.problem:
            problems.append(layout.problem)
        return problems

    def read(self) -> ray.data.Dataset:
        schema = self.schema()
        problems = self.schema_problems(schema)
        if problems:
            raise InputError("\n".join(f"reader.{p}" for p in problems))
        layout = layout_of(self.image_column, schema.field(self.image_column).type, self.shape)
        ds = read_parquet_files(
            self,
            expand_globs(self.paths, self.storage),
            self.storage,
            columns=list(dict.fromkeys([self.id_column, self.image_column, *self.columns])),
            # A file without the image column gives bad rows (no image): one record each.
            footer_check=footer_check(self.columns) if self.columns else None,
            override_num_blocks=self.num_blocks,
            **self.read_args,
        )
        if layout.kind == "flat":
            ds = ds.map_batches(
                flat_to_tensor,
                batch_format="pyarrow",
                batch_size=None,
                fn_kwargs={
                    "column": self.image_column,
                    "id_column": self.id_column,
                    "shape": self.shape,
                },
                **self.map_args,
            )
        elif layout.kind == "tensor":
            ds = ds.map_batches(
                null_tensors_flagged,
                batch_format="pyarrow",
                batch_size=None,
                fn_kwargs={"column": self.image_column, "id_column": self.id_column},
                **self.map_args,
            )
        elif layout.kind == "struct_bytes":
            ds = ds.map_batches(
                struct_to_bytes,
                batch_format="pyarrow",
                batch_size=None,
                fn_kwargs={"column": self.image_column},
                **self.map_args,
            )
        renames = {self.id_column: ID_COLUMN, self.image_column: IMAGE_COLUMN}
        renames = {old: new for old, new in renames.items() if old != new}
        return ds.rename_columns(renames) if renames else ds
