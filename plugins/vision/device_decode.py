"""Decoding a batch of encoded images on the model's own device (``decode_on_device``).

JPEGs go through one batched ``torchvision.io.decode_jpeg`` call: nvjpeg when the device
is CUDA, libjpeg-turbo on CPU (the same call without ``device``, so this path runs and is
tested without a GPU). Everything else - PNG, WebP, CMYK JPEGs, pixel arrays, and any
JPEG the batched decoder rejects - goes through the CPU decoder ``decode_images`` one
image at a time, which keeps its EXIF, gray/CMYK/alpha/16-bit handling and its error
messages. Pillow reads every header first, so the ``max_pixels`` guard applies to GPU
decodes too.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch

from plugins.vision.decode import (
    DEFAULT_MAX_PIXELS,
    MODEL_MAX_PIXELS,
    DecodeError,
    chw_to_rgb,
    decode_images,
    exif_orientation,
    open_image,
    pillow_limit,
    row_label,
    to_bytes,
)

# Pillow modes nvjpeg turns into RGB like libjpeg-turbo does; CMYK/YCCK JPEGs take the CPU path.
_DEVICE_JPEG_MODES = ("RGB", "L")


@dataclass(frozen=True)
class _Jpeg:
    index: int
    encoded: torch.Tensor
    orientation: int


def apply_orientation(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """A CHW image as EXIF ``orientation`` says to show it (what Pillow's exif_transpose does).

    nvjpeg ignores EXIF (torchvision applies it on CPU only), so CUDA decodes are turned here.
    """
    h, w = -2, -1
    if orientation == 2:
        return image.flip(w)
    if orientation == 3:
        return image.flip(h, w)
    if orientation == 4:
        return image.flip(h)
    if orientation == 5:
        return image.transpose(h, w)
    if orientation == 6:
        return image.rot90(-1, dims=(h, w))
    if orientation == 7:
        return image.transpose(h, w).flip(h, w)
    if orientation == 8:
        return image.rot90(1, dims=(h, w))
    return image


def _decode_jpeg_batch(jpegs: Sequence[_Jpeg], device: torch.device) -> list[torch.Tensor]:
    from torchvision.io import ImageReadMode, decode_jpeg

    encoded = [j.encoded for j in jpegs]
    if device.type != "cuda":
        return decode_jpeg(encoded, mode=ImageReadMode.RGB, apply_exif_orientation=True)
    images = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
    return [
        chw_to_rgb(apply_orientation(image, j.orientation))
        for image, j in zip(images, jpegs, strict=True)
    ]


def _decode_jpegs(jpegs: Sequence[_Jpeg], device: torch.device) -> list[torch.Tensor | None]:
    """The decoded JPEGs in order; None for each one the device decoder could not decode."""
    if not jpegs:
        return []
    try:
        return list(_decode_jpeg_batch(jpegs, device))
    except RuntimeError:
        # The batched call fails as a whole: one by one finds the images it cannot take.
        out: list[torch.Tensor | None] = []
        for jpeg in jpegs:
            try:
                out.append(_decode_jpeg_batch([jpeg], device)[0])
            except RuntimeError:
                out.append(None)
        return out


def _sort_cells(
    values: Sequence[Any], ids: Sequence[Any], max_pixels: int | None
) -> tuple[list[_Jpeg], list[int]]:
    """Header-only pass: (JPEGs for the device decoder, indices for the CPU decoder)."""
    jpegs: list[_Jpeg] = []
    on_cpu: list[int] = []
    with pillow_limit(max_pixels), warnings.catch_warnings():
        # The decoder only reads the bytes: a tensor over them, not a copy (a quarter of
        # this pass's time per image).
        warnings.filterwarnings("ignore", message="The given buffer is not writable")
        for i, value in enumerate(values):
            data = None if value is None else to_bytes(value)
            if data is None:  # null cells and pixel arrays: decode_images converts or explains
                on_cpu.append(i)
                continue
            try:
                img = open_image(data, max_pixels, MODEL_MAX_PIXELS)
                if img.format == "JPEG" and img.mode in _DEVICE_JPEG_MODES:
                    encoded = torch.frombuffer(data, dtype=torch.uint8)
                    jpegs.append(_Jpeg(i, encoded, exif_orientation(img)))
                else:
                    on_cpu.append(i)
            except (DecodeError, OSError, ValueError, SyntaxError) as exc:
                raise DecodeError(f"{row_label(ids, i)}: {exc}") from exc
    return jpegs, on_cpu


def decode_on_device(
    values: np.ndarray | Sequence[Any],
    ids: Sequence[Any],
    device: torch.device,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> list[torch.Tensor]:
    """One RGB uint8 CHW tensor on ``device`` per cell, in order; ``DecodeError`` names the row."""
    out: list[torch.Tensor | None] = [None] * len(values)
    jpegs, on_cpu = _sort_cells(values, ids, max_pixels)
    for jpeg, image in zip(jpegs, _decode_jpegs(jpegs, device), strict=True):
        if image is None:
            on_cpu.append(jpeg.index)
        else:
            out[jpeg.index] = image
    on_cpu.sort()
    if on_cpu:
        cells, cell_ids = [values[i] for i in on_cpu], [ids[i] for i in on_cpu]
        decoded = decode_images(cells, cell_ids, max_pixels, setting=MODEL_MAX_PIXELS)
        for i, image in zip(on_cpu, decoded, strict=True):
            out[i] = image.to(device)
    # Every cell was decoded on one path or the other, or decode_images raised.
    return cast("list[torch.Tensor]", out)
