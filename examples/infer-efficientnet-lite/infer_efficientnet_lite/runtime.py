"""Which device and precision the model runs with.

CUDA is used on ``auto`` only when Ray granted this actor a GPU: a CPU actor that
initialised CUDA would take memory on a GPU another actor owns.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def device_problem(device: str) -> str | None:
    if device in DEVICES or (device.startswith("cuda:") and device[5:].isdigit()):
        return None
    return f"device: {device!r} is not one of {', '.join(DEVICES)} or cuda:N"


def _granted_gpu() -> bool:
    import ray

    return ray.is_initialized() and bool(ray.get_gpu_ids())


def select_device(device: str) -> torch.device:
    if device == "auto":
        use_cuda = torch.cuda.is_available() and _granted_gpu()
        # Ray narrows CUDA_VISIBLE_DEVICES to the granted GPUs: the first visible one is ours.
        return torch.device("cuda", 0) if use_cuda else torch.device("cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device: {device} was asked for but CUDA is not available")
    return torch.device(device)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """None for plain fp32; ``auto`` is fp32 on CPU and bf16 (fp16 before Ampere) on CUDA."""
    if precision == "fp32" or (precision == "auto" and device.type == "cpu"):
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return _DTYPES[precision]


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    if dtype is None:
        yield
    else:
        with torch.autocast(device_type=device.type, dtype=dtype):
            yield
