"""A stage whose constructor stops the run with a user error (for build-failure tests)."""

from __future__ import annotations

from framework import Batch, Preprocessor, RunError, hookimpl


class BrokenBuild(Preprocessor):
    def __init__(self, reason: str = "labels file has 3 lines for 1000 classes") -> None:
        raise RunError(reason)

    def __call__(self, batch: Batch) -> Batch:
        return batch


@hookimpl
def register_preprocessors(register):
    register("broken_build", BrokenBuild)
