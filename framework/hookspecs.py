"""The hooks a plugin implements, in the order the framework calls them.

Each hook receives a ``register(name, cls)`` callback; the framework owns naming,
duplicate detection and provenance, so a plugin never returns lists. ``cls`` may also be
the class's ``"package.module:Class"`` path, imported only when a spec names it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

PROJECT = "infer_run"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

Register = Callable[[str, type[Any] | str], None]


@hookspec
def register_readers(register: Register) -> None:
    """Register reader classes, which turn a spec's ``reader:`` node into a Ray Dataset.

    :param register: call ``register("parquet", ParquetReader)`` once per reader
    """


@hookspec
def register_preprocessors(register: Register) -> None:
    """Register CPU stage classes, usable in ``preprocessors:`` and ``postprocessors:``.

    :param register: call ``register("decode_image", DecodeImage)`` once per stage
    """


@hookspec
def register_models(register: Register) -> None:
    """Register model classes, which run as actor pools in ``models:``.

    :param register: call ``register("torchvision", TorchvisionClassifier)`` once per model
    """


@hookspec
def register_writers(register: Register) -> None:
    """Register writer classes, which consume the final Dataset in ``writer:``.

    :param register: call ``register("parquet", ParquetWriter)`` once per writer
    """


__all__ = [
    "hookimpl",
    "hookspec",
    "register_models",
    "register_preprocessors",
    "register_readers",
    "register_writers",
]
