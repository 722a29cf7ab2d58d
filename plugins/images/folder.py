"""``image_folder``: every image file under a directory, local or ``s3://``, as raw bytes."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import ray.data

from framework import ID_COLUMN, Reader, filesystem_for, missing_bucket_note
from framework.file_filter import ExtensionFilter, misread_problems, path_for_ray
from plugins.counts import count_problems
from plugins.images.common import (
    IMAGE_EXTENSIONS,
    dangling_inputs,
    extension_problems,
    has_extension,
    list_relative,
    locate,
    normalize_extensions,
)

# A path component starting with "." anywhere below the root: macOS "._x.jpg" resource
# forks and ".thumbnails/" caches carry image extensions but are not the user's images.
HIDDEN = r"(^|/)\."


def is_hidden(relative: str) -> bool:
    return re.search(HIDDEN, relative) is not None


class ImageFolderReader(Reader):
    """Image files found recursively under ``path``; ``id`` is the path relative to it.

    Files are kept when their extension (case-insensitive) is in ``extensions``. Hidden
    files and folders (a name starting with ".") are skipped at any depth, and Ray's
    listing also skips names starting with "_" directly under ``path``.
    Output columns: ``id`` (posix relative path, str) and ``image`` (the file's bytes).
    ``check`` lists the whole tree once on the driver and Ray's read lists it again, so a
    very large bucket prefix is listed twice.
    """

    def __init__(
        self,
        path: str,
        extensions: list[str] | None = None,
        storage: dict[str, Any] | None = None,
        num_blocks: int | None = None,
    ) -> None:
        self.path = path
        self.extensions = normalize_extensions(extensions or IMAGE_EXTENSIONS)
        self.storage = storage
        self.num_blocks = num_blocks

    @classmethod
    def check(cls, params: Mapping[str, Any]) -> list[str]:
        return count_problems(params, "num_blocks") + cls._input_problems(params)

    @classmethod
    def _input_problems(cls, params: Mapping[str, Any]) -> list[str]:
        path = params["path"]
        # None: the defaults. An empty list is a mistake, not a wish for the defaults.
        extensions = params.get("extensions")
        if extensions is None:
            extensions = IMAGE_EXTENSIONS
        # Bad extensions leave the folder to check, but not for images.
        problems = extension_problems(extensions)
        if not isinstance(path, str) or not path:
            return [*problems, f"path: expected one directory, got {path!r}"]
        located = locate(path, params.get("storage"))
        if isinstance(located, list):
            return problems + located
        fs, where, kind = located
        if kind == pafs.FileType.NotFound:
            return [
                *problems,
                f"path: no such directory {path}{missing_bucket_note(fs, where, path)}",
            ]
        if kind == pafs.FileType.File:
            return [*problems, f"path: {path} is a file, not a directory"]
        if problems:
            return problems
        if problems := misread_problems([path], params.get("storage")):
            return problems
        wanted = normalize_extensions(extensions)
        try:
            names = list_relative(fs, where)
        except OSError as exc:
            return [f"path: cannot list {path}: {exc}"]
        if not any(has_extension(n, wanted) and not is_hidden(n) for n in names):
            return [f"path: no image files ({', '.join(wanted)}) under {path}"]
        return []

    def read(self) -> ray.data.Dataset:
        fs, root = filesystem_for(self.path, self.storage)
        for link, error in dangling_inputs(fs, root, self.wanted):
            self.report_bad_input(link, error)
        ds = ray.data.read_binary_files(
            path_for_ray(root, fs, folder=True) or root,  # "photos?" was read as "photos"
            include_paths=True,
            filesystem=fs,
            partition_filter=ExtensionFilter(self.extensions),  # also keeps "q?.jpg"
            override_num_blocks=self.num_blocks,
            **self.read_args,
        )
        # Ray reports each file's path inside the filesystem ("bucket/key" on S3, the
        # absolute path locally), the same form filesystem_for gave the root in.
        return ds.map_batches(
            relative_ids,
            batch_format="pyarrow",
            batch_size=None,
            fn_kwargs={"root": root.rstrip("/")},
            **self.map_args,
        )

    def wanted(self, relative: str) -> bool:
        """Whether the read takes the file at ``relative`` (to ``path``)."""
        return has_extension(relative, self.extensions) and not is_hidden(relative)


def relative_ids(table: pa.Table, root: str) -> pa.Table:
    """``path``/``bytes`` rows to ``id``/``image``, dropping hidden files."""
    prefix = root + "/"
    paths = table["path"]
    outside = pc.invert(pc.starts_with(paths, prefix))
    if pc.any(outside).as_py():
        stray = pc.filter(paths, outside)[0].as_py()
        raise RuntimeError(f"image_folder: Ray listed {stray!r}, which is not under {prefix!r}")
    ids = pc.utf8_slice_codeunits(paths, len(prefix))
    out = pa.table({ID_COLUMN: ids, "image": table["bytes"]})
    return out.filter(pc.invert(pc.match_substring_regex(ids, HIDDEN)))
