"""Vision stages and models: decode, resize/crop/normalize, torchvision/timm/TorchScript classifiers, top-k.

Registered names:

- preprocessors: ``decode_image``, ``image_transform``, ``topk``
- models: ``torchvision``, ``timm``, ``torchscript``

The classes are imported when first asked for: a run or a worker that does not use
one starts without importing torch (seconds of CPU, taken from the model when mid-run).
"""

from __future__ import annotations

import importlib
from typing import Any

from framework import hookimpl

_HOMES = {
    "DecodeImage": "plugins.vision.stages",
    "ImageTransform": "plugins.vision.stages",
    "TopK": "plugins.vision.topk",
    "TimmClassifier": "plugins.vision.models",
    "TorchScriptClassifier": "plugins.vision.scripted",
    "TorchvisionClassifier": "plugins.vision.models",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)


def _path(name: str) -> str:
    return f"{_HOMES[name]}:{name}"


# By path: torch, torchvision and timm load when a spec names one of these, not for
# every run (an echo run, `infer-run plugins`, a spec check) that registers them.
@hookimpl
def register_preprocessors(register):
    register("decode_image", _path("DecodeImage"))
    register("image_transform", _path("ImageTransform"))
    register("topk", _path("TopK"))


@hookimpl
def register_models(register):
    register("torchvision", _path("TorchvisionClassifier"))
    register("timm", _path("TimmClassifier"))
    register("torchscript", _path("TorchScriptClassifier"))
