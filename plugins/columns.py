"""Column housekeeping stages: keep, drop or rename columns between stages."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from framework import ID_COLUMN, Batch, Preprocessor, hookimpl


class SelectColumns(Preprocessor):
    """Keeps ``columns`` (``id`` is always kept) or removes ``drop``."""

    def __init__(self, columns: list[str] | None = None, drop: list[str] | None = None) -> None:
        self.columns = columns
        self.drop = set(drop or [])

    @classmethod
    def check(cls, params: Mapping[str, Any]) -> list[str]:
        # Without it the next stage stopped the run calling this one a plugin bug.
        if ID_COLUMN in (params.get("drop") or []):
            return [f"drop: {ID_COLUMN!r} names the rows and cannot be dropped"]
        return []

    def __call__(self, batch: Batch) -> Batch:
        keep = [ID_COLUMN, *(self.columns or batch)]
        return {k: batch[k] for k in dict.fromkeys(keep) if k in batch and k not in self.drop}


class RenameColumns(Preprocessor):
    """Renames columns by ``mapping`` (old name -> new name)."""

    def __init__(self, mapping: dict[str, str]) -> None:
        self.mapping = dict(mapping)

    @classmethod
    def check(cls, params: Mapping[str, Any]) -> list[str]:
        """Renames that would lose a column: two columns to one name (the batch kept only
        the last), or the ids renamed or overwritten."""
        mapping = params.get("mapping")
        if not isinstance(mapping, Mapping):
            return []
        problems = []
        if ID_COLUMN in mapping:
            problems.append(f"mapping: {ID_COLUMN!r} names the rows and cannot be renamed")
        first: dict[str, str] = {}
        for old, new in mapping.items():
            if new == ID_COLUMN and old != ID_COLUMN:
                problems.append(
                    f"mapping: {old!r} cannot be renamed to {ID_COLUMN!r}, which names the rows"
                )
            elif (other := first.setdefault(new, old)) != old:
                problems.append(
                    f"mapping: {other!r} and {old!r} are both renamed to {new!r}, "
                    "and one would be lost"
                )
        return problems

    def __call__(self, batch: Batch) -> Batch:
        kept = {k for k in batch if k not in self.mapping}
        for old, new in self.mapping.items():
            if old in batch and new in kept:
                # The dict below would keep one of the two columns under that name.
                raise ValueError(
                    f"rename_columns renames {old!r} to {new!r}, a column the batch already "
                    f"has - rename or drop {new!r} too"
                )
        return {self.mapping.get(k, k): v for k, v in batch.items()}


@hookimpl
def register_preprocessors(register):
    register("select_columns", SelectColumns)
    register("rename_columns", RenameColumns)
