"""Local paths and ``s3://`` URIs through pyarrow's filesystems.

Readers and writers take an optional ``storage:`` mapping; anything it leaves out
comes from the standard AWS environment variables, as the AWS CLI would.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pyarrow.fs as pafs

from framework.errors import InputError, SpecError, did_you_mean, one_line
from framework.redact import MASK

STORAGE_KEYS = (
    "endpoint_url",
    "region",
    "access_key_id",
    "secret_access_key",
    "session_token",
    "anonymous",
)
_STRING_KEYS = tuple(k for k in STORAGE_KEYS if k != "anonymous")


# Files read at once when only their metadata or ids are wanted: each read is a round trip
# or two to the store, so on S3 the wait, not the bytes, is what a run waits for.
FILE_READS_AT_ONCE = 32
T = TypeVar("T")


def map_files(read: Callable[[str], T], paths: Iterable[str]) -> list[T]:
    """``read`` on every path, ``FILE_READS_AT_ONCE`` at a time, the results in order."""
    paths = list(paths)
    if len(paths) < 2:
        return [read(path) for path in paths]
    with ThreadPoolExecutor(min(FILE_READS_AT_ONCE, len(paths))) as pool:
        return list(pool.map(read, paths))


def read_files(
    fs: pafs.FileSystem, paths: Iterable[str], key: str, scheme: str = ""
) -> list[bytes]:
    """The bytes of every file in ``paths``, read ``FILE_READS_AT_ONCE`` at a time; one the
    store refuses (permissions) is an input error naming it (by its URI: ``scheme`` is the
    spec path's, ``scheme_of``) and the spec ``key`` it is of."""

    def read(path: str) -> bytes:
        try:
            with fs.open_input_stream(path) as f:
                return f.read()
        except OSError as exc:
            raise InputError(f"{key}: cannot read {scheme}{path}: {one_line(exc)}") from None

    return map_files(read, paths)


def file_sha256(path: str, storage: Mapping[str, Any] | None = None) -> str:
    """The sha256 of a file's bytes (local or ``s3://``), read in 8 MiB pieces: what names
    a checkpoint's content, where its path may since hold another file."""
    fs, where = filesystem_for(path, storage)
    digest = hashlib.sha256()
    with fs.open_input_stream(where) as f:
        while piece := f.read(8 * 1024**2):
            digest.update(piece)
    return digest.hexdigest()


GLOB_CHARS = "*?["


HIDDEN = ("_", ".")


def segments_match(parts: list[str], pattern: list[str]) -> bool:
    """Path segments against pattern segments; ``**`` stands for any number of them.

    A segment starting with "_" or "." (a job's ``_temporary``, ``.ipynb_checkpoints``),
    which Ray Data's listing of a folder skips, is matched only by a pattern segment
    starting with that character, as a shell matches a dot: ``*`` and ``**`` read the
    half-written files and the notebook's copies of every file."""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(
            segments_match(parts[i:], pattern[1:])
            for i in range(len(parts) + 1)
            if not any(part.startswith(HIDDEN) for part in parts[:i])
        )
    return (
        bool(parts)
        and (not parts[0].startswith(HIDDEN) or pattern[0].startswith(parts[0][0]))
        and fnmatch.fnmatchcase(parts[0], pattern[0])
        and segments_match(parts[1:], pattern[1:])
    )


def expand_globs(paths: str | Iterable[str], storage: Mapping[str, Any] | None = None) -> list[str]:
    """Each path with ``*``, ``?``, ``[...]`` or ``**`` replaced by the files it matches,
    sorted, local or ``s3://``; other paths as they are. Names starting with ``_`` or
    ``.`` are left out, as Ray Data's directory listing leaves them out. A pattern that
    matches no file but names a file or folder as it is written (a folder ``photos?``)
    is that path, as a shell takes it.

    Raises ``SpecError`` naming a pattern that matches nothing.
    """
    out: list[str] = []
    for path in [paths] if isinstance(paths, str) else paths:
        if not any(c in path for c in GLOB_CHARS):
            out.append(path)
            continue
        scheme = scheme_of(path)
        fs, inner = filesystem_for(path, storage)
        parts = inner.split("/")
        fixed = next(i for i, p in enumerate(parts) if any(c in p for c in GLOB_CHARS))
        base, pattern = "/".join(parts[:fixed]) or "/", parts[fixed:]
        selector = pafs.FileSelector(
            base, recursive=len(pattern) > 1 or "**" in pattern, allow_not_found=True
        )
        try:
            infos = fs.get_file_info(selector)
        except OSError as exc:
            shown = base if scheme in ("", "file://") else scheme + base  # as the spec names it
            raise SpecError([f"path: cannot list {shown} for {path}: {exc}"]) from None
        found = sorted(
            info.path
            for info in infos
            if info.is_file
            and not info.base_name.startswith(HIDDEN)
            and segments_match(info.path[len(base) :].strip("/").split("/"), pattern)
        )
        if not found and _exists(fs, inner):
            out.append(path)  # a name holding a pattern's characters, as written: "photos?"
            continue
        if not found:
            raise SpecError([f"path: no file matches {path}{missing_bucket_note(fs, inner, path)}"])
        out.extend(scheme + f if scheme != "file://" else f for f in found)
    return out


def missing_bucket_note(fs: pafs.FileSystem, where: str, path: str) -> str:
    """`` (the bucket B does not exist)`` where ``path`` (``where`` inside ``fs``), found
    missing, is an ``s3://`` one whose bucket is missing, else "": a misspelt bucket read
    as a missing key sent the user looking for the key. Asked only once a path is missing."""
    bucket = where.split("/")[0]
    if not path.startswith("s3://") or not bucket:
        return ""
    try:
        found = fs.get_file_info(bucket).type != pafs.FileType.NotFound
    except OSError:  # refused, unreachable: not known to be missing
        found = True
    return "" if found else f" (the bucket {bucket} does not exist)"


def _exists(fs: pafs.FileSystem, path: str) -> bool:
    try:
        return fs.get_file_info(path).type != pafs.FileType.NotFound
    except OSError:
        return False


def scheme_of(path: str) -> str:
    """``s3://`` (or another URI's scheme) for a URI, "" for a local path: what turns a
    path as its filesystem sees it back into the name the spec gave."""
    return path[: path.index("://") + 3] if "://" in path else ""


def names_no_place(path: str) -> bool:
    """Whether ``path`` is empty once ``file://`` is off (``""``, ``" "``, an unset
    ``"$OUT"``): pyarrow takes it for the current folder, which an overwrite would empty."""
    return not path.removeprefix("file://").strip()


def is_remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def storage_problems(where: str, storage: Any) -> list[str]:
    """A ``storage:`` node's keys and value types (``where``: its spec path).

    ``${oc.env:VAR,false}`` gives the string ``'false'``, which is truthy: taken as it
    came, it turned anonymous access on and dropped the keys given beside it.
    """
    if storage is None:
        return []
    if not isinstance(storage, Mapping):
        # The type alone: a value here may well be a secret key pasted in the wrong place.
        what = type(storage).__name__
        return [f"{where}: expected a mapping of {', '.join(STORAGE_KEYS)}, got {what}"]
    out = [
        f"{where}.{key}: unknown key"
        + (did_you_mean(str(key), STORAGE_KEYS) or f" (known: {', '.join(STORAGE_KEYS)})")
        for key in storage
        if key not in STORAGE_KEYS
    ]
    out += [
        f"{where}.{key}: expected a string, got {type(storage[key]).__name__}"
        for key in _STRING_KEYS
        if storage.get(key) is not None and not isinstance(storage[key], str)
    ]
    anonymous = storage.get("anonymous")
    if anonymous is not None and not isinstance(anonymous, bool):
        out.append(
            f"{where}.anonymous: expected true or false, got {anonymous!r} (an environment "
            "variable gives a string: write ${oc.decode:${oc.env:VAR,false}})"
        )
    return out


def filesystem_for(
    path: str, storage: Mapping[str, Any] | None = None
) -> tuple[pafs.FileSystem, str]:
    """The filesystem holding ``path`` and the path inside it."""
    problems = storage_problems("storage", storage)
    if problems:
        raise SpecError(problems)
    storage = dict(storage or {})
    if path.startswith("s3://"):
        return s3_filesystem(storage), inner_path(path)
    if is_remote(path):
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), inner_path(path)


