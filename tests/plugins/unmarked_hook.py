"""A plugin whose author forgot ``@hookimpl``: pluggy sees no hook in it at all."""

from __future__ import annotations

from framework import Preprocessor


class Never(Preprocessor):
    def __call__(self, batch):  # type: ignore[no-untyped-def]
        return batch


def register_preprocessors(register) -> None:  # type: ignore[no-untyped-def]
    register("never", Never)
