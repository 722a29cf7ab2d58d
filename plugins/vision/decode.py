"""Turning an ``image`` column (encoded bytes or pixel arrays) into RGB uint8 CHW tensors.

JPEG and PNG go through ``torchvision.io`` (libjpeg-turbo/libpng, EXIF orientation
applied); every other format Pillow opens goes through Pillow. Pillow always parses the
header first: it names the format and the size, so the pixel limit is enforced before
a single pixel is decoded.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

# Pillow's own default limit: ~0.25 GiB of RGBA pixels.
DEFAULT_MAX_PIXELS = 89_478_485
# What a pixel-limit message tells the user to raise: the stage's own key, or, on the
# decode_on_device path (the records name the model's stage, models[i]), the model's.
MAX_PIXELS = "max_pixels"
MODEL_MAX_PIXELS = "the model's max_pixels"
_TORCHVISION_FORMATS = ("JPEG", "PNG")
EXIF_ORIENTATION = 0x0112
# What Pillow's exif_transpose does for each orientation (1: nothing).
_TRANSPOSES = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class DecodeError(ValueError):
    """One image could not be turned into pixels; the message says why."""


def row_label(ids: Sequence[Any], i: int) -> str:
    """``id 'a'`` rather than numpy 2's ``id np.str_('a')``."""
    value = ids[i]
    return f"image with id {(value.item() if isinstance(value, np.generic) else value)!r}"


@contextmanager
def pillow_limit(max_pixels: int | None) -> Iterator[None]:
    """Let ``max_pixels`` be the only guard, whatever Pillow's global one is.

    Pillow refuses images over twice its ``MAX_IMAGE_PIXELS`` inside ``Image.open``, before
    we could compare the size with our own limit: at the default ``max_pixels`` (Pillow's
    own value) such an image's record named Pillow's error and its limit, not the
    parameter to raise. Stateless stages run one task at a time per worker process, so
    lifting and restoring the global is not racy here.
    """
    saved = Image.MAX_IMAGE_PIXELS
    lift = saved is not None
    if lift:
        Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        if lift:
            Image.MAX_IMAGE_PIXELS = saved


def to_bytes(value: Any) -> bytes | None:
    """The encoded file in one cell, or None when the cell holds pixels."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, np.ndarray) and value.ndim == 1 and value.dtype == np.uint8:
        return value.tobytes()
    return None


def draft_size(size: tuple[int, int], target: tuple[int, ...], margin: float) -> tuple[int, int]:
    """The smallest (w, h) a reduced JPEG decode may return and still resize like the original.

    ``target`` is the resize target; ``margin`` (>= 1) keeps the DCT-reduced image that many
    times larger than it, so the antialiased resize after it still does most of the filtering.
    """
    width, height = size
    scale = margin * max(target) / min(width, height)
    return (math.ceil(width * scale), math.ceil(height * scale))


def pixels_to_chw(array: np.ndarray) -> torch.Tensor:
    """An HW / HWC (C = 1, 2, 3 or 4) uint8 or uint16 array as an RGB uint8 CHW tensor.

    Two channels are gray and alpha, as an "LA" PNG decodes: the gray kept, repeated.
    """
    if array.dtype == np.uint16:
        # Same rule as torchvision's to_dtype(scale=True): keep the high byte.
        array = (array >> 8).astype(np.uint8)
    if array.dtype != np.uint8:
        raise DecodeError(f"pixel arrays must be uint8 or uint16, got {array.dtype}")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise DecodeError(
            f"pixel arrays must be [H, W] or [H, W, 1|2|3|4], got {list(array.shape)}"
        )
    tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)
    return chw_to_rgb(tensor)


def chw_to_rgb(tensor: torch.Tensor) -> torch.Tensor:
    """Gray to RGB by repetition; alpha dropped, as PIL's ``convert("RGB")`` does."""
    if tensor.dtype == torch.uint16:
        tensor = (tensor.to(torch.int32) >> 8).to(torch.uint8)
    channels = tensor.shape[0]
    if channels == 1:
        tensor = tensor.expand(3, -1, -1)
    elif channels == 2:  # gray + alpha
        tensor = tensor[:1].expand(3, -1, -1)
    elif channels == 4:
        tensor = tensor[:3]
    return tensor.contiguous()


def _pillow_to_rgb(img: Image.Image) -> np.ndarray:
    if img.mode.startswith("I"):  # 16/32-bit gray (TIFF, some PNG paths): keep the high byte
        wide = np.asarray(img).astype(np.int64).clip(0, 65535)
        # 16 bits by their mode: the high byte, as torchvision's decoders keep, however dark.
        sixteen = img.mode.startswith("I;16") or wide.max(initial=0) > 255
        gray = (wide >> 8 if sixteen else wide).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if img.mode == "F":
        gray = np.asarray(img).clip(0, 255).round().astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if img.mode == "P":
        # Palette transparency must go through RGBA, or Pillow warns and may mis-map it.
        img = img.convert("RGBA")
    return np.array(img.convert("RGB"))


def _decode_png(encoded: torch.Tensor, img: Image.Image) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_png

    try:
        # RGB mode expands gray, palette and alpha; 16-bit stays uint16.
        return chw_to_rgb(decode_png(encoded, ImageReadMode.RGB, apply_exif_orientation=True))
    except RuntimeError as exc:
        # torchvision before 0.20 refuses 16-bit PNGs; Pillow keeps their high byte too.
        if "8-bit" not in str(exc):
            raise
        return _decode_with_pillow(img, None)


