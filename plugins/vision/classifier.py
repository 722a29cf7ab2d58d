"""The shared body of every image classifier: input handling, normalization, forward pass.

CPU stages ship uint8 [N, 3, H, W]; the model normalizes on its own device with its own
mean/std, so preprocessing moves 4x fewer bytes and cannot disagree with the weights.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from framework import Batch, Model, RunError
from plugins.vision.model_info import ModelInfo, labels_problems, model_info
from plugins.vision.runtime import (
    autocast,
    autocast_dtype,
    configure_cpu_threads,
    select_device,
    setting_problems,
    use_channels_last,
)
from plugins.vision.weights import RANDOM

logger = logging.getLogger(__name__)
LOGITS = "logits"


class ImageClassifier(Model):
    """Base class: subclasses build ``nn.Module`` and call :meth:`_setup`."""

    output_columns: ClassVar[Mapping[str, str]] = {LOGITS: "float32"}
    # The registered name, so a node rebuilt from params resolves through model_info.
    model_type: ClassVar[str] = ""
    random_weights: bool = False

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
        )
        problems += labels_problems(params.get("labels"))
        return problems

    def _setup(
        self,
        module: torch.nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        column: str,
        device: str,
        precision: str,
        channels_last: bool | str,
        keep_image: bool,
        can_eval: bool = True,
    ) -> None:
        self.column = column
        self.keep_image = keep_image
        self.device = select_device(device)
        self.num_threads = configure_cpu_threads() if self.device.type == "cpu" else None
        self.autocast_dtype = autocast_dtype(precision, self.device)
        if can_eval:
            module.eval()
        module = module.to(self.device)
        self.channels_last = use_channels_last(
            channels_last, module, self.device, self.autocast_dtype
        )
        if self.channels_last:
            module = module.to(memory_format=torch.channels_last)
        self.module = module
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)

    def _warn_random(self, what: str) -> None:
        self.random_weights = True
        logger.warning(
            "%s runs with random weights: its predictions are meaningless "
            "(use this for throughput measurements only)",
            what,
        )

    def _input(self, values: np.ndarray) -> torch.Tensor:
        if values.dtype == object or values.ndim != 4:
            raise RunError(
                f"{self.model_type}: column {self.column!r} must be one [N, 3, H, W] tensor, got "
                f"{'ragged images' if values.dtype == object else f'shape {list(values.shape)}'}"
                " - put image_transform before the model"
            )
        if not values.flags.writeable:  # zero-copy views of Arrow buffers are read-only
            values = values.copy()
        tensor = torch.from_numpy(np.ascontiguousarray(values))
        if tensor.shape[1] != 3 and tensor.shape[3] == 3:  # HWC pixels, e.g. from a reader
            tensor = tensor.permute(0, 3, 1, 2)
        if tensor.shape[1] != 3:
            raise RunError(
                f"{self.model_type}: column {self.column!r} has shape {list(values.shape)}, "
                "expected [N, 3, H, W]"
            )
        if self.device.type == "cuda":
            tensor = tensor.pin_memory().to(self.device, non_blocking=True)
        if tensor.dtype == torch.uint8:
            tensor = tensor.to(torch.float32).div_(255.0).sub_(self.mean).div_(self.std)
        elif tensor.is_floating_point():
            tensor = tensor.to(torch.float32)
        else:
            raise RunError(
                f"{self.model_type}: column {self.column!r} must be uint8 (normalized here) or "
                f"float (used as-is), got {values.dtype}"
            )
        if self.channels_last:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        return tensor

    def _logits(self, output: Any) -> torch.Tensor:
        if isinstance(output, Mapping) and LOGITS in output:
            output = output[LOGITS]
        elif isinstance(output, list | tuple) and output:
            output = output[0]
        if not isinstance(output, torch.Tensor) or output.ndim != 2:
            raise RunError(
                f"{self.model_type}: the model returned {type(output).__name__}"
                f"{f' of shape {list(output.shape)}' if isinstance(output, torch.Tensor) else ''}"
                ", expected [N, num_classes] logits"
            )
        return output

    def __call__(self, batch: Batch) -> Batch:
        if self.column not in batch:
            raise RunError(
                f"{self.model_type}: no column {self.column!r} in the batch "
                f"(columns: {', '.join(batch)}) - set column: to the image column"
            )
        with torch.inference_mode():
            images = self._input(batch[self.column])
            with autocast(self.device, self.autocast_dtype):
                output = self.module(images)
            logits = self._logits(output).to(torch.float32).cpu().numpy()
        if not self.keep_image:
            # The pixels are rarely wanted downstream and would dominate the output files.
            del batch[self.column]
        batch[LOGITS] = logits
        return batch
