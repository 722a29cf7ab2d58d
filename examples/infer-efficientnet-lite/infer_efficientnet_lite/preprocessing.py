"""What EfficientNet-Lite0 expects of its input, as the TensorFlow reference trained it.

The lite models use "inception-style" normalization, ``(pixel - 127) / 128`` on 0-255
pixels (``MEAN_RGB``/``STDDEV_RGB`` in tensorflow/tpu's ``efficientnet_lite_builder.py``),
chosen there because it quantizes better. It is *not* the ImageNet mean/std that the
``efficientnet_lite_pytorch`` README copies from the B0-B7 models: with that, the stem's
activations come out about 4x wider than the batch-norm statistics the checkpoint learned
(the package's tests check this). Evaluation takes the central 224/(224+32) of the image
and resizes it bicubically: resize the shorter side to 256, then center-crop 224.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from importlib import resources
from typing import Any

INPUT_SIZE = 224
CROP_PADDING = 32
RESIZE_SIZE = INPUT_SIZE + CROP_PADDING
INTERPOLATION = "bicubic"
# Written as the reference's 0-255 constants so the origin stays visible; the framework
# normalizes pixels scaled to [0, 1].
MEAN = (127.0 / 255.0,) * 3
STD = (128.0 / 255.0,) * 3
NUM_CLASSES = 1000


@functools.cache
def imagenet_labels() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in class-index order (torchvision's wording)."""
    text = resources.files(__package__).joinpath("imagenet_labels.txt").read_text("utf-8")
    return tuple(text.splitlines())


def model_info(params: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of infer-run's ``ModelInfo``, as a dict: plugins import only ``framework``.

    Nothing in ``params`` changes the preprocessing: every lite0 checkpoint this model
    loads has the same architecture, input size and 1000 ImageNet classes.
    """
    return {
        "resize_size": [RESIZE_SIZE],
        "crop_size": [INPUT_SIZE, INPUT_SIZE],
        "interpolation": INTERPOLATION,
        "mean": list(MEAN),
        "std": list(STD),
        "labels": list(imagenet_labels()),
    }
