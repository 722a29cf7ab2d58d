"""Image readers: parquet with encoded images or arrays, image folders, WebDataset shards.

Every reader yields ``id`` and ``image``: raw encoded bytes for folders, WebDataset and
parquet binary columns (decoded by a later stage), or one uint8 ndarray per batch for
parquet pixel arrays.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from framework import hookimpl
from plugins.images.folder import ImageFolderReader
from plugins.images.parquet_images import ImageParquetReader
from plugins.images.webdataset import WebDatasetReader

__all__ = ["ImageFolderReader", "ImageParquetReader", "WebDatasetReader"]


@hookimpl
def register_readers(register: Callable[[str, type[Any]], None]) -> None:
    register("image_parquet", ImageParquetReader)
    register("image_folder", ImageFolderReader)
    register("webdataset", WebDatasetReader)
