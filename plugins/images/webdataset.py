"""``webdataset``: WebDataset tar shards, one row per sample with its image's raw bytes."""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import pyarrow.fs as pafs
import ray.data

from framework import ID_COLUMN, Reader, SpecError, expand_globs, filesystem_for
from plugins.images.common import (
    IMAGE_EXTENSIONS,
    as_paths,
    extension_problems,
    has_extension,
    list_relative,
    locate,
    normalize_extensions,
    path_list_problems,
)

# Ray opens ".gz" shards through pyarrow's compression detection, and tarfile reads the rest.
SHARD_EXTENSIONS: tuple[str, ...] = ("tar", "tar.gz", "tgz")


def pick_image(sample: dict[str, Any], extensions: tuple[str, ...]) -> dict[str, Any]:
    """Ray's per-sample hook: keep the key and the first image member, in tar order.

    A member's extension is the last part of its suffix, so "seg.png" counts as png. A
    sample without one gets b"" instead of disappearing, so the decode stage fails it as a
    bad row under its own id.
    """
    image = next(
        (
            value
            for suffix, value in sample.items()
            if not suffix.startswith("__") and suffix.rsplit(".", 1)[-1].lower() in extensions
        ),
        b"",
    )
    return {ID_COLUMN: sample["__key__"], "image": image}


class WebDatasetReader(Reader):
    """Samples of WebDataset shards (``.tar``, ``.tar.gz``, ``.tgz`` files or directories of them).

    ``id`` is the sample key (the member path up to the first "." of its file name) and
    ``image`` the bytes of the sample's first member whose extension is in
    ``extensions``, or b"" when it has none. Keys are assumed unique across shards.
    """

    def __init__(
        self,
        path: str | list[str],
        extensions: list[str] | None = None,
        storage: dict[str, Any] | None = None,
        num_blocks: int | None = None,
    ) -> None:
        self.paths = as_paths(path)
        self.extensions = normalize_extensions(extensions or IMAGE_EXTENSIONS)
        self.storage = storage
        self.num_blocks = num_blocks

    @classmethod
    def check(cls, params: Mapping[str, Any]) -> list[str]:
        paths = as_paths(params["path"])
        problems = path_list_problems(paths) + extension_problems(
            params.get("extensions") or IMAGE_EXTENSIONS
        )
        if problems:
            return problems
        try:
            paths = expand_globs(paths, params.get("storage"))
        except SpecError as exc:
            return exc.problems
        for path in paths:
            problems += shard_problems(path, params.get("storage"))
        return problems

    def read(self) -> ray.data.Dataset:
        paths = expand_globs(self.paths, self.storage)
        fs, _ = filesystem_for(paths[0], self.storage)
        return ray.data.read_webdataset(
            [filesystem_for(p, self.storage)[1] for p in paths],
            filesystem=fs,
            decoder=partial(pick_image, extensions=self.extensions),
            file_extensions=list(SHARD_EXTENSIONS),
            override_num_blocks=self.num_blocks,
            **self.read_args,
        )


def shard_problems(path: str, storage: Mapping[str, Any] | None) -> list[str]:
    located = locate(path, storage)
    if isinstance(located, list):
        return located
    fs, where, kind = located
    if kind == pafs.FileType.NotFound:
        return [f"path: no such file or directory {path}"]
    if kind == pafs.FileType.File:
        if has_extension(where, SHARD_EXTENSIONS):
            return []
        return [f"path: {path} is not a tar shard ({', '.join(SHARD_EXTENSIONS)})"]
    try:
        names = list_relative(fs, where)
    except OSError as exc:
        return [f"path: cannot list {path}: {exc}"]
    if not any(has_extension(n, SHARD_EXTENSIONS) for n in names):
        return [f"path: no tar shards ({', '.join(SHARD_EXTENSIONS)}) under {path}"]
    return []
