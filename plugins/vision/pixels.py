"""A batch's image column as the [N, 3, H, W] tensor a classifier normalizes and runs.

Pixel columns from ``image_transform`` become tensors over the batch's own memory where
they can; encoded columns (``decode_on_device``) are decoded, resized and cropped on the
model's device with the model's own preprocessing.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from framework import RunError
from plugins.vision.decode import DEFAULT_MAX_PIXELS, MODEL_MAX_PIXELS, DecodeError, row_label
from plugins.vision.device_decode import decode_on_device
from plugins.vision.model_info import ModelInfo
from plugins.vision.transform import (
    TransformConfig,
    config_from_info,
    limit_problem,
    resize_crop,
    resize_problem,
)

# Pixels resized in one call at most (uint8; the resize works in float32, four times this).
RESIZE_CHUNK_BYTES = 256 << 20


def host_pixels(
    values: np.ndarray,
    *,
    name: str,
    column: str,
    decode_on_device: bool,
    copy_read_only: bool = True,
) -> torch.Tensor:
    """The column as a [N, 3, H, W] CPU tensor over the batch's memory where it can be.

    ``copy_read_only=False`` leaves read-only arrays uncopied: for callers that only
    copy out of the tensor (the staging buffer), a copy first would be a second memcpy.
    """
    if values.dtype == object or values.ndim != 4:
        hint = (
            "set decode_on_device: true to decode encoded images in the model, or "
            if values.dtype == object and not decode_on_device
            else ""
        )
        raise RunError(
            f"{name}: column {column!r} must be one [N, 3, H, W] tensor, got "
            f"{'ragged images' if values.dtype == object else f'shape {list(values.shape)}'}"
            f" - {hint}put image_transform before the model"
        )
    if not values.flags.writeable and copy_read_only:
        values = values.copy()  # zero-copy views of Arrow buffers are read-only
    tensor = from_numpy(np.ascontiguousarray(values))
    if tensor.shape[1] != 3 and tensor.shape[3] == 3:  # HWC pixels, e.g. from a reader
        tensor = tensor.permute(0, 3, 1, 2)
    if tensor.shape[1] != 3:
        raise RunError(
            f"{name}: column {column!r} has shape {list(values.shape)}, expected [N, 3, H, W]"
        )
    if tensor.dtype != torch.uint8 and not tensor.is_floating_point():
        raise RunError(
            f"{name}: column {column!r} must be uint8 (normalized here) or "
            f"float (used as-is), got {values.dtype}"
        )
    return tensor


def device_crops(
    values: np.ndarray,
    ids: Sequence[Any],
    device: torch.device,
    preprocess: TransformConfig,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    *,
    name: str,
) -> torch.Tensor:
    """Encoded cells decoded, resized and cropped on ``device``: uint8 [N, 3, crop_h, crop_w].

    ``max_pixels`` bounds both the decoded and the resized size (before the crop) of each
    image, as in ``image_transform``; a row over it fails by id before its resize allocates.
    """
    try:
        images = decode_on_device(values, ids, device, max_pixels)
    except DecodeError as exc:
        raise RunError(f"{name}: {exc}") from exc
    for i, image in enumerate(images):
        h, w = image.shape[-2:]
        problem = resize_problem(h, w, preprocess, max_pixels, setting=MODEL_MAX_PIXELS)
        if problem:
            raise RunError(f"{name}: {row_label(ids, i)}: {problem}")
    if device.type == "cpu" and images:
        # On CPU one call per image measured faster than same-sized batches (0.47 against
        # 1.24 ms per image, 2-core VM): no stacked copy, and the uint8 path is per image.
        return torch.stack([resize_crop(image, preprocess) for image in images])
    return resize_crop_by_size(images, preprocess, device)


def device_limit_problems(info: Callable[[], ModelInfo], max_pixels: object) -> list[str]:
    """A model's ``max_pixels`` that its own resize would refuse every image under."""
    try:
        config = config_from_info(info())
    except (ValueError, OSError):  # a bad name or weights: their own checks say so
        return []
    problem = limit_problem(config, max_pixels)
    return [problem] if problem else []


def resize_crop_by_size(
    images: Sequence[torch.Tensor], preprocess: TransformConfig, device: torch.device
) -> torch.Tensor:
    """CHW uint8 images resized and cropped: uint8 [N, 3, crop_h, crop_w], in order.

    Images of one size go through one batched call, up to ``RESIZE_CHUNK_BYTES`` of pixels
    at a time: on a GPU each call costs a handful of kernel launches whatever its size, and
    photo sets often hold a few sizes only (not yet timed on a GPU: ``gpu_path_check.py``'s
    ``decode_on_device_parts`` compares the two). Every image's pixels are what a call on it
    alone gives (the resize treats each image of a batch on its own).
    """
    out = torch.empty((len(images), 3, *preprocess.crop_size), dtype=torch.uint8, device=device)
    by_size: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        by_size.setdefault(tuple(image.shape), []).append(i)
    for shape, indices in by_size.items():
        if len(indices) == 1:  # alone in its size: no stacked copy
            out[indices[0]] = resize_crop(images[indices[0]], preprocess)
            continue
        per_chunk = max(1, RESIZE_CHUNK_BYTES // max(1, math.prod(shape)))
        for start in range(0, len(indices), per_chunk):
            chunk = indices[start : start + per_chunk]
            crops = resize_crop(torch.stack([images[i] for i in chunk]), preprocess)
            if chunk[-1] - chunk[0] + 1 == len(chunk):  # a run of rows: no index upload
                out[chunk[0] : chunk[-1] + 1] = crops
            else:
                out[torch.tensor(chunk, device=device)] = crops
    return out


def from_numpy(values: np.ndarray) -> torch.Tensor:
    """``torch.from_numpy``, quiet about read-only arrays (only copied from, never written)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(values)
