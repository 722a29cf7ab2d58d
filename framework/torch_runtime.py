"""Device, CPU threads and precision for models built on torch: public, for plugins.

Imported on its own (``from framework import torch_runtime``), so that ``import
framework`` - the CLI's validation, ``infer-run plugins`` - never pays for torch.

CUDA is only touched when Ray granted the actor a GPU (or the user asked for it by
name): a CPU actor that initialised CUDA would grab memory on a GPU it does not own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from framework.errors import RunError

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def _in_ray_actor() -> bool:
    try:
        import ray
    except ImportError:  # the classes also run standalone, e.g. in a notebook without Ray
        return False
    return ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None


def _where() -> str:
    try:
        import ray

        if ray.is_initialized():
            gpus = ray.get_runtime_context().get_assigned_resources().get("GPU", 0)
            return f"granted {gpus:g} GPUs by Ray"
    except (ImportError, AssertionError):
        pass
    return "outside Ray"


def select_device(requested: str) -> torch.device:
    if requested == "cpu":
        return torch.device("cpu")
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            # The user's setting, not our bug: one line, naming the stage, no traceback.
            raise RunError(
                f"device: {requested} was asked for, but CUDA is not available in this "
                f"worker ({_where()}); leave device: auto to use a GPU only when Ray grants "
                "one, and give the stage resources.num_gpus to be placed on a GPU node"
            )
        return torch.device(requested)
    if _in_ray_actor():
        import ray

        # Ray narrows CUDA_VISIBLE_DEVICES to the granted GPUs, so the first visible one is ours.
        if ray.get_gpu_ids() and torch.cuda.is_available():
            return torch.device("cuda", 0)
    return torch.device("cpu")


def configure_cpu_threads() -> int:
    """Use as many intra-op threads as CPUs Ray granted this actor (torch's default outside Ray)."""
    if _in_ray_actor():
        import ray

        granted = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
        # round, as framework.worker does before every batch: with int(), num_cpus 1.5
        # built the model with 1 thread, then its batches ran with 2.
        torch.set_num_threads(max(1, round(granted)))
    return torch.get_num_threads()


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """None for plain fp32; ``auto`` is fp32 on CPU and bf16 (or fp16 before Ampere) on CUDA."""
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


def device_problem(device: str) -> str | None:
    """The validation message for a bad ``device`` value, or None."""
    if device in DEVICES or (device.startswith("cuda:") and device[5:].isdigit()):
        return None
    return f"device: {device!r} is not one of {', '.join(DEVICES)} or cuda:N"


__all__ = [
    "DEVICES",
    "PRECISIONS",
    "autocast",
    "autocast_dtype",
    "configure_cpu_threads",
    "device_problem",
    "select_device",
]
