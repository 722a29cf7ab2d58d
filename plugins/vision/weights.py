"""Where a model's weights come from: torchvision enums, local checkpoints, or ``random``.

Nothing here downloads during a run: ``check()`` on the driver is the only place that
tries the network, with a short timeout, so an offline cluster fails in seconds with a
message saying where to put the file instead of hanging inside an actor.
"""

from __future__ import annotations

import difflib
import json
import os
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from framework import file_sha256

if TYPE_CHECKING:  # torch is imported where it is used: label lookups need none of it
    import torch

RANDOM = "random"
PROBE_TIMEOUT_S = 5.0
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module")


def close_matches(word: str, choices: list[str]) -> str:
    """`` - did you mean 'a' or 'b'?`` or '' when nothing is close."""
    found = difflib.get_close_matches(word, choices, n=3, cutoff=0.6)
    return " - did you mean " + " or ".join(repr(c) for c in found) + "?" if found else ""


def is_checkpoint_path(value: str) -> bool:
    """Enum names are bare identifiers; anything path-shaped is a local checkpoint."""
    return value != RANDOM and (
        os.sep in value
        or "/" in value
        or "." in value
        or value.startswith("~")
        or os.path.exists(value)
    )


def torchvision_names() -> list[str]:
    import torchvision

    # Classification models only: detection/segmentation ones live in submodules.
    return torchvision.models.list_models(module=torchvision.models)


def torchvision_weights_enum(name: str) -> Any:
    """The weights enum class of a torchvision classifier; ValueError for unknown names."""
    import torchvision

    names = torchvision_names()
    if name not in names:
        raise ValueError(f"unknown torchvision classifier {name!r}{close_matches(name, names)}")
    return torchvision.models.get_model_weights(name)


def torchvision_weights(name: str, weights: str) -> Any:
    """The enum member for ``weights`` (``DEFAULT`` included); ValueError with close matches."""
    enum = torchvision_weights_enum(name)
    members = list(enum.__members__)
    if weights not in members:
        raise ValueError(
            f"{name} has no weights {weights!r}{close_matches(weights, members)} "
            f"(known: {', '.join(members)}, or a checkpoint path, or {RANDOM!r})"
        )
    return enum[weights]


def checkpoint_facts(path: str) -> dict[str, Any]:
    """The report's and manifest's record of a weights file: where, and its content's
    sha256, so that ``--resume`` refuses a path that now holds other weights."""
    return {
        "weights": os.path.abspath(os.path.expanduser(path)),
        "weights_sha256": file_sha256(path),
    }


def identify_checkpoint(name: str, path: str) -> Any | None:
    """The enum member whose published file has this checkpoint's file name, if any.

    Users working offline copy the official file (``resnet50-11ad3fa6.pth``); recognising
    it keeps that weight set's preprocessing and labels instead of guessing.
    """
    base = os.path.basename(path)
    for member in torchvision_weights_enum(name):
        if os.path.basename(urllib.parse.urlparse(member.url).path) == base:
            return member
    return None


def hub_cache_file(url: str) -> str:
    """The file ``torch.hub.load_state_dict_from_url`` reads for ``url``."""
    import torch

    filename = os.path.basename(urllib.parse.urlparse(url).path)
    return os.path.join(torch.hub.get_dir(), "checkpoints", filename)


def fetch(url: str, dest: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Download ``url`` to ``dest`` atomically; raises OSError (URLError, timeouts) on failure.

    Our own loop rather than ``torch.hub.download_url_to_file`` because that one has no
    timeout and would hang for minutes on a firewalled machine.
    """
    partial = f"{dest}.{os.getpid()}.partial"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with open(partial, "wb") as out:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
        os.replace(partial, dest)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def ensure_torchvision_weights(member: Any, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when the weights file is cached (downloading it if possible), else the problem."""
    dest = hub_cache_file(member.url)
    if os.path.isfile(dest):
        return None
    try:
        fetch(member.url, dest, timeout)
    except (OSError, ValueError) as exc:
        return (
            f"weights: {member} is not cached and cannot be downloaded from {member.url} "
            f"({type(exc).__name__}: {exc}); place that file at {dest}, or pass "
            f"weights: /path/to/checkpoint.pth (a local state_dict), or weights: {RANDOM} "
            "(throughput runs only)"
        )
    return None


def checkpoint_problem(key: str, value: str, allow_random: bool = True) -> str | None:
    """A missing file, or one that is no checkpoint at all: found on the driver in
    milliseconds, instead of by every model actor failing to start."""
    path = os.path.expanduser(value)
    if not os.path.isfile(path):
        hint = f" (or pass {key}: {RANDOM} for a throughput run)" if allow_random else ""
        return f"{key}: file {value} does not exist{hint}"
    if not _looks_like_checkpoint(path):
        return (
            f"{key}: {value} is not a checkpoint - neither a zip archive (what torch.save, "
            "torch.jit.save and torch.export.save write; a file cut short fails this too), "
            "a legacy pickle, nor safetensors"
        )
    return None


def _looks_like_checkpoint(path: str) -> bool:
    if path.endswith(".safetensors"):
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            try:
                return 0 < size < 100 * 2**20 and isinstance(json.loads(f.read(size)), dict)
            except ValueError:
                return False
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"  # pickle's protocol opcode: torch.save before 1.6


def load_state_dict(path: str) -> dict[str, torch.Tensor]:
    """A state_dict from a local file, never unpickling arbitrary objects.

    Accepts safetensors, plain state_dicts, and the common training wrappers
    (``{"state_dict": ...}``, ``{"model": ...}``) with DataParallel's ``module.`` prefix.
    """
    import torch

    path = os.path.expanduser(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state: Any = load_file(path, device="cpu")
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    while isinstance(state, Mapping):
        inner = next((state[k] for k in _WRAPPER_KEYS if isinstance(state.get(k), Mapping)), None)
        if inner is None:
            break
        state = inner
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise ValueError(f"{path} does not hold a state_dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


def classifier_outputs(module: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> int | None:
    """The class count a checkpoint was trained for, read off the model's last Linear layer.

    Lets ``num_classes`` be left out for fine-tuned checkpoints: the architecture is
    rebuilt with the checkpoint's head size instead of failing on a shape mismatch.
    """
    import torch

    last = None
    for name, child in module.named_modules():
        if isinstance(child, torch.nn.Linear):
            last = name
    weight = state.get(f"{last}.weight") if last is not None else None
    return int(weight.shape[0]) if weight is not None and weight.ndim == 2 else None


def timm_name_problem(name: str) -> str | None:
    """Unknown architecture or pretrained tag, with close matches; None when valid."""
    import timm

    arch, _, tag = name.partition(".")
    archs = timm.list_models()
    if arch not in archs:
        return f"name: unknown timm model {arch!r}{close_matches(arch, archs)}"
    if tag:
        tagged = timm.list_pretrained(f"{arch}.*")
        if name not in tagged:
            return f"name: timm model {arch} has no pretrained tag {tag!r}{close_matches(name, tagged)}"
    return None
