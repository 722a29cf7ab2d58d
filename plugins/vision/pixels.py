"""A batch's image column as the [N, 3, H, W] tensor a classifier normalizes and runs.

Pixel columns from ``image_transform`` become tensors over the batch's own memory where
they can; encoded columns (``decode_on_device``) are decoded, resized and cropped on the
model's device with the model's own preprocessing.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from framework import RunError
from plugins.vision.decode import DecodeError
from plugins.vision.device_decode import decode_on_device
from plugins.vision.transform import TransformConfig, resize_crop


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
    *,
    name: str,
) -> torch.Tensor:
    """Encoded cells decoded, resized and cropped on ``device``: uint8 [N, 3, crop_h, crop_w]."""
    try:
        images = decode_on_device(values, ids, device)
    except DecodeError as exc:
        raise RunError(f"{name}: {exc}") from exc
    if not images:
        return torch.empty((0, 3, *preprocess.crop_size), dtype=torch.uint8, device=device)
    # Sizes differ until cropped, so each image is resized on its own (as image_transform does).
    return torch.stack([resize_crop(image, preprocess) for image in images])


def from_numpy(values: np.ndarray) -> torch.Tensor:
    """``torch.from_numpy``, quiet about read-only arrays (only copied from, never written)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(values)
