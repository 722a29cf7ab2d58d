"""``decode_image`` and ``image_transform``: the CPU stages in front of a vision model.

``image_transform`` is the one to use in front of a classifier: it decodes, resizes and
crops in one task, so differently sized images never travel between stages as a ragged
column, and it ships uint8 (4x smaller than float32) unless asked to normalize.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch

from framework import ID_COLUMN, Batch, Preprocessor, RunError
from plugins.vision.decode import DEFAULT_MAX_PIXELS, DecodeError, decode_images, row_label
from plugins.vision.transform import (
    limit_problem,
    normalize,
    resize_crop,
    resize_problem,
    resolve_config,
    stack_hwc,
)

DECODE_CHUNK = 16


def _common_problems(params: Mapping[str, Any]) -> list[str]:
    problems = []
    max_pixels = params.get("max_pixels", DEFAULT_MAX_PIXELS)
    if max_pixels is not None and max_pixels < 1:
        problems.append(f"max_pixels: must be positive or null (no limit), got {max_pixels}")
    if not params.get("column", "image"):
        problems.append("column: must name the input column")
    return problems


class DecodeImage(Preprocessor):
    """Encoded images (or pixel arrays) in ``column`` -> RGB uint8 pixels [H, W, 3].

    Output: one [N, H, W, 3] array when every image in the batch has the same size,
    otherwise a ragged column of [H_i, W_i, 3] arrays. Prefer ``image_transform`` in
    front of a model; this stage is for pipelines that want full-size pixels.
    """

    # No dtype promise: uint8 when the batch's sizes agree, an object (ragged) column if not.
    output_columns: ClassVar[Mapping[str, str]] = {}

    def __init__(self, column: str = "image", max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        self.column = column
        self.max_pixels = max_pixels

    @classmethod
    def check(cls, params: Mapping[str, Any]) -> list[str]:
        return _common_problems(params)

    def __call__(self, batch: Batch) -> Batch:
        try:
            images = decode_images(batch[self.column], batch[ID_COLUMN], self.max_pixels)
        except DecodeError as exc:
            raise RunError(f"decode_image: {exc}") from exc
        batch[self.column] = stack_hwc(images)
        return batch


class ImageTransform(Preprocessor):
    """Decode -> resize -> center-crop (-> normalize) into one fixed-shape ``column``.

    Output ``column``: uint8 [N, 3, crop_h, crop_w], or float32 of that shape with
    ``normalize: true``. ``from_model`` (a model node, e.g. ``${models.0}``) supplies the
    model's own resize, crop, interpolation, mean and std; explicit params override it.
    ``fast_decode`` lets big JPEGs decode at a reduced DCT scale (at least twice the
    resize target), which is much faster but not bit-identical to a full decode.
    """

    output_columns: ClassVar[Mapping[str, str]] = {"image": "uint8"}

    def __init__(
        self,
        resize_size: int | list[int] | None = None,
        crop_size: int | list[int] | None = None,
        interpolation: str | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        normalize: bool = False,
        from_model: dict[str, Any] | None = None,
        column: str = "image",
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        fast_decode: bool = False,
    ) -> None:
        self.config = resolve_config(resize_size, crop_size, interpolation, mean, std, from_model)
        self.normalize = normalize
        self.column = column
        self.max_pixels = max_pixels
        self.fast_decode = fast_decode
        self.output_columns = {column: "float32" if normalize else "uint8"}

    @classmethod
    def check(cls, params: Mapping[str, Any]) -> list[str]:
        problems = _common_problems(params)
        try:
            config = resolve_config(
                params.get("resize_size"),
                params.get("crop_size"),
                params.get("interpolation"),
                params.get("mean"),
                params.get("std"),
                params.get("from_model"),
            )
        except ValueError as exc:
            return [*problems, str(exc)]
        limit = limit_problem(config, params.get("max_pixels", DEFAULT_MAX_PIXELS))
        return [*problems, limit] if limit else problems

    def _check_resize(self, image: torch.Tensor, ids: np.ndarray, i: int) -> None:
        """Refuse, naming the row, an image whose resize alone would exceed ``max_pixels``."""
        problem = resize_problem(image.shape[-2], image.shape[-1], self.config, self.max_pixels)
        if problem:
            raise RunError(f"image_transform: {row_label(ids, i)}: {problem}")

    def _pixels(self, values: np.ndarray, ids: np.ndarray) -> torch.Tensor:
        if values.dtype == np.uint8 and values.ndim == 4 and values.shape[-1] == 3:
            # Already-decoded RGB batch of one size: resize it as one tensor.
            with warnings.catch_warnings():
                # Ray hands out read-only views of Arrow buffers; resize never writes to its
                # input, so sharing the buffer beats copying a batch of full-size images.
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                images = torch.from_numpy(np.ascontiguousarray(values)).permute(0, 3, 1, 2)
            if len(images):
                # One size for the whole batch: its rows all fail, and one by one each is named.
                self._check_resize(images[0], ids, 0)
            return resize_crop(images, self.config)
        crops = torch.empty((len(values), 3, *self.config.crop_size), dtype=torch.uint8)
        # Full-size pixels are decoded a few at a time and cropped at once, so a worker holds
        # DECODE_CHUNK decoded images, not a whole batch of them (~0.7 MB each at ImageNet size).
        for start in range(0, len(values), DECODE_CHUNK):
            chunk = slice(start, start + DECODE_CHUNK)
            try:
                decoded = decode_images(
                    values[chunk],
                    ids[chunk],
                    self.max_pixels,
                    target=self.config.resize_size,
                    fast_decode=self.fast_decode,
                )
            except DecodeError as exc:
                raise RunError(f"image_transform: {exc}") from exc
            for offset, image in enumerate(decoded):
                self._check_resize(image, ids, start + offset)
                crops[start + offset] = resize_crop(image, self.config)
        return crops

    def __call__(self, batch: Batch) -> Batch:
        images = self._pixels(batch[self.column], batch[ID_COLUMN])
        if self.normalize:
            images = normalize(images, self.config.mean, self.config.std)
        batch[self.column] = images.contiguous().numpy()
        return batch
