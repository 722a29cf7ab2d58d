"""Vision stages and models: decode, resize/crop/normalize, torchvision/timm/TorchScript classifiers, top-k.

Registered names:

- preprocessors: ``decode_image``, ``image_transform``, ``topk``
- models: ``torchvision``, ``timm``, ``torchscript``

The classes are imported when first asked for: a worker that only runs ``topk`` then
starts without importing torch (seconds of CPU, taken from the model when mid-run).
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


@hookimpl
def register_preprocessors(register):
    from plugins.vision.stages import DecodeImage, ImageTransform
    from plugins.vision.topk import TopK

    register("decode_image", DecodeImage)
    register("image_transform", ImageTransform)
    register("topk", TopK)


@hookimpl
def register_models(register):
    from plugins.vision.models import TimmClassifier, TorchvisionClassifier
    from plugins.vision.scripted import TorchScriptClassifier

    register(TorchvisionClassifier.model_type, TorchvisionClassifier)
    register(TimmClassifier.model_type, TimmClassifier)
    register(TorchScriptClassifier.model_type, TorchScriptClassifier)
