"""``torchscript``: a TorchScript file or ``torch.export`` program as an image classifier.

It takes ``compile`` (``.pt2`` only), ``decode_on_device`` (with its ``max_pixels``),
``micro_batch`` and ``micro_batch_max`` like the other classifiers (see
``plugins.vision.classifier``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from plugins.vision.classifier import ImageClassifier
from plugins.vision.decode import DEFAULT_MAX_PIXELS
from plugins.vision.microbatch import DEFAULT_MAX
from plugins.vision.runtime import COMPILE_MODES, COMPILE_TORCHSCRIPT
from plugins.vision.transform import config_from_info
from plugins.vision.weights import checkpoint_facts, checkpoint_problem


def is_exported(path: str) -> bool:
    """A ``torch.export`` program (compilable), as opposed to a TorchScript file (not)."""
    return path.endswith(".pt2")


def load_scripted(path: str) -> tuple[torch.nn.Module, bool]:
    """A TorchScript or ``torch.export`` (.pt2) file as a callable module, and whether it has eval()."""
    path = os.path.expanduser(path)
    if is_exported(path):
        # Exported programs are captured in the mode they were exported in and refuse eval().
        return torch.export.load(path).module(), False
    return torch.jit.load(path, map_location="cpu"), True


class TorchScriptClassifier(ImageClassifier):
    """A TorchScript file (``torch.jit.save``) or ``torch.export`` program (``.pt2``).

    Such files carry no preprocessing metadata: ``mean``/``std`` normalize uint8 input
    here, and ``resize_size``/``crop_size``/``interpolation`` are read by
    ``image_transform.from_model`` and by ``decode_on_device``. A ``.pt2`` must be exported
    with a dynamic batch dim. Only a ``.pt2`` can take ``compile``: torch.compile cannot
    trace a TorchScript module, so ``check()`` refuses that combination.
    """

    model_type = "torchscript"

    def __init__(
        self,
        path: str,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        labels: str | list[str] | None = None,
        resize_size: int | list[int] | None = None,
        crop_size: int | list[int] | None = None,
        interpolation: str | None = None,
        column: str = "image",
        device: str = "auto",
        precision: str = "auto",
        channels_last: bool | str = "auto",
        keep_image: bool = False,
        compile: bool | str = False,
        decode_on_device: bool = False,
        micro_batch: int | str | None = None,
        micro_batch_max: int = DEFAULT_MAX,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.path = path
        info = self.model_info(
            {
                "path": path,
                "mean": mean,
                "std": std,
                "labels": labels,
                "resize_size": resize_size,
                "crop_size": crop_size,
                "interpolation": interpolation,
            }
        )
        self.labels = list(info.labels or []) or None
        module, can_eval = load_scripted(path)
        self._setup(
            module,
            info,
            column=column,
            device=device,
            precision=precision,
            channels_last=channels_last,
            keep_image=keep_image,
            can_eval=can_eval,
            compile=compile,
            decode_on_device=decode_on_device,
            micro_batch=micro_batch,
            micro_batch_max=micro_batch_max,
            max_pixels=max_pixels,
        )

    @classmethod
    def check(cls, params: Mapping[str, Any]) -> list[str]:
        problems = cls.common_problems(params)
        problem = checkpoint_problem("path", str(params["path"]), allow_random=False)
        if problem:
            problems.append(problem)
        lengths = [
            f"{key}: expected 3 values (R, G, B), got {list(values)}"
            for key in ("mean", "std")
            if (values := params.get(key)) is not None and len(values) != 3
        ]
        problems += lengths
        if not lengths:
            try:  # what every actor's _setup would otherwise raise, as a traceback, at start
                config_from_info(cls.model_info(params))
            except (UnicodeDecodeError, OSError):  # a labels file: common_problems named it
                pass
            except ValueError as exc:
                problems.append(str(exc))
        setting = params.get("compile", False)
        wants_compile = setting is True or setting in COMPILE_MODES
        if wants_compile and not is_exported(str(params["path"])):
            problems.append(COMPILE_TORCHSCRIPT)
        return problems

    @classmethod
    def report_info(cls, params: Mapping[str, Any]) -> dict[str, Any]:
        return checkpoint_facts(str(params["path"]))
