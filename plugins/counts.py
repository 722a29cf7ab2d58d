"""Counts the built-in readers and writers hand to Ray Data (``num_blocks``,
``rows_per_file``): Ray Data refuses one below 1 only once the run reads or writes, with a
traceback, so their ``check()`` tells it first."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from framework import Writer


def count_problems(params: Mapping[str, Any], key: str) -> list[str]:
    value = params.get(key)
    # A value of the wrong type is binding's to tell (to Python a bool is an int).
    if isinstance(value, int) and not isinstance(value, bool) and value < 1:
        return [f"{key}: must be at least 1 (null: Ray Data's choice), got {value}"]
    return []


class RowsPerFileWriter(Writer):
    """A writer of files that hold at least ``rows_per_file`` rows each, the last one
    excepted (Ray Data's ``min_rows_per_file``; null: a file per block Ray Data writes)."""

    def __init__(
        self,
        path: str,
        storage: dict[str, Any] | None = None,
        overwrite: bool = False,
        rows_per_file: int | None = None,
    ) -> None:
        super().__init__(path, storage, overwrite)
        self.rows_per_file = rows_per_file

    @classmethod
    def check(cls, params: Mapping[str, Any]) -> list[str]:
        return count_problems(params, "rows_per_file")
