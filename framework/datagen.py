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
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from framework.cli_args import at_least, place
from framework.datagen_photos import SOURCES, render_all, source_paths
from framework.datagen_sinks import make_sink
from framework.errors import InputError, did_you_mean
from framework.storage import filesystem_for, names_no_place

FORMATS = ("parquet", "parquet-array", "folder", "webdataset")

# The size of parquet files and tar shards; generate() hands these to the sinks.
ROWS_PER_FILE = 1000
# Several row groups per file let a reader split one large file across tasks.
ROWS_PER_ROW_GROUP = 100
# Below this many rows starting worker processes costs more than it saves.
MIN_ROWS_PER_WORKER = 100


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
    if names_no_place(str(out)):
        raise InputError(f"datagen: OUT is empty ({str(out)!r}) - name the output folder")
    source_paths()  # fail on missing packages before touching the output
    fs, root = filesystem_for(str(out), storage)
    root = root.rstrip("/") or root  # "s3://bucket/prefix/" must not give "prefix//part-..."
    try:
        _prepare_output(fs, root, str(out), overwrite)
        fs.create_dir(root, recursive=True)
    except OSError as exc:
        raise InputError(f"datagen: cannot write {out}: {exc}") from None

    sink = make_sink(format, fs, root, ROWS_PER_FILE, ROWS_PER_ROW_GROUP)
    workers = min(workers or _cpus(), max(1, rows // MIN_ROWS_PER_WORKER))
    rendered = render_all(rows, format, seed, workers)
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
    parser.add_argument("out", type=place, help="output directory or s3:// prefix")
    parser.add_argument("--rows", type=at_least(1), required=True, help="number of images")
    parser.add_argument("--format", choices=FORMATS, default="parquet", help="output layout")
    parser.add_argument("--seed", type=at_least(0), default=0, help="same seed, same bytes")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")
    parser.add_argument(
        "--workers", type=at_least(1), default=None, help="worker processes (default: one per CPU)"
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


def _cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


__all__ = ["FORMATS", "SOURCES", "DatagenResult", "add_arguments", "generate", "main"]
