"""A file filter for Ray Data reads that keeps every file with a wanted extension.

Imported on its own (it imports Ray Data), as ``framework.torch_runtime`` is.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
from ray.data.datasource import Partitioning, PathPartitionFilter, PathPartitionParser

# Ray's own path resolution (pyproject keeps Ray below 2.64): what it keeps of a path is
# what its read lists.
from ray.data.datasource.path_util import _resolve_paths_and_filesystem

from framework.errors import SpecError
from framework.storage import filesystem_for


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

    def __init__(
        self, extensions: tuple[str, ...], named: Iterable[str] = (), roots: Iterable[str] = ()
    ) -> None:
        super().__init__(PathPartitionParser(Partitioning("hive")), lambda _: True)
        self.extensions = extensions
        self.named = frozenset(named)
        # The folders listed (as Ray lists them), below which a "." folder is not data.
        self.roots = tuple(root.rstrip("/") + "/" for root in roots)

    def __call__(self, paths: list[str]) -> list[str]:
        return [path for path in paths if self.apply(path)]

    def apply(self, path: str) -> bool:
        """Files the spec names are read whatever their names; found in a folder, a file
        needs a wanted extension and a name not starting with "." (macOS's ``._x.tar``
        beside every file copied to a shared drive; Ray skips them at the top only), nor a
        folder below one of ``roots`` so named (Jupyter's ``.ipynb_checkpoints``, a copy
        of every file it edits: read, every row twice)."""
        if path in self.named:
            return True
        if path.rsplit("/", 1)[-1].startswith("."):
            return False
        if any(_below_hidden(path, root) for root in self.roots):
            return False
        lowered = path.lower()
        return any(lowered.endswith("." + ext) for ext in self.extensions)


def _below_hidden(path: str, root: str) -> bool:
    """Whether ``path`` lies in a folder named with a leading "." below ``root`` (ending
    in "/")."""
    return path.startswith(root) and "/." in "/" + path[len(root) :].rpartition("/")[0]


class ListedFilter(ExtensionFilter):
    """Keeps exactly ``files`` in a Ray Data read's listing: the files a reader's check
    looked at, so that the read takes no file the check did not (Ray's listing keeps
    hidden files below the top folder) and leaves none out (a parquet file without the
    ``.parquet`` suffix)."""

    def __init__(self, files: list[str]) -> None:
        super().__init__(())
        self.files = frozenset(files)

    def apply(self, path: str) -> bool:
        return path in self.files


def path_for_ray(path: str, fs: pafs.FileSystem, folder: bool) -> str | None:
    """``path`` (inside ``fs``) written so that a Ray Data read takes that path and no
    other, or None where no writing does.

    Ray reads a path as a URL, and a "?" or ";" at its end as an empty query or
    parameters, which it drops: a folder "photos?" was read as "photos" (a
    FileNotFoundError, or the files of another folder). A "/" after a folder's name
    keeps the name whole. Ray's own resolution says which writing it keeps.
    """
    for candidate in (path, path.rstrip("/") + "/") if folder else (path,):
        resolved, _ = _resolve_paths_and_filesystem([candidate], fs)
        if resolved and resolved[0].rstrip("/") == path.rstrip("/"):
            return candidate
    return None


def paths_for_ray(fs: pafs.FileSystem, paths: list[str]) -> list[str]:
    """``path_for_ray`` of each of ``paths``, files and folders; one that has no such
    writing (a reader's ``check`` refuses it) as it is."""
    infos = fs.get_file_info(paths)
    return [
        path_for_ray(path, fs, info.type == pafs.FileType.Directory) or path
        for path, info in zip(paths, infos, strict=True)
    ]


def misread_problems(paths: list[str], storage: Mapping[str, Any] | None) -> list[str]:
    """A spec problem for each of ``paths`` that Ray Data would read as another path,
    however it is written (see ``path_for_ray``: a file named ``data.jsonl?``)."""
    problems = []
    for path in paths:
        try:
            fs, where = filesystem_for(path, storage)
            kind = fs.get_file_info(where).type
        except (SpecError, OSError, pa.ArrowInvalid):
            continue  # the reader's own check says what is wrong with it
        folder = kind == pafs.FileType.Directory
        if kind != pafs.FileType.NotFound and path_for_ray(where, fs, folder) is None:
            problems.append(
                f"path: Ray Data cannot read {path} by its name: it reads a path as a URL, "
                "and drops a '?' or ';' at its end - rename it"
            )
    return problems


__all__ = ["ExtensionFilter", "ListedFilter", "misread_problems", "path_for_ray", "paths_for_ray"]
