"""A WebDataset shard's members as Ray's tar iteration gives them, link members included.

tar archives a file met twice under two names as a hard link to the first, and a symlink
as a link, each a member without data that a read of the stream cannot follow (the hard
link's data lies behind it). Ray's iteration skipped them, so a sample whose image was
one vanished from the run without a word; here it stays, to be flagged as a bad row.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from framework import ERROR_COLUMN


@dataclass(frozen=True)
class LinkMember:
    """The data of a member that is a hard link or a symlink."""

    name: str
    kind: str  # "hard link" or "symlink"
    target: str

    def reason(self, shard: str) -> str:
        return (
            f"{shard}: {self.name} is a {self.kind} to {self.target}, which a streaming "
            "read cannot follow - archive the file itself"
        )


def tar_members(fileobj: BinaryIO) -> Iterator[dict[str, Any]]:
    """Ray's ``_tar_file_iterator`` of a stream: each regular member's name and bytes,
    and each link member's name with a ``LinkMember`` for its bytes."""
    with tarfile.open(fileobj=fileobj, mode="r|*") as stream:  # fileobj stays open
        for info in stream:
            if info.isreg():
                member = stream.extractfile(info)
                assert member is not None  # a regular member always has data
                yield {"fname": info.name, "data": member.read()}
            elif info.islnk() or info.issym():
                kind = "hard link" if info.islnk() else "symlink"
                yield {"fname": info.name, "data": LinkMember(info.name, kind, info.linkname)}


def link_flagged(row: dict[str, Any], shard: str) -> dict[str, Any]:
    """A sample's row whose image is a link member as a row of no image, its reason in
    ``_error`` (the framework dead-letters it); any other row as it is."""
    image = row["image"]
    if not isinstance(image, LinkMember):
        return row
    return {**row, "image": b"", ERROR_COLUMN: image.reason(shard)}
