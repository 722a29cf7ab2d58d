"""What the driver asks of an image classifier's params before any worker builds it.

Validation, planning and the run report ask these on the driver, before any module is
built or weights loaded: the params' problems, the preprocessing and labels the params
imply, and where the weights came from.
``ImageClassifier`` (``plugins/vision/classifier.py``) takes these from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from plugins.vision.decode import DEFAULT_MAX_PIXELS
from plugins.vision.microbatch import DEFAULT_MAX
from plugins.vision.model_info import ModelInfo, labels_problems, model_info
from plugins.vision.pixels import device_limit_problems
from plugins.vision.runtime import gpu_option_problems, setting_problems
from plugins.vision.weights import RANDOM


class ClassifierParams:
    """Class-level answers about a classifier's params; ``ImageClassifier`` inherits them."""

    # The registered name, so a node rebuilt from params resolves through model_info.
    model_type: ClassVar[str] = ""

    @classmethod
    def node(cls, params: Mapping[str, Any]) -> dict[str, Any]:
        return {**params, "type": cls.model_type}

    @classmethod
    def model_info(cls, params: Mapping[str, Any]) -> ModelInfo:
        """Preprocessing and labels for these params, as ``from_model`` sees them."""
        return model_info(cls.node(params))

    @classmethod
    def labels_for(cls, params: Mapping[str, Any]) -> list[str] | None:
        labels = cls.model_info(params).labels
        return list(labels) if labels is not None else None

    @classmethod
    def report_info(cls, params: Mapping[str, Any]) -> dict[str, Any]:
        """Where the weights came from, for the run report (subclasses fill it in)."""
        return {}

    @staticmethod
    def random_report() -> dict[str, Any]:
        """``weights: random`` in the report, plus a warning printed at the end of the run."""
        return {
            "weights": RANDOM,
            "warnings": [
                "weights: random - the predictions are meaningless (throughput runs only)"
            ],
        }

    @classmethod
    def common_problems(cls, params: Mapping[str, Any]) -> list[str]:
        problems = setting_problems(
            str(params.get("device", "auto")),
            str(params.get("precision", "auto")),
            params.get("channels_last", "auto"),
            params.get("fold_batch_norm", "auto"),
        )
        problems += labels_problems(params.get("labels"))
        problems += gpu_option_problems(
            params.get("compile", False),
            params.get("decode_on_device", False),
            params.get("micro_batch"),
            params.get("micro_batch_max", DEFAULT_MAX),
            params.get("max_pixels", DEFAULT_MAX_PIXELS),
        )
        if params.get("decode_on_device") is True:
            max_pixels = params.get("max_pixels", DEFAULT_MAX_PIXELS)
            problems += device_limit_problems(lambda: cls.model_info(params), max_pixels)
        return problems
