"""A file filter for Ray Data reads that keeps every file with a wanted extension.

Imported on its own (it imports Ray Data), as ``framework.torch_runtime`` is.
"""

from __future__ import annotations

from collections.abc import Iterable

from ray.data.datasource import Partitioning, PathPartitionFilter, PathPartitionParser


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

    def __init__(self, extensions: tuple[str, ...], named: Iterable[str] = ()) -> None:
        super().__init__(PathPartitionParser(Partitioning("hive")), lambda _: True)
        self.extensions = extensions
        self.named = frozenset(named)

    def __call__(self, paths: list[str]) -> list[str]:
        return [path for path in paths if self.apply(path)]

    def apply(self, path: str) -> bool:
        """Files the spec names are read whatever their names; found in a folder, a file
        needs a wanted extension and a name not starting with "." (macOS's ``._x.tar``
        beside every file copied to a shared drive; Ray skips them at the top only)."""
        if path in self.named:
            return True
        if path.rsplit("/", 1)[-1].startswith("."):
            return False
        lowered = path.lower()
        return any(lowered.endswith("." + ext) for ext in self.extensions)


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


__all__ = ["ExtensionFilter", "ListedFilter"]
