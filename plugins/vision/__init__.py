"""Vision stages and models: decode, resize/crop/normalize, torchvision/timm/TorchScript classifiers, top-k.

Registered names:

- preprocessors: ``decode_image``, ``image_transform``, ``topk``
- models: ``torchvision``, ``timm``, ``torchscript``
"""

from __future__ import annotations

from framework import hookimpl
from plugins.vision.models import TimmClassifier, TorchScriptClassifier, TorchvisionClassifier
from plugins.vision.stages import DecodeImage, ImageTransform
from plugins.vision.topk import TopK

__all__ = [
    "DecodeImage",
    "ImageTransform",
    "TimmClassifier",
    "TopK",
    "TorchScriptClassifier",
    "TorchvisionClassifier",
]


@hookimpl
def register_preprocessors(register):
    register("decode_image", DecodeImage)
    register("image_transform", ImageTransform)
    register("topk", TopK)


@hookimpl
def register_models(register):
    register(TorchvisionClassifier.model_type, TorchvisionClassifier)
    register(TimmClassifier.model_type, TimmClassifier)
    register(TorchScriptClassifier.model_type, TorchScriptClassifier)
