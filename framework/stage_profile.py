"""Opt-in cProfile of every stage worker's batches, for machines no profiler can attach to.

``INFER_PROFILE_STAGES=DIR`` makes each worker profile its stage's batches (a task
stage's first batch includes its build; a model actor builds before its first batch,
outside the profile) and write ``DIR/<stage>-<host>-<pid>.prof``, loadable with
``pstats``, at most every ``DUMP_EVERY_S`` seconds: Ray ends actors without running exit
hooks, so the file is kept current as the run goes rather than written once at the end.
What is recorded is the stage's own call and the worker's bookkeeping around it, not Ray
Data's batching and format conversion (its operator stats in the run report time those);
from Python 3.12 cProfile records through ``sys.monitoring``, which also sees the
process's other threads while a batch runs.
"""

from __future__ import annotations

import cProfile
import os
import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PROFILE_ENV = "INFER_PROFILE_STAGES"
DUMP_EVERY_S = 5.0


class StageProfile:
    """One stage's profile in one worker process; inert unless ``PROFILE_ENV`` is set.

    Built where the stage is planned and shipped to workers, so the profiler itself is
    made in the worker, at its first batch (a ``cProfile.Profile`` cannot be pickled).
    """

    def __init__(self, stage_path: str) -> None:
        self.stage_path = stage_path
        self.profile: cProfile.Profile | None = None
        self.file: Path | None = None
        self.dumped: float | None = None

    def _start(self) -> bool:
        folder = os.environ.get(PROFILE_ENV)
        if not folder:
            return False
        if self.profile is None:
            name = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.stage_path)
            self.file = Path(folder) / f"{name}-{socket.gethostname()}-{os.getpid()}.prof"
            self.profile = cProfile.Profile()
        return True

    @contextmanager
    def batch(self) -> Iterator[None]:
        if not self._start() or self.profile is None or self.file is None:
            yield
            return
        self.profile.enable()
        try:
            yield
        finally:
            self.profile.disable()
            now = time.monotonic()
            if self.dumped is None or now - self.dumped >= DUMP_EVERY_S:
                self.file.parent.mkdir(parents=True, exist_ok=True)
                self.profile.dump_stats(self.file)
                self.dumped = now

    def __getstate__(self) -> dict[str, object]:
        return {"stage_path": self.stage_path, "profile": None, "file": None, "dumped": None}
