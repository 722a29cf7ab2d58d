"""How parquet stores an image column, and the conversions ``image_parquet`` applies so
that stages get encoded bytes or one uint8 ndarray ``[N, *shape]`` per batch."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from framework import ERROR_COLUMN

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


def null_tensors_flagged(table: pa.Table, column: str, id_column: str) -> pa.Table:
    """A fixed-shape tensor column's null rows as rows of zeros flagged in ``_error``.

    Ray's conversion of a tensor column to numpy refuses a null anywhere in it, which
    stopped the whole read over one missing image (a left join leaves them). A column
    without nulls is returned as it is, uncopied.
    """
    chunks = table[column]
    shape = getattr(chunks.type, "shape", None)  # None: a variable-shaped Ray tensor
    if not chunks.null_count or not shape:
        return table
    storage = pa.chunked_array([c.storage for c in chunks.chunks], chunks.type.storage_type)
    flat = table.set_column(table.schema.get_field_index(column), column, storage)
    return flat_to_tensor(flat, column, id_column, tuple(shape))


def struct_to_bytes(table: pa.Table, column: str) -> pa.Table:
    return table.set_column(
        table.schema.get_field_index(column), column, pc.struct_field(table[column], "bytes")
    )
