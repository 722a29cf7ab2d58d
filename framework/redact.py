"""Keep credentials out of everything infer-run prints or writes."""

from __future__ import annotations

import re
from typing import Any

SECRET_KEY = re.compile(r"secret|passw|token|api[_-]?key|private[_-]?key|credential", re.I)
MASK = "***"
# A `storage:` node holds credentials; one written as a bare value (a key pasted in place
# of the mapping) is a spec problem, but a secret all the same.
STORAGE_KEY = "storage"
# Keys whose value is a URL that may carry a password or a signed query: masked in part,
# the host kept to tell which endpoint was meant.
URL_KEYS = ("endpoint_url",)
# "scheme://user:password@host": no "/" before the "@", so an S3 key holding "@" is kept.
URL_USERINFO = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^\s/@`'\"]+@", re.I)
# An http(s) URL's query ("?X-Amz-Security-Token=..."); a "?" in an s3:// key is a name.
HTTP_QUERY = re.compile(r"(\bhttps?://[^\s?#`'\"]*)\?[^\s`'\"]+", re.I)


def redact_text(text: str) -> str:
    """``text`` with the userinfo and the query of every URL in it masked: pyarrow's
    messages repeat an endpoint they cannot use whole."""
    return HTTP_QUERY.sub(rf"\1?{MASK}", URL_USERINFO.sub(rf"\1{MASK}@", text))


def redact(data: Any) -> Any:
    """A copy of plain data with every value under a secret-looking key masked, and a
    ``storage`` value that is not a mapping; a URL's password and query masked."""
    if isinstance(data, dict):
        return {k: _redacted(str(k), v) for k, v in data.items()}
    if isinstance(data, list):
        return [redact(v) for v in data]
    return data


def _redacted(key: str, value: Any) -> Any:
    if _secret(key, value):
        return MASK
    if key in URL_KEYS and isinstance(value, str):
        return redact_text(value)
    return redact(value)


def _secret(key: str, value: Any) -> bool:
    if value is None:
        return False
    return bool(SECRET_KEY.search(key)) or (key == STORAGE_KEY and not isinstance(value, dict))
