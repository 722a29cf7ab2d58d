"""A reader's paths reduced so that each input file is read once.

Ray Data reads every path it is given: a file given twice (``[data/a.parquet,
data/a.parquet]``, two patterns matching it, or ``[data, data/a.parquet]``) was read
twice and its rows written twice. Dropping the paths another given path already reads,
before Ray lists anything, lists and reads each file once.
"""

from __future__ import annotations

import functools
import logging
import os
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
    ``named``) must be given the names from all ``paths``, and those of
    ``distinct_paths_and_names``: a file left out here is read through its folder's
    listing, which that filter judges alike."""
    return distinct_paths_and_names(paths, storage)[0]


def distinct_paths_and_names(
    paths: list[str], storage: Mapping[str, Any] | None
) -> tuple[list[str], dict[str, list[str]]]:
    """``distinct_paths``, and for each path left out as inside a folder, the names (inside
    the store) under which that folder's listing reaches it: a symlink to a file is listed
    under its target's name (``notes.txt``), which a filter keeping the files the spec
    names must keep too."""
    if len(paths) < 2 or len({scheme_of(p).replace("file://", "") for p in paths}) > 1:
        return list(paths), {}
    wheres = [inner_path(p) for p in paths]
    keys = [where.rstrip("/") for where in wheres]
    forms = _forms(keys, local=not scheme_of(paths[0]).replace("file://", ""))
    everywhere = {form for these in forms for form in these}
    # Only a path that holds another given one can be a folder whose listing reaches it:
    # asked of the store for those alone, not once per file of an expanded glob (on S3, a
    # request each: minutes for 10,000 files).
    outers = {
        prefix
        for form in everywhere
        for prefix in ("/".join(form.split("/")[:i]) for i in range(1, form.count("/") + 1))
        if prefix in everywhere
    }
    # A name of a folder inside the filesystem -> the folder as the spec first gave it,
    # and as Ray lists it (its files' names start so).
    folders: dict[str, tuple[str, str]] = {}
    asked = [
        (path, where, these)
        for path, where, these in zip(paths, wheres, forms, strict=True)
        if not outers.isdisjoint(these)
    ]
    fs = filesystem_for(paths[0], storage)[0] if asked else None
    infos = fs.get_file_info([where for _, where, _ in asked]) if fs is not None else []
    for (path, where, these), info in zip(asked, infos, strict=True):
        if info.type == pafs.FileType.Directory:
            for form in these:
                folders.setdefault(form, (path, where.rstrip("/")))
    kept: list[str] = []
    dropped: list[str] = []
    names: dict[str, list[str]] = {}
    seen: set[str] = set()
    for path, these in zip(paths, forms, strict=True):
        key = these[-1]  # its real path: a symlink to a path given is that path again
        if key in seen:
            dropped.append(f"{path} (given twice)")
            continue
        seen.add(key)
        listings = [found for form in these for found in _folder_listings(form, folders)]
        if not listings:
            kept.append(path)
        else:
            dropped.append(f"{path} (inside {listings[0][0]})")
            names[path] = list(dict.fromkeys(name for _, name in listings))
    if dropped:
        more = f" and {len(dropped) - SHOWN} more" if len(dropped) > SHOWN else ""
        log.warning(
            "reader.path: each input file is read once - left out %s%s",
            ", ".join(dropped[:SHOWN]),
            more,
        )
    return kept, names


def _forms(keys: list[str], local: bool) -> list[tuple[str, ...]]:
    """Each of ``keys`` (paths inside the store, without a trailing "/") as the names it
    has in the store, its real path last. On S3, the key alone. A local path also by each
    of its folders resolved (``os.path.realpath``): ``link/sub/x``, where ``link`` leads to
    ``data``, is ``data/sub/x`` too, which a listing of ``data`` reaches, since pyarrow's
    listing, and so Ray Data's, follows symlinked folders (and a symlink to a given folder
    or file was read through both names)."""
    if not local:
        return [(key,) for key in keys]
    real = functools.lru_cache(maxsize=None)(os.path.realpath)
    out = []
    for key in keys:
        parts = key.split("/")
        resolved = (real("/".join(parts[:i])) for i in range(2, len(parts) + 1))
        found = [key, *("/".join([r.rstrip("/"), *parts[i:]]) for i, r in enumerate(resolved, 2))]
        out.append((*(f for f in dict.fromkeys(found) if f != found[-1]), found[-1]))
    return out


def _folder_listings(key: str, folders: Mapping[str, tuple[str, str]]) -> list[tuple[str, str]]:
    """Each given folder (as the spec gives it) whose listing by Ray takes ``key``, with
    the name that listing gives it. Any such folder does, left out itself or not: what
    Ray lists of a folder inside it, it lists of the outer one too."""
    found = []
    for folder, (given, listed) in folders.items():
        prefix = folder.rstrip("/") + "/"  # "/" for the root itself
        below = key[len(prefix) :] if key != folder and key.startswith(prefix) else None
        if below is not None and not below.startswith(RAY_SKIPPED):
            found.append((given, f"{listed}/{below}"))
    return found


__all__ = ["distinct_paths", "distinct_paths_and_names"]
