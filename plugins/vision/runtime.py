"""How a classifier runs: memory format, folded batch norms, compile, option checks.

Device, CPU threads and autocast come from ``framework.torch_runtime``.
"""

from __future__ import annotations

import torch

from framework.torch_runtime import PRECISIONS, device_problem
from plugins.vision.decode import DEFAULT_MAX_PIXELS


def is_conv_net(module: torch.nn.Module) -> bool:
    """Most parameters in 2-D convolutions: ResNets and EfficientNets yes, ViTs and ConvNeXts no."""
    conv = total = 0
    for child in module.modules():
        own = sum(p.numel() for p in child.parameters(recurse=False))
        total += own
        if isinstance(child, torch.nn.Conv2d):
            conv += own
    return total > 0 and conv * 2 >= total


def use_channels_last(
    setting: bool | str, module: torch.nn.Module, device: torch.device, dtype: torch.dtype | None
) -> bool:
    """``auto``: channels_last for conv nets on CPU, and on CUDA under reduced precision.

    oneDNN and cuDNN's tensor-core kernels both want NHWC; in CUDA fp32 the gain is small
    and the layout conversion can cost more than it saves.
    """
    if isinstance(setting, bool):
        return setting
    if device.type == "cpu" or dtype is not None:
        return is_conv_net(module)
    return False


def fold_batch_norms(module: torch.nn.Module) -> tuple[torch.nn.Module, str]:
    """Every Conv2d -> BatchNorm2d pair folded into the convolution, for inference.

    The norm's scale and shift become the convolution's weight and bias: one kernel and one
    pass over the activations fewer per pair (ResNets ran ~10% faster on CPU). fx traces
    the module to find the pairs; a model it cannot trace (data-dependent control flow)
    runs as it is. Returns the module to use and what happened, for the log.
    """
    norms = _count_batch_norms(module)
    if not norms:
        return module, "no batch norms to fold"
    from torch.fx.experimental.optimization import fuse

    try:
        folded = fuse(module)
    except Exception as exc:  # any trace failure means "run it unfolded"
        return module, f"batch norms not folded (fx cannot trace the model: {exc})"
    return folded, f"{norms - _count_batch_norms(folded)} of {norms} batch norms folded"


def _count_batch_norms(module: torch.nn.Module) -> int:
    return sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.modules())


def setting_problems(
    device: str, precision: str, channels_last: bool | str, fold_batch_norm: bool | str = "auto"
) -> list[str]:
    problems = []
    problem = device_problem(device)
    if problem:
        problems.append(problem)
    if precision not in PRECISIONS:
        problems.append(f"precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    for key, value in (("channels_last", channels_last), ("fold_batch_norm", fold_batch_norm)):
        if not isinstance(value, bool) and value != "auto":
            problems.append(f"{key}: expected true, false or 'auto', got {value!r}")
    return problems


# torch.compile's modes; true means "default".
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
COMPILE_TORCHSCRIPT = (
    "compile: a TorchScript file cannot be compiled by torch.compile - export the model "
    "with torch.export to a .pt2 file instead, or leave compile: false"
)


def compile_mode(setting: bool | str) -> str | None:
    """The torch.compile mode for a ``compile:`` setting, or None for no compilation."""
    if setting is False:
        return None
    return "default" if setting is True else str(setting)


def maybe_compile(module: torch.nn.Module, setting: bool | str) -> torch.nn.Module:
    """``module`` compiled with the setting's mode; compilation itself happens on the first call."""
    mode = compile_mode(setting)
    if mode is None:
        return module
    if isinstance(module, torch.jit.ScriptModule):
        raise ValueError(COMPILE_TORCHSCRIPT)
    return torch.compile(module, mode=mode)


def _is_rows(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def gpu_option_problems(
    compile: object,
    decode_on_device: object,
    micro_batch: object,
    micro_batch_max: object,
    max_pixels: object = DEFAULT_MAX_PIXELS,
) -> list[str]:
    """One message per bad ``compile``/``decode_on_device``/``micro_batch(_max)``/``max_pixels``."""
    problems = []
    if not isinstance(compile, bool) and compile not in COMPILE_MODES:
        problems.append(
            f"compile: expected false, true or one of {', '.join(COMPILE_MODES)}, got {compile!r}"
        )
    if not isinstance(decode_on_device, bool):
        problems.append(f"decode_on_device: expected true or false, got {decode_on_device!r}")
    if micro_batch is not None and micro_batch != "auto" and not _is_rows(micro_batch):
        problems.append(
            "micro_batch: expected null (the whole batch), a number of rows >= 1 or 'auto', "
            f"got {micro_batch!r}"
        )
    if not _is_rows(micro_batch_max):
        problems.append(f"micro_batch_max: expected a number of rows >= 1, got {micro_batch_max!r}")
    if max_pixels is not None and not _is_rows(max_pixels):
        problems.append(f"max_pixels: must be positive or null (no limit), got {max_pixels}")
    elif max_pixels != DEFAULT_MAX_PIXELS and decode_on_device is not True:
        # Without decode_on_device the model gets pixels: a limit set here would silently
        # do nothing, while the images it was meant for pass image_transform's own.
        problems.append(
            "max_pixels: only applies with decode_on_device: true - without it, set "
            "max_pixels on image_transform, which decodes the images"
        )
    return problems
