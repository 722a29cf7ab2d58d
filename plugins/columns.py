"""Column housekeeping stages: keep, drop or rename columns between stages."""

from __future__ import annotations

from framework import ID_COLUMN, Batch, Preprocessor, hookimpl


class SelectColumns(Preprocessor):
    """Keeps ``columns`` (``id`` is always kept) or removes ``drop``."""

    def __init__(self, columns: list[str] | None = None, drop: list[str] | None = None) -> None:
        self.columns = columns
        self.drop = set(drop or [])

    def __call__(self, batch: Batch) -> Batch:
        keep = [ID_COLUMN, *(self.columns or batch)]
        return {k: batch[k] for k in dict.fromkeys(keep) if k in batch and k not in self.drop}


class RenameColumns(Preprocessor):
    """Renames columns by ``mapping`` (old name -> new name)."""

    def __init__(self, mapping: dict[str, str]) -> None:
        self.mapping = dict(mapping)

    def __call__(self, batch: Batch) -> Batch:
        return {self.mapping.get(k, k): v for k, v in batch.items()}


@hookimpl
def register_preprocessors(register):
    register("select_columns", SelectColumns)
    register("rename_columns", RenameColumns)
