"""Helpers shared by the image readers: extensions, path lists and driver-side listing."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from framework import SpecError, dangling_links, filesystem_for, loop_error

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
    except (OSError, pa.ArrowInvalid) as exc:  # unreachable store, refused keys, 'a//b'
        return [f"path: cannot access {path}: {exc}"]


def list_relative(fs: pafs.FileSystem, root: str) -> list[str]:
    """Every file under ``root`` as a posix path relative to it, as Ray's listing keeps them."""
    root = root.rstrip("/")
    if error := loop_error(fs, root):
        raise error
    found = []
    for info in fs.get_file_info(pafs.FileSelector(root, recursive=True)):
        if not info.is_file or not info.path.startswith(root + "/"):
            continue
        relative = info.path[len(root) + 1 :]
        if not relative.startswith(RAY_SKIPPED_PREFIXES):
            found.append(relative)
    return found


def dangling_inputs(
    fs: pafs.FileSystem, root: str, wanted: Callable[[str], bool]
) -> list[tuple[str, FileNotFoundError]]:
    """The symlinks under a local folder ``root`` whose targets are missing and that the
    read would have taken, had they led somewhere: their path relative to ``root`` is not
    one Ray's listing skips and passes ``wanted``. Each with the error to report for it."""
    root = root.rstrip("/")
    return [
        (link, error)
        for link, error in dangling_links(fs, root)
        if not (relative := link[len(root) + 1 :]).startswith(RAY_SKIPPED_PREFIXES)
        and wanted(relative)
    ]


def has_extension(name: str, extensions: tuple[str, ...]) -> bool:
    lowered = name.lower()
    return any(lowered.endswith("." + ext) for ext in extensions)
