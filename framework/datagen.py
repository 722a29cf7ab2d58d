"""A synthetic ImageNet-like dataset cut from the photos scikit-image and matplotlib ship.

Every image is a random crop of one source photo, randomly flipped, resized to about
500x375 (landscape or portrait) and JPEG-encoded at quality 75-95, so decode and
resize costs resemble ImageNet's without downloading anything. Row ``i`` depends only
on ``(seed, i)``: the same seed gives byte-identical files for any number of workers
(with the same numpy and Pillow versions, which own the random streams and the codecs).

Layouts (``OUT`` is a local directory or an ``s3://`` prefix):

* ``parquet``: ``part-00000.parquet``... (at most 1000 rows each) with columns ``id``
  (``img-000000``...), ``image`` (JPEG bytes) and ``source`` (source photo name).
* ``parquet-array``: the same files, but ``image`` is a 256x256x3 uint8 array in
  Arrow's canonical ``arrow.fixed_shape_tensor`` type, shaped like the preprocessed
  images of the published Ray / Spark / SageMaker batch inference benchmark.
* ``folder``: ``<source>/img-000000.jpg``, one subdirectory per source photo.
* ``webdataset``: ``shard-000000.tar``... (at most 1000 samples each); sample
  ``img-000000`` is ``img-000000.jpg`` plus ``img-000000.json`` (``{"source": ...}``).
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import tarfile
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from functools import cache
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from PIL import Image

from framework.components import ID_COLUMN
from framework.errors import InputError, did_you_mean
from framework.storage import filesystem_for

FORMATS = ("parquet", "parquet-array", "folder", "webdataset")

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

ROWS_PER_FILE = 1000
# Several row groups per file let a reader split one large file across tasks.
ROWS_PER_ROW_GROUP = 100
ARRAY_SIDE = 256
BASE_SIZE = (500, 375)  # ImageNet's most common size, landscape
SIZE_JITTER = 0.2
LANDSCAPE_SHARE = 0.75  # ImageNet photos are mostly landscape
MIN_CROP_AREA = 0.3
QUALITY_RANGE = (75, 95)
# Below this many rows starting worker processes costs more than it saves.
MIN_ROWS_PER_WORKER = 100
CHUNK_ROWS = 32
CHUNKS_IN_FLIGHT_PER_WORKER = 4
TAR_MTIME = 0  # a fixed timestamp keeps shards byte-identical between runs

ARRAY_SCHEMA = pa.schema(
    [
        (ID_COLUMN, pa.string()),
        ("image", pa.fixed_shape_tensor(pa.uint8(), (ARRAY_SIDE, ARRAY_SIDE, 3))),
        ("source", pa.string()),
    ]
)
BYTES_SCHEMA = pa.schema(
    [(ID_COLUMN, pa.string()), ("image", pa.binary()), ("source", pa.string())]
)


@dataclass(frozen=True)
class DatagenResult:
    """What ``generate`` wrote: every file (full local path or ``s3://`` URI), rows, bytes."""

    out: str
    format: str
    rows: int
    paths: list[str]
    bytes: int


def generate(
    out: str | Path,
    rows: int,
    format: str = "parquet",
    seed: int = 0,
    *,
    overwrite: bool = False,
    workers: int | None = None,
    storage: Mapping[str, Any] | None = None,
) -> DatagenResult:
    """Writes ``rows`` images to ``out`` in ``format``; see the module docstring for layouts.

    ``workers`` defaults to the CPUs this process may use; the output does not depend
    on it. A non-empty ``out`` is refused unless ``overwrite`` is true, which clears it.
    """
    if format not in FORMATS:
        raise InputError(
            f"datagen: unknown format {format!r} (choose from {', '.join(FORMATS)})"
            + did_you_mean(format, FORMATS)
        )
    if rows < 1:
        raise InputError(f"datagen: rows must be at least 1, got {rows}")
    if seed < 0:
        raise InputError(f"datagen: seed must be zero or positive, got {seed}")
    if workers is not None and workers < 1:
        raise InputError(f"datagen: workers must be at least 1, got {workers}")
    _source_paths()  # fail on missing packages before touching the output
    fs, root = filesystem_for(str(out), storage)
    root = root.rstrip("/") or root  # "s3://bucket/prefix/" must not give "prefix//part-..."
    _prepare_output(fs, root, str(out), overwrite)
    fs.create_dir(root, recursive=True)

    sink = _SINKS[format](fs, root)
    rendered = _render_all(rows, format, seed, workers)
    try:
        for index, (source, payload) in enumerate(rendered):
            sink.add(index, source, payload)
    finally:
        # Stop the workers and close open files now, also on errors and Ctrl-C.
        rendered.close()
        written = sink.close()
    # One listing instead of a request per file: a folder dataset on S3 has thousands.
    sizes = {
        info.path: info.size
        for info in fs.get_file_info(pafs.FileSelector(root, recursive=True))
        if info.type == pafs.FileType.File
    }
    prefix = "s3://" if str(out).startswith("s3://") else ""
    return DatagenResult(
        out=str(out),
        format=format,
        rows=rows,
        paths=[prefix + p for p in written],
        bytes=sum(sizes[path] for path in written),
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``infer-run datagen OUT --rows N [--format F] [--seed S] [--overwrite]``."""
    parser.add_argument("out", help="output directory or s3:// prefix")
    parser.add_argument("--rows", type=int, required=True, help="number of images")
    parser.add_argument("--format", choices=FORMATS, default="parquet", help="output layout")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same bytes")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")
    parser.add_argument(
        "--workers", type=int, default=None, help="worker processes (default: one per CPU)"
    )


def main(args: argparse.Namespace) -> int:
    """Runs ``generate`` and prints one summary line; ``InputError`` propagates to the CLI."""
    started = time.perf_counter()
    result = generate(
        args.out,
        args.rows,
        format=args.format,
        seed=args.seed,
        overwrite=args.overwrite,
        workers=args.workers,
    )
    files = len(result.paths)
    print(
        f"datagen: {result.rows} rows ({result.format}, seed {args.seed}) -> {result.out}: "
        f"{files} file{'s' if files != 1 else ''}, {result.bytes / 1e6:.1f} MB "
        f"in {time.perf_counter() - started:.1f}s"
    )
    return 0


# -- rendering ---------------------------------------------------------------------------


def _package_dir(package: str) -> Path | None:
    # find_spec locates the package without importing it (matplotlib's import is slow).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


@cache
def _source_paths() -> dict[str, Path]:
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
    with Image.open(_source_paths()[source]) as image:
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


def _render_all(
    rows: int, format: str, seed: int, workers: int | None
) -> Iterator[tuple[str, bytes | np.ndarray]]:
    array = format == "parquet-array"
    workers = min(workers or _cpus(), max(1, rows // MIN_ROWS_PER_WORKER))
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


def _cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _row_id(index: int) -> str:
    return f"img-{index:06d}"


# -- output ------------------------------------------------------------------------------


def _prepare_output(fs: pafs.FileSystem, root: str, shown: str, overwrite: bool) -> None:
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        return
    if info.type == pafs.FileType.File:
        raise InputError(f"datagen: output {shown} is a file, not a directory")
    if not fs.get_file_info(pafs.FileSelector(root)):
        return
    if not overwrite:
        raise InputError(
            f"datagen: output {shown} already exists and is not empty "
            "- pass --overwrite (overwrite=True) to replace it"
        )
    fs.delete_dir_contents(root)


class _Sink(ABC):
    """Receives rows in index order and writes them under ``root``."""

    def __init__(self, fs: pafs.FileSystem, root: str) -> None:
        self.fs = fs
        self.root = root
        self.written: list[str] = []

    @abstractmethod
    def add(self, index: int, source: str, payload: Any) -> None: ...

    def close(self) -> list[str]:
        return self.written

    def _open(self, relative: str) -> pa.NativeFile:
        path = f"{self.root}/{relative}"
        self.written.append(path)
        # No compression="detect": a name's extension must never change the bytes.
        return self.fs.open_output_stream(path, compression=None)


class _ParquetSink(_Sink):
    def __init__(self, fs: pafs.FileSystem, root: str, array: bool) -> None:
        super().__init__(fs, root)
        self.array = array
        self.schema = ARRAY_SCHEMA if array else BYTES_SCHEMA
        self.stream: pa.NativeFile | None = None
        self.writer: pq.ParquetWriter | None = None
        self.pending: list[tuple[str, Any, str]] = []

    def add(self, index: int, source: str, payload: Any) -> None:
        if index % ROWS_PER_FILE == 0:
            self._close_file()
            name = f"part-{index // ROWS_PER_FILE:05d}.parquet"
            self.stream = self._open(name)
            self.writer = pq.ParquetWriter(self.stream, self.schema)
        self.pending.append((_row_id(index), payload, source))
        if len(self.pending) == ROWS_PER_ROW_GROUP:
            self._flush()

    def close(self) -> list[str]:
        self._close_file()
        return self.written

    def _flush(self) -> None:
        if not self.pending or self.writer is None:
            return
        ids, images, sources = zip(*self.pending, strict=True)
        self.pending = []
        if self.array:
            column: pa.Array = pa.FixedShapeTensorArray.from_numpy_ndarray(np.stack(images))
        else:
            column = pa.array(images, type=pa.binary())
        table = pa.Table.from_arrays(
            [pa.array(ids, pa.string()), column, pa.array(sources, pa.string())],
            schema=self.schema,
        )
        self.writer.write_table(table, row_group_size=ROWS_PER_ROW_GROUP)

    def _close_file(self) -> None:
        self._flush()
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.stream is not None:
            # ParquetWriter leaves a stream it did not open to its owner.
            self.stream.close()
            self.stream = None


class _FolderSink(_Sink):
    def __init__(self, fs: pafs.FileSystem, root: str) -> None:
        super().__init__(fs, root)
        self.made: set[str] = set()

    def add(self, index: int, source: str, payload: Any) -> None:
        if source not in self.made:
            self.fs.create_dir(f"{self.root}/{source}", recursive=True)
            self.made.add(source)
        with self._open(f"{source}/{_row_id(index)}.jpg") as stream:
            stream.write(payload)


class _TarSink(_Sink):
    def __init__(self, fs: pafs.FileSystem, root: str) -> None:
        super().__init__(fs, root)
        self.stream: pa.NativeFile | None = None
        self.tar: tarfile.TarFile | None = None

    def add(self, index: int, source: str, payload: Any) -> None:
        if index % ROWS_PER_FILE == 0:
            self._close_shard()
            self.stream = self._open(f"shard-{index // ROWS_PER_FILE:06d}.tar")
            # Stays open across add() calls until the shard is full, hence no `with`.
            self.tar = tarfile.open(  # noqa: SIM115
                fileobj=self.stream, mode="w", format=tarfile.USTAR_FORMAT
            )
        key = _row_id(index)
        meta = json.dumps({"source": source}, sort_keys=True).encode()
        self._member(f"{key}.jpg", payload)
        self._member(f"{key}.json", meta)

    def close(self) -> list[str]:
        self._close_shard()
        return self.written

    def _member(self, name: str, data: bytes) -> None:
        assert self.tar is not None
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = TAR_MTIME
        info.mode = 0o644
        self.tar.addfile(info, io.BytesIO(data))

    def _close_shard(self) -> None:
        if self.tar is not None:
            self.tar.close()
            self.tar = None
        if self.stream is not None:
            self.stream.close()
            self.stream = None


_SINKS = {
    "parquet": lambda fs, root: _ParquetSink(fs, root, array=False),
    "parquet-array": lambda fs, root: _ParquetSink(fs, root, array=True),
    "folder": _FolderSink,
    "webdataset": _TarSink,
}

__all__ = ["FORMATS", "SOURCES", "DatagenResult", "add_arguments", "generate", "main"]
