"""Resize, center-crop and normalize uint8 image tensors with torchvision transforms v2.

Everything stays uint8 until the optional normalize: torchvision's uint8 antialiased
resize is both the fastest CPU path and bit-identical between a batch and one image.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from plugins.vision.decode import MAX_PIXELS
from plugins.vision.model_info import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ModelInfo,
    as_pair,
    as_resize,
    model_info,
)

INTERPOLATIONS = ("nearest", "nearest-exact", "bilinear", "bicubic")
DEFAULT_CROP = 224
# The classic ImageNet eval ratio (224 / 256) when only the crop size is given.
DEFAULT_CROP_FRACTION = 0.875


@dataclass(frozen=True)
class TransformConfig:
    resize_size: tuple[int, ...]  # (s,): shorter side to s; (h, w): exact size
    crop_size: tuple[int, int]
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]


def resolve_config(
    resize_size: int | Sequence[int] | None = None,
    crop_size: int | Sequence[int] | None = None,
    interpolation: str | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    from_model: Mapping[str, Any] | None = None,
) -> TransformConfig:
    """Explicit values win over ``from_model``'s, which win over ImageNet defaults.

    Raises ValueError whose message starts with the offending parameter's name.
    """
    info = None
    if from_model is not None:
        try:
            info = model_info(from_model)
        except (ValueError, OSError) as exc:
            message = str(exc)
            raise ValueError(
                message if message.startswith("from_model:") else f"from_model: {message}"
            ) from exc
    try:
        crop = as_pair(crop_size) if crop_size is not None else (info.crop_size if info else None)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"crop_size: {exc}") from exc
    if crop_size is not None and min(crop) < 1:  # before the resize size made from it is
        raise ValueError(f"crop_size: sizes must be positive, got {list(crop)}")
    try:
        resize = as_resize(resize_size) if resize_size is not None else None
    except (TypeError, ValueError) as exc:
        raise ValueError(f"resize_size: {exc}") from exc
    if resize is None and info is not None:
        resize = info.resize_size
    elif resize is None:
        base = crop[0] if crop else DEFAULT_CROP
        resize = (math.floor(base / DEFAULT_CROP_FRACTION),)
    if crop is None:
        crop = (min(resize), min(resize)) if resize_size is not None else as_pair(DEFAULT_CROP)
    config = TransformConfig(
        resize_size=resize,
        crop_size=crop,
        interpolation=interpolation or (info.interpolation if info else "bilinear"),
        mean=tuple(float(v) for v in mean or (info.mean if info else IMAGENET_MEAN)),
        std=tuple(float(v) for v in std or (info.std if info else IMAGENET_STD)),
    )
    _validate(config)
    return config


def _validate(config: TransformConfig) -> None:
    if config.interpolation not in INTERPOLATIONS:
        raise ValueError(
            f"interpolation: {config.interpolation!r} is not one of {', '.join(INTERPOLATIONS)}"
        )
    if min(config.resize_size) < 1:
        raise ValueError(f"resize_size: sizes must be positive, got {list(config.resize_size)}")
    if min(config.crop_size) < 1:
        raise ValueError(f"crop_size: sizes must be positive, got {list(config.crop_size)}")
    for key, values in (("mean", config.mean), ("std", config.std)):
        if len(values) != 3:
            raise ValueError(f"{key}: expected 3 values (R, G, B), got {list(values)}")
    if any(v == 0 for v in config.std):
        raise ValueError(f"std: values must be non-zero, got {list(config.std)}")
    if any(not 0 <= v <= 1 for v in config.mean):
        # Pixels are scaled to 0-1 before normalizing: a channel's mean lies there too. A
        # mean for 0-255 (mmcv's, Caffe's) passed, and every prediction was wrong.
        raise ValueError(
            "mean: expected values for pixels scaled to 0-1 (ImageNet's: [0.485, 0.456, "
            f"0.406]), got {list(config.mean)} - divide a mean (and std) given for 0-255 by 255"
        )


def interpolation_mode(name: str) -> Any:
    from torchvision.transforms import InterpolationMode

    return InterpolationMode(name)


def resized_size(height: int, width: int, resize_size: tuple[int, ...]) -> tuple[int, int]:
    """(h, w) that ``resize_crop``'s resize makes of an image (h, w), before the crop.

    torchvision's own rule (``_compute_resized_output_size``, private, hence repeated here):
    the shorter side becomes ``s`` and the longer one ``int(s * long / short)``.
    """
    if len(resize_size) == 2:
        return resize_size[0], resize_size[1]
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = resize_size[0], int(resize_size[0] * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)


def resize_problem(
    height: int,
    width: int,
    config: TransformConfig,
    max_pixels: int | None,
    setting: str = MAX_PIXELS,
) -> str | None:
    """Why an image (h, w) must not be resized, or None.

    ``max_pixels`` guards the source size only; resizing the shorter side of a thin image
    (8000x1, a 107-byte PNG) to 256 makes 256 x 2,048,000 pixels, gigabytes of memory,
    before the crop throws nearly all of it away. Checked before the resize allocates.
    ``setting`` is what the message tells the user to raise.
    """
    if max_pixels is None or min(height, width) < 1:  # an empty image has nothing to resize
        return None
    new_h, new_w = resized_size(height, width, config.resize_size)
    if new_h * new_w <= max_pixels:
        return None
    crop_h, crop_w = config.crop_size
    ratio = max(height, width) / min(height, width)
    return (
        f"{width}x{height} would be resized to {new_w}x{new_h} = {new_h * new_w} pixels "
        f"before the {crop_w}x{crop_h} crop, over max_pixels={max_pixels} (extreme aspect "
        f"ratio {ratio:.4g}:1; raise {setting} only if a worker has the memory for it)"
    )


def limit_problem(config: TransformConfig, max_pixels: object) -> str | None:
    """A ``max_pixels`` below what even a square image is resized to: every row would fail.

    The resize guard above counts the resized size too, so such a limit is a spec problem,
    not a run of dead-lettered rows blaming their aspect ratio.
    """
    if not isinstance(max_pixels, int) or isinstance(max_pixels, bool) or max_pixels < 1:
        return None  # not a limit: the type and sign checks say so
    new_h, new_w = resized_size(1, 1, config.resize_size)
    if max_pixels >= new_h * new_w:
        return None
    return (
        f"max_pixels: {max_pixels} is below the {new_w}x{new_h} = {new_h * new_w} pixels even "
        "a square image is resized to before the crop, so every image would be refused"
    )


def resize_crop(images: torch.Tensor, config: TransformConfig) -> torch.Tensor:
    """[..., 3, H, W] uint8 -> [..., 3, crop_h, crop_w] uint8 (zero-padded if smaller)."""
    from torchvision.transforms.v2 import functional as F

    out = F.resize(
        images,
        list(config.resize_size),
        interpolation=interpolation_mode(config.interpolation),
        antialias=True,
    )
    return F.center_crop(out, list(config.crop_size))


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 [N, 3, H, W] -> float32 ``(x / 255 - mean) / std``, the models' on-device formula."""
    m = torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    return images.to(torch.float32).div_(255.0).sub_(m).div_(s)


def stack_hwc(images: Sequence[torch.Tensor]) -> np.ndarray:
    """CHW tensors as HWC arrays: one [N, H, W, 3] array when all sizes agree, else ragged.

    A ragged column is an object array of arrays, which Ray Data stores as a
    variable-shaped tensor column.
    """
    arrays = [t.permute(1, 2, 0).contiguous().numpy() for t in images]
    if not arrays:
        return np.empty((0, 0, 0, 3), dtype=np.uint8)
    if all(a.shape == arrays[0].shape for a in arrays):
        return np.stack(arrays)
    ragged = np.empty(len(arrays), dtype=object)
    for i, array in enumerate(arrays):
        ragged[i] = array
    return ragged


def config_from_info(info: ModelInfo) -> TransformConfig:
    """The transform ``image_transform`` with ``from_model`` (and no overrides) would apply."""
    config = TransformConfig(
        resize_size=tuple(info.resize_size),
        crop_size=(info.crop_size[0], info.crop_size[1]),
        interpolation=info.interpolation,
        mean=tuple(float(v) for v in info.mean),
        std=tuple(float(v) for v in info.std),
    )
    _validate(config)
    return config
