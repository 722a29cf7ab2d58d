"""A plugin whose author forgot ``@hookimpl``: pluggy sees no hook in it at all."""

from __future__ import annotations

from collections.abc import Callable

from framework import Batch, Preprocessor


class Never(Preprocessor):
    def __call__(self, batch: Batch) -> Batch:
        return batch


def register_preprocessors(register: Callable[[str, type], None]) -> None:
    register("never", Never)
