"""A stage whose first try at each batch fails like a dropped connection (for retry tests)."""

from __future__ import annotations

import os
from pathlib import Path

from framework import Batch, Preprocessor, hookimpl


class FlakyOnce(Preprocessor):
    """Raises ``error`` the first time it sees a batch (markers in ``markers``: any process)."""

    def __init__(self, markers: str, error: str = "ConnectionError") -> None:
        self.markers = Path(markers)
        self.error = error

    def __call__(self, batch: Batch) -> Batch:
        first = str(batch["id"][0]) if len(batch["id"]) else "empty"
        try:
            os.close(os.open(self.markers / first, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return batch
        raise {"ConnectionError": ConnectionError, "ValueError": ValueError}[self.error](
            f"dropped while reading {first}"
        )


@hookimpl
def register_preprocessors(register):
    register("flaky_once", FlakyOnce)
