"""Keep credentials out of everything infer-run prints or writes."""

from __future__ import annotations

import re
from typing import Any

SECRET_KEY = re.compile(r"secret|passw|token|api[_-]?key|private[_-]?key|credential", re.I)
MASK = "***"
# A `storage:` node holds credentials; one written as a bare value (a key pasted in place
# of the mapping) is a spec problem, but a secret all the same.
STORAGE_KEY = "storage"


def redact(data: Any) -> Any:
    """A copy of plain data with every value under a secret-looking key masked, and a
    ``storage`` value that is not a mapping."""
    if isinstance(data, dict):
        return {k: (MASK if _secret(str(k), v) else redact(v)) for k, v in data.items()}
    if isinstance(data, list):
        return [redact(v) for v in data]
    return data


def _secret(key: str, value: Any) -> bool:
    if value is None:
        return False
    return bool(SECRET_KEY.search(key)) or (key == STORAGE_KEY and not isinstance(value, dict))