def _decode_with_pillow(img: Image.Image, draft: tuple[int, int] | None) -> torch.Tensor:
    if draft is not None:
        img.draft("RGB", draft)
    img.load()
    # Not ImageOps.exif_transpose: it also obeys an XMP orientation, which torchvision's
    # decoders ignore, so a fast_decode JPEG came out turned where a full decode did not.
    orientation = exif_orientation(img)
    if orientation != 1:
        img = img.transpose(_TRANSPOSES[orientation])
    return torch.from_numpy(np.ascontiguousarray(_pillow_to_rgb(img))).permute(2, 0, 1).contiguous()


def open_image(data: bytes, max_pixels: int | None, setting: str = MAX_PIXELS) -> Image.Image:
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise DecodeError(
            f"not an image in a format Pillow or torchvision can read ({len(data)} bytes)"
        ) from exc
    width, height = img.size
    if max_pixels is not None and width * height > max_pixels:
        raise DecodeError(
            f"{width}x{height} = {width * height} pixels exceeds max_pixels={max_pixels} "
            f"(decompression-bomb guard; raise {setting} if the image is legitimate)"
        )
    return img


def exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (1-8; 1 = as stored) of an opened image, read from its header.

    EXIF alone, as torchvision's decoders read it: Pillow's ``getexif()`` also takes an
    XMP ``tiff:Orientation`` when EXIF has none, and the paths would turn differently.
    """
    try:
        raw = img.info.get("exif")
        if isinstance(raw, bytes):
            exif = Image.Exif()
            exif.load(raw)
            value = exif.get(EXIF_ORIENTATION, 1)
        elif hasattr(img, "tag_v2"):  # TIFF: its EXIF tags are the file's own tags
            value = img.tag_v2.get(EXIF_ORIENTATION, 1)
        else:
            value = 1
    except (OSError, ValueError, SyntaxError):  # a damaged EXIF block: show the image as stored
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


# torchvision's C++ errors start with the function and its source file: "decode_jpeg,
# /__w/vision/.../decode_jpeg.cpp:171, Image is incomplete or truncated". The function
# may be a lambda's "operator()" (decode_png), so anything up to the first comma counts.
_CPP_PREFIX = re.compile(r"^[^,\s]+, \S+\.(?:cpp|cu|h):\d+, ")


def _plain(exc: BaseException) -> str:
    """The reason without torchvision's source location: what a dead-letter record says."""
    return _CPP_PREFIX.sub("", str(exc))


def decode_images(
    values: np.ndarray | Sequence[Any],
    ids: Sequence[Any],
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    target: tuple[int, ...] | None = None,
    fast_decode: bool = False,
    draft_margin: float = 2.0,
    setting: str = MAX_PIXELS,
) -> list[torch.Tensor]:
    """One RGB uint8 CHW tensor per cell, in order; ``DecodeError`` names the failing ``id``.

    With ``fast_decode`` and a resize ``target``, big JPEGs are decoded at a reduced DCT
    scale (Pillow ``draft``) no smaller than ``draft_margin`` times the target. ``setting``
    is the key a pixel-limit message names.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    if isinstance(values, np.ndarray) and values.dtype != object and values.ndim >= 3:
        return [pixels_to_chw(v) for v in values]
    out: list[torch.Tensor | None] = [None] * len(values)
    jpegs: list[tuple[int, torch.Tensor]] = []
    with pillow_limit(max_pixels):
        for i, value in enumerate(values):
            try:
                if value is None:
                    raise DecodeError("the image cell is null")
                data = to_bytes(value)
                if data is None:
                    out[i] = pixels_to_chw(np.asarray(value))
                    continue
                img = open_image(data, max_pixels, setting)
                draft = None
                if fast_decode and target is not None and img.format == "JPEG":
                    wanted = draft_size(img.size, target, draft_margin)
                    draft = wanted if wanted[0] * 2 <= img.size[0] else None
                if img.format not in _TORCHVISION_FORMATS or draft is not None:
                    out[i] = _decode_with_pillow(img, draft)
                    continue
                encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
                if img.format == "JPEG":
                    jpegs.append((i, encoded))
                else:
                    out[i] = _decode_png(encoded, img)
            except (DecodeError, OSError, RuntimeError, ValueError, SyntaxError) as exc:
                raise DecodeError(f"{row_label(ids, i)}: {_plain(exc)}") from exc
    if jpegs:
        try:
            decoded = decode_jpeg(
                [e for _, e in jpegs], mode=ImageReadMode.RGB, apply_exif_orientation=True
            )
        except RuntimeError:
            # The batched call fails as a whole; redo one by one to name the bad image.
            decoded = []
            for i, encoded in jpegs:
                try:
                    decoded.append(
                        decode_jpeg(encoded, mode=ImageReadMode.RGB, apply_exif_orientation=True)
                    )
                except RuntimeError as exc:
                    raise DecodeError(f"{row_label(ids, i)}: {_plain(exc)}") from exc
        for (i, _), image in zip(jpegs, decoded, strict=True):
            out[i] = image
    # Every cell was either decoded above or raised.
    return cast("list[torch.Tensor]", out)
