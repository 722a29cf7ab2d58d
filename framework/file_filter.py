"""A file filter for Ray Data reads that keeps every file with a wanted extension.

Imported on its own (it imports Ray Data), as ``framework.torch_runtime`` is.
"""

from __future__ import annotations

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

    def __init__(self, extensions: tuple[str, ...]) -> None:
        super().__init__(PathPartitionParser(Partitioning("hive")), lambda _: True)
        self.extensions = extensions

    def __call__(self, paths: list[str]) -> list[str]:
        return [path for path in paths if self.apply(path)]

    def apply(self, path: str) -> bool:
        lowered = path.lower()
        return any(lowered.endswith("." + ext) for ext in self.extensions)


__all__ = ["ExtensionFilter"]