def inner_path(path: str) -> str:
    """``path`` inside its filesystem, as ``filesystem_for`` gives it, without making the
    filesystem (an S3 one takes about a millisecond: seconds for an expanded glob)."""
    if path.startswith("s3://"):
        # Without its trailing "/", as a local path made absolute is: a folder named
        # "s3://b/out/" must not make the files under it "b/out//name", which S3 refuses.
        return path[len("s3://") :].rstrip("/")
    if is_remote(path):
        return pafs.FileSystem.from_uri(path)[1]
    local = path[len("file://") :] if path.startswith("file://") else path
    return os.path.abspath(os.path.expanduser(local))


def _given(storage: Mapping[str, Any], key: str) -> Any:
    """A storage value, or None where it is the mask the resolved spec copy writes for a
    secret: running that copy (``--resume`` after a killed replay) must take the secret
    from the environment, not sign every request with ``***``."""
    value = storage.get(key)
    return None if value == MASK else value


def s3_filesystem(storage: Mapping[str, Any]) -> pafs.S3FileSystem:
    env = os.environ
    endpoint = (
        storage.get("endpoint_url") or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    )
    kwargs: dict[str, Any] = {
        "region": storage.get("region")
        or env.get("AWS_REGION")
        or env.get("AWS_DEFAULT_REGION")
        or "us-east-1",
    }
    if storage.get("anonymous"):
        kwargs["anonymous"] = True
    else:
        key = _given(storage, "access_key_id") or env.get("AWS_ACCESS_KEY_ID")
        given_secret = _given(storage, "secret_access_key")
        secret = given_secret or env.get("AWS_SECRET_ACCESS_KEY")
        if key and secret:
            kwargs["access_key"] = key
            kwargs["secret_key"] = secret
            # A token belongs to the secret it came with: the environment's (an SSO
            # shell's) sent with the spec's own long-term keys makes AWS refuse them all.
            token = _given(storage, "session_token") or (
                None if given_secret else env.get("AWS_SESSION_TOKEN")
            )
            if token:
                kwargs["session_token"] = token
    if endpoint:
        scheme, _, rest = str(endpoint).partition("://")
        kwargs["endpoint_override"] = rest or scheme
        kwargs["scheme"] = scheme if rest else "https"
    return pafs.S3FileSystem(**kwargs)
