"""The shared body of every image classifier: input handling, normalization, forward pass.

CPU stages ship uint8 [N, 3, H, W]; the model normalizes on its own device with its own
mean/std, so preprocessing moves 4x fewer bytes and cannot disagree with the weights.

Three options move more of the work onto the GPU (all off by default):

- ``compile``: ``torch.compile`` the module (after device and memory-format setup);
- ``decode_on_device``: the column holds encoded images, decoded on the model's device
  (nvjpeg on CUDA), resized and cropped there with the model's preprocessing and max_pixels;
- ``micro_batch``: the forward pass runs over slices of at most that many rows, halving on
  out-of-memory; ``auto`` probes the largest size that fits on the GPU at start-up.

On CUDA, pixel batches go up through one reusable pinned staging buffer, a chunk ahead of
the forward pass (``plugins/vision/staging.py``); on CPU the batch is used where it lies.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from framework import ID_COLUMN, Batch, Model, RunError
from framework.torch_runtime import autocast, autocast_dtype, configure_cpu_threads, select_device
from plugins.vision.classifier_params import ClassifierParams
from plugins.vision.decode import DEFAULT_MAX_PIXELS
from plugins.vision.microbatch import AUTO, DEFAULT_MAX, MicroBatcher, choose_micro_batch
from plugins.vision.model_info import ModelInfo
from plugins.vision.pixels import device_crops, host_pixels
from plugins.vision.runtime import compile_mode, fold_batch_norms, maybe_compile, use_channels_last
from plugins.vision.staging import ChunkedUpload, StagingBuffer, chunk_rows
from plugins.vision.topk import LOGITS
from plugins.vision.transform import config_from_info

logger = logging.getLogger(__name__)
# Modes whose compiled graphs replay CUDA graphs, which reuse their output buffers.
_CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


class ImageClassifier(ClassifierParams, Model):
    """Base class: subclasses build ``nn.Module`` and call :meth:`_setup`; what the driver
    asks of their params before any worker builds one is in ``ClassifierParams``."""

    output_columns: ClassVar[Mapping[str, str]] = {LOGITS: "float32"}
    random_weights: bool = False

    def _setup(
        self,
        module: torch.nn.Module,
        info: ModelInfo,
        *,
        column: str,
        device: str,
        precision: str,
        channels_last: bool | str,
        keep_image: bool,
        can_eval: bool = True,
        fold_batch_norm: bool | str | None = None,  # None: not an option of this model
        compile: bool | str = False,
        decode_on_device: bool = False,
        micro_batch: int | str | None = None,
        micro_batch_max: int = DEFAULT_MAX,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.column = column
        self.keep_image = keep_image
        self.device = select_device(device)
        self.num_threads = configure_cpu_threads() if self.device.type == "cpu" else None
        self.autocast_dtype = autocast_dtype(precision, self.device)
        # auto: on CPU only. On an H200 under bf16, cuDNN ran the folded ResNet-50 15% slower.
        fold = fold_batch_norm is True or (fold_batch_norm == "auto" and self.device.type == "cpu")
        # The log line says why nothing was folded, as it says why folding failed.
        why = {None: f"not an option of {self.model_type}", "auto": "auto folds on CPU only"}
        setting = f"fold_batch_norm: {str(fold_batch_norm).lower()}"
        self.fold_note = f"batch norms not folded ({why.get(fold_batch_norm, setting)})"
        if can_eval:
            module.eval()
            if fold:
                module, self.fold_note = fold_batch_norms(module)
        module = module.to(self.device)
        self.channels_last = use_channels_last(
            channels_last, module, self.device, self.autocast_dtype
        )
        if self.channels_last:
            module = module.to(memory_format=torch.channels_last)
        self.module = module
        shape = (1, 3, 1, 1)
        self.mean = torch.tensor(info.mean, dtype=torch.float32, device=self.device).view(shape)
        self.std = torch.tensor(info.std, dtype=torch.float32, device=self.device).view(shape)
        # decode_on_device resizes and crops exactly as image_transform with from_model would.
        self.preprocess = config_from_info(info)
        self.decode_on_device = decode_on_device
        self.max_pixels = max_pixels
        self.eager_module = module
        # The probe runs _forward uncompiled: a compiled module would recompile for every
        # probed size. Compilation itself happens lazily, on the first batch.
        self.compile_mode: str | None = None
        self.micro_batcher = self._micro_batcher(micro_batch, micro_batch_max)
        # A number from the spec is also the upload chunk; None and auto get the default split.
        self.micro_batch_explicit = micro_batch is not None and micro_batch != AUTO
        # CUDA pixel batches go through the staging pipeline (False: the plain upload, which
        # tests and benchmarks/gpu_path_check.py compare it with). Created on first use.
        self.pipeline_uploads = self.device.type == "cuda"
        self.staging: StagingBuffer | None = None
        self.copy_stream: torch.cuda.Stream | None = None
        self.compile_mode = compile_mode(compile)
        self.module = maybe_compile(module, compile)
        logger.info(
            "%s on %s: precision %s, channels_last %s, %s, compile %s, decode_on_device %s, %s",
            self.model_type,
            self.device,
            "fp32" if self.autocast_dtype is None else str(self.autocast_dtype).split(".")[-1],
            self.channels_last,
            self.fold_note,
            self.compile_mode or "off",
            self.decode_on_device,
            self.micro_batch_reason,
        )

    def _micro_batcher(
        self, setting: int | str | None, cap: int, probe_on_cpu: bool = False
    ) -> MicroBatcher:
        def synthetic(rows: int) -> torch.Tensor:
            shape = (rows, 3, *self.preprocess.crop_size)
            return torch.randint(0, 256, shape, dtype=torch.uint8, device=self.device)

        with torch.inference_mode():
            size, self.micro_batch_reason = choose_micro_batch(
                setting, cap, self.device, self._forward, synthetic, probe_on_cpu
            )
        return MicroBatcher(size, self.device, name=self.model_type)

    @property
    def micro_batch(self) -> int | None:
        """Rows per forward pass now (None: the whole batch); an OOM back-off lowers it."""
        return self.micro_batcher.size

    def _warn_random(self, what: str) -> None:
        self.random_weights = True
        logger.warning(
            "%s runs with random weights: its predictions are meaningless "
            "(use this for throughput measurements only)",
            what,
        )

    def _pixels(self, values: np.ndarray) -> torch.Tensor:
        """A [N, 3, H, W] uint8 or float32 column on the device, not yet normalized.

        The plain upload: the whole batch pinned (a copy) and sent before any compute.
        """
        tensor = self._host_pixels(values)
        if self.device.type == "cuda":
            tensor = tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor

    def _host_pixels(self, values: np.ndarray, copy_read_only: bool = True) -> torch.Tensor:
        return host_pixels(
            values,
            name=self.model_type,
            column=self.column,
            decode_on_device=self.decode_on_device,
            copy_read_only=copy_read_only,
        )

    def _decoded_pixels(self, values: np.ndarray, ids: Sequence[Any]) -> torch.Tensor:
        return device_crops(
            values, ids, self.device, self.preprocess, self.max_pixels, name=self.model_type
        )

    def _batch_logits(self, batch: Batch) -> torch.Tensor:
        """float32 [N, num_classes] logits on the device."""
        values = batch[self.column]
        if self.decode_on_device and values.dtype == object:
            ids = batch[ID_COLUMN] if ID_COLUMN in batch else list(range(len(values)))
            return self.micro_batcher.run(self._decoded_pixels(values, ids), self._forward)
        # Pixel tensors (e.g. from image_transform) are already decoded, resized and cropped.
        if self.pipeline_uploads and len(values):
            return self._staged_logits(self._host_pixels(values, copy_read_only=False))
        return self.micro_batcher.run(self._pixels(values), self._forward)

    def _staged_logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """Logits for host ``pixels``, sent through the staging buffer a chunk ahead.

        Works on any device (on CPU unpinned and in line, which is what the unit tests use);
        ``__call__`` routes only CUDA batches here.
        """
        upload = self._upload(pixels)
        chunk = chunk_rows(len(pixels), self.micro_batcher.size, self.micro_batch_explicit)
        return self.micro_batcher.run(upload, self._forward, limit=chunk, prefetch=upload.prefetch)

    def _upload(self, pixels: torch.Tensor) -> ChunkedUpload:
        on_cuda = self.device.type == "cuda"
        if self.staging is None:
            self.staging = StagingBuffer(pin_memory=on_cuda)
            self.copy_stream = torch.cuda.Stream(self.device) if on_cuda else None
        return ChunkedUpload(pixels, self.staging, self.device, self.copy_stream)

    def _normalize(self, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.dtype == torch.uint8:
            tensor = tensor.to(torch.float32).div_(255.0).sub_(self.mean).div_(self.std)
        else:
            tensor = tensor.to(torch.float32)
        if self.channels_last:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        return tensor

    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalize and run one micro-batch: float32 [n, num_classes] logits on the device."""
        images = self._normalize(pixels)
        # An empty batch (every row of it dead-lettered) would cost a compile of its own.
        module = self.module if len(pixels) else self.eager_module
        replays_graphs = module is not self.eager_module and self.compile_mode in _CUDA_GRAPH_MODES
        if replays_graphs and self.device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()
        with autocast(self.device, self.autocast_dtype):
            output = module(images)
        logits = self._logits(output).to(torch.float32)
        # A replayed CUDA graph overwrites its output buffer on the next micro-batch.
        return logits.clone() if replays_graphs else logits

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
            logits = self._batch_logits(batch).cpu().numpy()
        if not self.keep_image:
            # The pixels are rarely wanted downstream and would dominate the output files.
            del batch[self.column]
        batch[LOGITS] = logits
        return batch
