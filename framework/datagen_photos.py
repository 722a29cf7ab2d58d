"""datagen's source photos and the rendering of each row from them, in worker processes."""

from __future__ import annotations

import importlib.util
import io
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from functools import cache
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from framework.errors import InputError

# Natural photographs only: synthetic test cards, logos, silhouettes, scanned text and
# thumbnails (chessboard, color, phantom, logo, horse, page, text, microaneurysms) would
# make easy, unrepresentative images. motorcycle_right is left out as the near-twin of
# motorcycle_left.
SKIMAGE_PHOTOS = (
    "astronaut.png",
    "brick.png",
    "camera.png",
    "cell.png",
    "chelsea.png",
    "coffee.png",
    "coins.png",
    "grass.png",
    "gravel.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "moon.png",
    "motorcycle_left.png",
    "retina.jpg",
    "rocket.jpg",
)
MATPLOTLIB_PHOTOS = ("grace_hopper.jpg",)
SOURCES = tuple(Path(name).stem for name in (*SKIMAGE_PHOTOS, *MATPLOTLIB_PHOTOS))

ARRAY_SIDE = 256
BASE_SIZE = (500, 375)  # ImageNet's most common size, landscape
SIZE_JITTER = 0.2
LANDSCAPE_SHARE = 0.75  # ImageNet photos are mostly landscape
MIN_CROP_AREA = 0.3
QUALITY_RANGE = (75, 95)
CHUNK_ROWS = 32
CHUNKS_IN_FLIGHT_PER_WORKER = 4


def _package_dir(package: str) -> Path | None:
    # find_spec locates the package without importing it (matplotlib's import is slow).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


@cache
def source_paths() -> dict[str, Path]:
    skimage = _package_dir("skimage")
    matplotlib = _package_dir("matplotlib")
    if skimage is None or matplotlib is None:
        raise InputError(
            "datagen: its source photos come with scikit-image and matplotlib "
            "- pip install scikit-image matplotlib"
        )
    files = [skimage / "data" / name for name in SKIMAGE_PHOTOS]
    files += [matplotlib / "mpl-data" / "sample_data" / name for name in MATPLOTLIB_PHOTOS]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise InputError(f"datagen: source photos missing from the installed packages: {missing}")
    return {f.stem: f for f in files}


@cache
def _photo(source: str) -> Image.Image:
    with Image.open(source_paths()[source]) as image:
        return image.convert("RGB")


def _render(seed: int, index: int, array: bool) -> tuple[str, bytes | np.ndarray]:
    """Row ``index``: its source name and JPEG bytes, or a 256x256x3 array if ``array``."""
    # Seeding per row, not per run, makes rows independent of how work is split.
    rng = np.random.default_rng([seed, index])
    source = SOURCES[rng.integers(len(SOURCES))]
    photo = _photo(source)
    if array:
        size = (ARRAY_SIDE, ARRAY_SIDE)
    else:
        long, short = (
            round(side * rng.uniform(1 - SIZE_JITTER, 1 + SIZE_JITTER)) for side in BASE_SIZE
        )
        size = (long, short) if rng.random() < LANDSCAPE_SHARE else (short, long)

    # The largest box of the output's aspect ratio that fits, shrunk to a random area.
    aspect = size[0] / size[1]
    width, height = photo.size
    box_w, box_h = (width, width / aspect) if width / height < aspect else (height * aspect, height)
    scale = np.sqrt(rng.uniform(MIN_CROP_AREA, 1.0))
    box_w, box_h = box_w * scale, box_h * scale
    left = rng.uniform(0, width - box_w)
    top = rng.uniform(0, height - box_h)
    image = photo.resize(size, Image.Resampling.BICUBIC, box=(left, top, left + box_w, top + box_h))
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if array:
        return source, np.asarray(image, dtype=np.uint8)
    quality = int(rng.integers(QUALITY_RANGE[0], QUALITY_RANGE[1] + 1))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return source, buffer.getvalue()


def _render_chunk(seed: int, start: int, stop: int, array: bool) -> list[tuple[str, Any]]:
    return [_render(seed, i, array) for i in range(start, stop)]


def render_all(
    rows: int, format: str, seed: int, workers: int
) -> Iterator[tuple[str, bytes | np.ndarray]]:
    """Rows ``0..rows-1`` in order, rendered in ``workers`` processes (in this one if 1)."""
    array = format == "parquet-array"
    if workers <= 1:
        for i in range(rows):
            yield _render(seed, i, array)
        return
    # spawn, not fork: the caller may hold threads (Ray, pyarrow) that fork would copy.
    pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"))
    try:
        # A bounded window of chunks in flight keeps memory flat when writing is slower
        # than rendering; results still come back in row order.
        window: deque[Future[list[tuple[str, Any]]]] = deque()
        for start in range(0, rows, CHUNK_ROWS):
            window.append(
                pool.submit(_render_chunk, seed, start, min(start + CHUNK_ROWS, rows), array)
            )
            if len(window) >= CHUNKS_IN_FLIGHT_PER_WORKER * workers:
                yield from window.popleft().result()
        while window:
            yield from window.popleft().result()
    finally:
        pool.shutdown(cancel_futures=True)
