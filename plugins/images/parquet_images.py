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

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import ray.data

from framework import (
    ERROR_COLUMN,
    ID_COLUMN,
    InputError,
    Reader,
    SpecError,
    expand_globs,
    parquet_schema,
)
from plugins.images.common import as_paths, locate, path_list_problems
from plugins.parquet import read_parquet_files

IMAGE_COLUMN = "image"

CANONICAL_TENSOR = "arrow.fixed_shape_tensor"
RAY_TENSORS = (
    "ray.data.arrow_tensor",
    "ray.data.arrow_tensor_v2",
    "ray.data.arrow_variable_shaped_tensor",
)


@dataclass(frozen=True)
class Layout:
    """How the image column is stored: ``kind`` names the conversion ``read`` applies."""

    kind: str  # "bytes", "struct_bytes", "tensor" or "flat"
    problem: str | None = None


def layout_of(column: str, type_: pa.DataType, shape: tuple[int, ...] | None) -> Layout:
    def bad(message: str) -> Layout:
        return Layout("bytes", f"image_column: column {column!r} {message}")

    if isinstance(type_, pa.BaseExtensionType) and (
        type_.extension_name == CANONICAL_TENSOR or type_.extension_name in RAY_TENSORS
    ):
        if type_.value_type != pa.uint8():
            return bad(f"holds {type_.value_type} tensors; image arrays must be uint8")
        if shape is not None:
            return Layout("tensor", "shape: not needed, the tensor column carries its shape")
        return Layout("tensor")
    if (
        pa.types.is_list(type_)
        or pa.types.is_large_list(type_)
        or pa.types.is_fixed_size_list(type_)
    ):
        if type_.value_type != pa.uint8():
            return bad(f"is {type_}; image arrays must be uint8")
        if shape is None:
            return bad(f"is {type_}, flat pixels: give shape: [height, width, channels]")
        if pa.types.is_fixed_size_list(type_) and type_.list_size != math.prod(shape):
            return bad(
                f"holds {type_.list_size} values per row, "
                f"shape {list(shape)} needs {math.prod(shape)}"
            )
        return Layout("flat")
    if shape is not None:
        return bad(f"is {type_}; shape: applies only to list columns of pixels")
    if pa.types.is_binary(type_) or pa.types.is_large_binary(type_):
        return Layout("bytes")
    if pa.types.is_struct(type_) and type_.get_field_index("bytes") >= 0:
        inner = type_.field("bytes").type
        if pa.types.is_binary(inner) or pa.types.is_large_binary(inner):
            return Layout("struct_bytes")
    return bad(f"is {type_}: expected encoded image bytes or uint8 arrays")


def shape_problems(shape: Any) -> list[str]:
    if shape is None:
        return []
    if (
        isinstance(shape, (str, bytes))
        or not hasattr(shape, "__iter__")
        or len(list(shape)) not in (2, 3)
        or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
    ):
        return [f"shape: expected [height, width] or [height, width, channels], got {shape!r}"]
    return []


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
                problems.append(f"path: no such file or directory {path}")
        if problems:
            return problems
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


def flat_to_tensor(
    table: pa.Table, column: str, id_column: str, shape: tuple[int, ...]
) -> pa.Table:
    """Flat pixel lists to one fixed-shape tensor column, so batches hold one [N, *shape] array.

    A row that cannot fill ``shape`` (null, wrong length, null pixels) keeps zeros in the
    tensor and its reason in the ``_error`` column: the framework dead-letters it under
    ``errors.policy: skip`` and stops the run naming it otherwise.
    """
    chunks = table[column]
    # combine_chunks copies even a lone chunk, and a block read from parquet has one.
    values = chunks.chunk(0) if chunks.num_chunks == 1 else chunks.combine_chunks()
    size = math.prod(shape)
    lengths = pc.list_value_length(values)
    good = pc.fill_null(pc.equal(lengths, size), False)
    all_good = pc.all(good).as_py()
    kept = values if all_good else pc.filter(values, good)  # a filter copies every pixel
    pixels = pc.list_flatten(kept)
    good_mask = good.to_numpy(zero_copy_only=False)
    good_rows = np.flatnonzero(good_mask)
    reasons = [""] * len(values)
    for row in np.flatnonzero(~good_mask):
        held = "null" if not values[int(row)].is_valid else f"{lengths[int(row)]} values"
        reasons[int(row)] = f"{column!r} holds {held}, shape {list(shape)} needs {size}"
    if pixels.null_count:  # only then: the parent of every pixel is 8 bytes per pixel
        parents = pc.list_parent_indices(kept)
        for local in set(pc.filter(parents, pc.is_null(pixels)).to_pylist()):
            reasons[int(good_rows[local])] = f"{column!r} holds null pixel values"
    if all_good and not pixels.null_count:
        storage = pixels  # every row whole: the pixels as read, not copied
    else:
        dense = np.zeros((len(values), size), dtype=np.uint8)
        if len(good_rows):
            filled = pc.fill_null(pixels, 0).to_numpy(zero_copy_only=False)
            dense[good_rows] = filled.reshape(-1, size)
        storage = pa.array(dense.reshape(-1))
    tensor = pa.ExtensionArray.from_storage(
        pa.fixed_shape_tensor(pa.uint8(), shape),
        pa.FixedSizeListArray.from_arrays(storage, size),
    )
    table = table.set_column(table.schema.get_field_index(column), column, tensor)
    if any(reasons):
        table = table.append_column(ERROR_COLUMN, pa.array(reasons, pa.string()))
    return table


def struct_to_bytes(table: pa.Table, column: str) -> pa.Table:
    return table.set_column(
        table.schema.get_field_index(column), column, pc.struct_field(table[column], "bytes")
    )
