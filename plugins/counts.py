"""Counts the built-in readers and writers hand to Ray Data (``num_blocks``,
``rows_per_file``): Ray Data refuses one below 1 only once the run reads or writes, with a
traceback, so their ``check()`` tells it first."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def count_problems(params: Mapping[str, Any], key: str) -> list[str]:
    value = params.get(key)
    # A value of the wrong type is binding's to tell (to Python a bool is an int).
    if isinstance(value, int) and not isinstance(value, bool) and value < 1:
        return [f"{key}: must be at least 1 (null: Ray Data's choice), got {value}"]
    return []
