"""A reader's paths reduced so that each input file is read once.

Ray Data reads every path it is given: a file given twice (``[data/a.parquet,
data/a.parquet]``, two patterns matching it, or ``[data, data/a.parquet]``) was read
twice and its rows written twice. Dropping the paths another given path already reads,
before Ray lists anything, lists and reads each file once.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import pyarrow.fs as pafs

from framework.storage import filesystem_for, inner_path, scheme_of

log = logging.getLogger("infer_run")

# Ray Data's listing of a folder leaves out what lies below it at a path starting so.
RAY_SKIPPED = (".", "_")
# Paths named in the log line; the others are counted.
SHOWN = 5


def distinct_paths(paths: list[str], storage: Mapping[str, Any] | None) -> list[str]:
    """``paths`` (globs expanded, as the spec gives them) less those another of them
    reaches already: one given again, and a file or folder inside a folder given that Ray
    Data's listing of that folder takes (all but a path below it starting with "." or
    "_"), with one warning naming them. Paths of different stores are left as they are,
    for the reader's own checks.

    Ray's listing keeps every file the reader's filter then keeps, so a reader whose
    filter keeps a file because the spec names it (``ListedFilter``, ``ExtensionFilter``'s
    ``named``) must be given the names from all ``paths``: a file left out here is read
    through its folder's listing, which that filter judges alike."""
    if len(paths) < 2 or len({scheme_of(p).replace("file://", "") for p in paths}) > 1:
        return list(paths)
    wheres = [inner_path(p) for p in paths]
    keys = {where.rstrip("/") for where in wheres}
    # Only a path that holds another given one can be a folder whose listing reaches it:
    # asked of the store for those alone, not once per file of an expanded glob (on S3, a
    # request each: minutes for 10,000 files).
    outers = {
        prefix
        for key in keys
        for prefix in ("/".join(key.split("/")[:i]) for i in range(1, key.count("/") + 1))
        if prefix in keys
    }
    folders: dict[str, str] = {}  # inside the filesystem -> as the spec first gave it
    asked = [
        (path, where)
        for path, where in zip(paths, wheres, strict=True)
        if where.rstrip("/") in outers
    ]
    fs = filesystem_for(paths[0], storage)[0] if asked else None
    infos = fs.get_file_info([where for _, where in asked]) if fs is not None else []
    for (path, where), info in zip(asked, infos, strict=True):
        if info.type == pafs.FileType.Directory:
            folders.setdefault(where.rstrip("/"), path)
    kept: list[str] = []
    dropped: list[str] = []
    seen: set[str] = set()
    for path, where in zip(paths, wheres, strict=True):
        key = where.rstrip("/")
        if key in seen:
            dropped.append(f"{path} (given twice)")
            continue
        seen.add(key)
        outer = _folder_listing(key, folders)
        if outer is None:
            kept.append(path)
        else:
            dropped.append(f"{path} (inside {outer})")
    if dropped:
        more = f" and {len(dropped) - SHOWN} more" if len(dropped) > SHOWN else ""
        log.warning(
            "reader.path: each input file is read once - left out %s%s",
            ", ".join(dropped[:SHOWN]),
            more,
        )
    return kept


def _folder_listing(key: str, folders: Mapping[str, str]) -> str | None:
    """The given folder (as the spec gives it) whose listing by Ray takes ``key``, or
    None. Any such folder does, left out itself or not: what Ray lists of a folder inside
    it, it lists of the outer one too."""
    for folder, given in folders.items():
        prefix = folder.rstrip("/") + "/"  # "/" for the root itself
        below = key[len(prefix) :] if key != folder and key.startswith(prefix) else None
        if below is not None and not below.startswith(RAY_SKIPPED):
            return given
    return None


__all__ = ["distinct_paths"]
