"""A stage that fails on any row it has seen before: a spec whose second run fails."""

from __future__ import annotations

import os
from pathlib import Path

from framework import Batch, Preprocessor, hookimpl


class OnceOnly(Preprocessor):
    """Raises ValueError on a row whose id has a marker in ``markers`` (any process, any run)."""

    def __init__(self, markers: str) -> None:
        self.markers = Path(markers)

    def __call__(self, batch: Batch) -> Batch:
        for row_id in batch["id"]:
            try:
                os.close(os.open(self.markers / str(row_id), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                raise ValueError(f"row {row_id} was seen by an earlier run") from None
        return batch


@hookimpl
def register_preprocessors(register):
    register("once_only", OnceOnly)
