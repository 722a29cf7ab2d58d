"""Keep credentials out of everything infer-run prints or writes."""

from __future__ import annotations

import re
from typing import Any

SECRET_KEY = re.compile(r"secret|passw|token|api[_-]?key|private[_-]?key|credential", re.I)
MASK = "***"


def redact(data: Any) -> Any:
    """A copy of plain data with every value under a secret-looking key masked."""
    if isinstance(data, dict):
        return {
            k: (MASK if SECRET_KEY.search(str(k)) and v is not None else redact(v))
            for k, v in data.items()
        }
    if isinstance(data, list):
        return [redact(v) for v in data]
    return data
