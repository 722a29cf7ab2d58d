"""What a reader's folder holds: symlink loops refused, and its parquet files listed as
Ray Data reads them (footers read ahead, files without the suffix named)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from framework.storage import filesystem_for, map_files

Dangling = list[tuple[str, FileNotFoundError]]


def scan_links(fs: pafs.FileSystem, root: str) -> tuple[str | None, Dangling]:
    """The symlinks under a local folder ``root`` that a recursive listing trips on, in one
    walk: a symlinked folder leading back to a folder above it (``link -> target``, or
    None), and the symlinks whose target does not exist, sorted, each with the error that
    says so. (None, []) elsewhere.

    pyarrow's recursive listing follows a looping link until the OS stops it (one
    multiplied the rows, two made the listing run for ever), and leaves a dangling link
    out without a word: a file the user meant to be read would vanish from the run.
    Folders are walked as pyarrow walks them, through symlinked folders, each real folder
    once, never down a loop.
    """
    if not isinstance(fs, pafs.LocalFileSystem) or not os.path.isdir(root):
        return None, []
    loop: str | None = None
    dangling: Dangling = []
    # Each folder with the real paths of the folders above it, up to root.
    waiting: list[tuple[str, frozenset[str]]] = [(root.rstrip(os.sep) or os.sep, frozenset())]
    seen: set[str] = set()
    while waiting:
        folder, above = waiting.pop()
        if (real := os.path.realpath(folder)) in seen:
            continue
        seen.add(real)
        chain = above | {real}
        try:
            entries = list(os.scandir(folder))
        except OSError:  # unreadable: pyarrow's listing of it fails with its own message
            continue
        folders = []
        for entry in entries:
            # is_dir() follows a link, and costs no system call for a plain file or folder.
            if entry.is_dir():
                target = os.path.realpath(entry.path)
                if entry.is_symlink() and target in chain:
                    loop = loop or f"{entry.path} -> {target}"
                else:
                    folders.append((entry.path, chain))
            elif entry.is_symlink() and not os.path.exists(entry.path):
                target = os.path.normpath(os.path.join(folder, os.readlink(entry.path)))
                error = FileNotFoundError(f"a symlink to {target}, which does not exist")
                dangling.append((entry.path, error))
        # Visited in listing order, as os.walk visits them: of a loop reached two ways (a
        # folder and a link to it), the message names the way met first.
        waiting.extend(reversed(folders))
    return loop, sorted(dangling, key=lambda pair: pair[0])


def _loop_error(loop: str | None) -> OSError | None:
    return None if loop is None else OSError(f"a symlink loop ({loop}): remove the link")


def loop_error(fs: pafs.FileSystem, root: str) -> OSError | None:
    """The error for a symlinked folder under ``root`` leading back above it (``scan_links``)."""
    return _loop_error(scan_links(fs, root)[0])


def dangling_links(fs: pafs.FileSystem, root: str) -> Dangling:
    """The symlinks under a local folder ``root`` whose target does not exist, sorted, each
    with the error that says so; [] elsewhere (``scan_links``)."""
    return scan_links(fs, root)[1]


PARQUET_MAGIC = b"PAR1"


def _data_files(fs: pafs.FileSystem, where: str) -> list[str]:
    """The files under the folder ``where``, but none below a ``_`` or ``.`` name (a job's
    ``_temporary``, ``_SUCCESS``, macOS's ``._`` files), at any depth. ``OSError`` for a
    symlink loop, which pyarrow's recursive listing would follow for ever."""
    if error := loop_error(fs, where):
        raise error
    return _listed(fs, where)


def _listed(fs: pafs.FileSystem, where: str) -> list[str]:
    """``_data_files`` of a folder known to hold no symlink loop."""
    return [
        i.path
        for i in fs.get_file_info(pafs.FileSelector(where, recursive=True))
        if i.type == pafs.FileType.File and _is_data(i.path, where)
    ]


def _is_data(path: str, where: str) -> bool:
    return not any(part.startswith(("_", ".")) for part in path[len(where) :].split("/"))


def unsuffixed_parquet(path: str, storage: Mapping[str, Any] | None) -> list[str]:
    """Files under the folder ``path`` that hold parquet but are named without the
    ``.parquet`` suffix (Hive's ``000000_0``): Ray Data's parquet reading leaves them out."""
    fs, where = filesystem_for(path, storage)
    if fs.get_file_info(where).type != pafs.FileType.Directory:
        return []
    bare = [f for f in _data_files(fs, where) if "." not in f.rsplit("/", 1)[-1]]

    def is_parquet(file: str) -> bool:
        try:
            with fs.open_input_file(file) as f:
                return f.read(len(PARQUET_MAGIC)) == PARQUET_MAGIC
        except OSError:
            return False

    return sorted(f for f, yes in zip(bare, map_files(is_parquet, bare), strict=True) if yes)


def parquet_files(
    paths: list[str],
    storage: Mapping[str, Any] | None,
    footer_check: Callable[[Any], Exception | None] | None = None,
) -> tuple[pafs.FileSystem, list[str], list[tuple[str, Exception]]]:
    """Every parquet file under ``paths``: (filesystem, readable ones, unreadable ones).
    Under a folder: files named ``.parquet`` (any case, as Ray Data takes them), but none
    below a ``_`` or ``.`` name; ``read_parquet_files`` reads exactly these. A symlink
    among them whose target is missing is an unreadable one.

    Reading each footer costs one small read per file (``FILE_READS_AT_ONCE`` at a time),
    and spares the run a read task that would fail on a corrupt file after hours of work.
    ``footer_check`` (given the footer's ``FileMetaData``) may find more reasons not to read
    a file: those are unreadable ones too.
    """
    import pyarrow.parquet as pq

    fs, _ = filesystem_for(paths[0], storage)
    files: list[str] = []
    dangling: list[tuple[str, Exception]] = []
    for path in paths:
        _, where = filesystem_for(path, storage)
        info = fs.get_file_info(where)
        if info.type == pafs.FileType.Directory:
            loop, links = scan_links(fs, where)  # one walk for both
            if error := _loop_error(loop):
                raise error
            files += sorted(f for f in _listed(fs, where) if f.lower().endswith(".parquet"))
            dangling += [
                (link, error)
                for link, error in links
                if link.lower().endswith(".parquet") and _is_data(link, where)
            ]
        else:
            files.append(where)
    # Each once, where paths overlap ([data, data/a.parquet]): one footer read, one report.
    files = list(dict.fromkeys(files))
    # And each once where one is reached by two names (a folder and a symlink to it,
    # both given): every name stays among the readable ones, since the read lists the
    # one of the paths ``distinct_paths`` keeps, but its footer is read, and an
    # unreadable one reported, once.
    same = _same_file(fs, files, os.path.realpath)
    dangling = list({link: (link, error) for link, error in dangling}.values())
    where = _same_file(fs, [link for link, _ in dangling], _real_folder)
    dangling = [(link, error) for link, error in dangling if where[link] == link]
    firsts = list(dict.fromkeys(same.values()))

    def footer_error(file: str) -> Exception | None:
        try:
            metadata = pq.read_metadata(file, filesystem=fs)
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            return exc
        return footer_check(metadata) if footer_check else None

    errors = dict(zip(firsts, map_files(footer_error, firsts), strict=True))
    good, bad = [], []
    for file in files:
        error = errors[same[file]]
        if error is None:
            good.append(file)
        elif same[file] == file:
            bad.append((file, error))
    return fs, good, bad + dangling


def _same_file(fs: pafs.FileSystem, names: list[str], real: Callable[[str], str]) -> dict[str, str]:
    """Each of ``names`` -> the first of them whose ``real`` path is the same, on a local
    filesystem; elsewhere, itself."""
    if not isinstance(fs, pafs.LocalFileSystem):
        return {name: name for name in names}
    first: dict[str, str] = {}
    return {name: first.setdefault(real(name), name) for name in names}


def _real_folder(link: str) -> str:
    """Where a symlink is, its folders resolved: a dangling link has no target to compare,
    and two of them leading to one missing file are two inputs the user meant."""
    return os.path.join(os.path.realpath(os.path.dirname(link)), os.path.basename(link))


def parquet_schema(path: str, storage: Mapping[str, Any] | None) -> pa.Schema:
    """The schema of the parquet data at ``path`` (partition columns included).

    When a corrupt file would make the dataset's schema unreadable, the schema comes from
    the first readable file: corrupt files are the run's to set aside (``errors.policy``),
    not a reason to refuse the spec. ``OSError`` when no file is readable.
    """
    import pyarrow.parquet as pq

    fs, where = filesystem_for(path, storage)
    try:
        return pq.ParquetDataset(where, filesystem=fs).schema
    except (OSError, ValueError) as exc:
        _, good, _ = parquet_files([path], storage)
        if not good:
            raise OSError(str(exc)) from exc
        return pq.read_schema(good[0], filesystem=fs)
