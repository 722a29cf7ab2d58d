"""Helpers shared by the image readers: extensions, path lists and driver-side listing."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow.fs as pafs
from ray.data.datasource import Partitioning, PathPartitionFilter, PathPartitionParser

from framework import SpecError, filesystem_for

IMAGE_EXTENSIONS: tuple[str, ...] = ("jpg", "jpeg", "png", "bmp", "webp", "tif", "tiff", "gif")

# Ray's directory listing drops entries whose path relative to the listed root starts
# with one of these, so only names directly under the root are affected.
RAY_SKIPPED_PREFIXES = (".", "_")


def normalize_extensions(extensions: Iterable[str]) -> tuple[str, ...]:
    """Lower-case extensions without their leading dot, duplicates removed, order kept."""
    return tuple(dict.fromkeys(e.strip().lstrip(".").lower() for e in extensions))


def extension_problems(extensions: Any) -> list[str]:
    if (
        isinstance(extensions, str)
        or not isinstance(extensions, Iterable)
        or not list(extensions)
        or not all(isinstance(e, str) and e.strip().lstrip(".") for e in extensions)
    ):
        return [f"extensions: expected a non-empty list such as [jpg, png], got {extensions!r}"]
    return []


def as_paths(path: str | list[str]) -> list[str]:
    return [path] if isinstance(path, str) else list(path)


def path_list_problems(paths: list[str]) -> list[str]:
    """One filesystem serves every path, so they must share a scheme."""
    if not paths or not all(isinstance(p, str) and p for p in paths):
        return [f"path: expected a path or a non-empty list of paths, got {paths!r}"]
    schemes = {p.split("://", 1)[0] if "://" in p else "file" for p in paths}
    if len(schemes) > 1:
        return [f"path: all paths must use the same storage, got {', '.join(sorted(schemes))}"]
    return []


def locate(
    path: str, storage: Mapping[str, Any] | None
) -> tuple[pafs.FileSystem, str, pafs.FileType] | list[str]:
    """The filesystem, inner path and file type of ``path``, or the problems met on the way."""
    try:
        fs, where = filesystem_for(path, storage)
        return fs, where, fs.get_file_info(where).type
    except SpecError as exc:
        return exc.problems
    except OSError as exc:
        return [f"path: cannot access {path}: {exc}"]


def list_relative(fs: pafs.FileSystem, root: str) -> list[str]:
    """Every file under ``root`` as a posix path relative to it, as Ray's listing keeps them."""
    root = root.rstrip("/")
    found = []
    for info in fs.get_file_info(pafs.FileSelector(root, recursive=True)):
        if not info.is_file or not info.path.startswith(root + "/"):
            continue
        relative = info.path[len(root) + 1 :]
        if not relative.startswith(RAY_SKIPPED_PREFIXES):
            found.append(relative)
    return found


def has_extension(name: str, extensions: tuple[str, ...]) -> bool:
    lowered = name.lower()
    return any(lowered.endswith("." + ext) for ext in extensions)


class ExtensionFilter(PathPartitionFilter):
    """Keeps, in a Ray Data read's listing, the files whose name ends with one of
    ``extensions`` (case-insensitive); pass it as ``partition_filter`` in place of
    ``file_extensions``.

    Ray's ``file_extensions`` compares only the part of a path before its first "?" (to
    ignore an object-store query such as "x.parquet?versionId=3"), so a file named
    "q?.jpg" is compared as "q" and silently left out of the read. This compares the
    whole name, as ``check`` does. Ray calls a filter both on a list (``__call__``) and
    on one path (``apply``), so both are overridden; no partitions are parsed.
    """

    def __init__(self, extensions: tuple[str, ...]) -> None:
        super().__init__(PathPartitionParser(Partitioning("hive")), lambda _: True)
        self.extensions = extensions

    def __call__(self, paths: list[str]) -> list[str]:
        return [path for path in paths if self.apply(path)]

    def apply(self, path: str) -> bool:
        return has_extension(path, self.extensions)
