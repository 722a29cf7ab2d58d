"""What a model node implies for the stages around it: input size, interpolation, mean/std, labels.

``image_transform.from_model`` and ``topk.from_model`` both call :func:`model_info` on the
same node the model is built from, so preprocessing and labels cannot drift from what the
model itself uses. Nothing here loads weights or touches the network.

Any other registered model supports ``from_model`` by defining a classmethod
``model_info(params)`` that returns a :class:`ModelInfo` or a dict with its fields: plugin
packages may import only ``framework``, so a dict is how a third-party model answers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from framework import component_class, filesystem_for
from plugins.vision.weights import (
    RANDOM,
    identify_checkpoint,
    is_checkpoint_path,
    timm_name_problem,
    torchvision_weights,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TORCHVISION_DEFAULT_WEIGHTS = "DEFAULT"
# torchscript/torch.export files carry no preprocessing metadata: the classic ImageNet recipe.
TORCHSCRIPT_RESIZE = 256
TORCHSCRIPT_CROP = 224


@dataclass(frozen=True)
class ModelInfo:
    """``resize_size`` is ``(s,)`` for "shorter side to s" or ``(h, w)`` for an exact size."""

    resize_size: tuple[int, ...]
    crop_size: tuple[int, int]
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    labels: tuple[str, ...] | None = None


def load_labels(value: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """Labels from a list, or from a file (local or ``s3://``) holding one label per line."""
    if value is None:
        return None
    if not isinstance(value, str):
        return tuple(str(v) for v in value)
    fs, where = filesystem_for(value)
    with fs.open_input_stream(where) as stream:
        # utf-8-sig: a BOM (Windows editors write one) is no part of the first label.
        lines = stream.read().decode("utf-8-sig").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return tuple(line.rstrip("\r") for line in lines)


def labels_problems(labels: str | Sequence[str] | None) -> list[str]:
    """The ``labels:`` parameter's problem, for ``check()``: a labels file that cannot be read."""
    if labels is None:
        return []
    try:
        load_labels(labels)
    except OSError as exc:
        return [f"labels: cannot read {labels}: {exc}"]
    except UnicodeDecodeError as exc:  # a user's file, not our bug: no traceback
        return [f"labels: cannot read {labels}: not UTF-8 text (byte {exc.start})"]
    return []


def as_pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    values = tuple(int(v) for v in value)
    if len(values) == 1:
        return (values[0], values[0])
    if len(values) != 2:
        raise ValueError(f"expected a size or [height, width], got {list(values)}")
    return (values[0], values[1])


def as_resize(value: int | Sequence[int]) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,)
    values = tuple(int(v) for v in value)
    if len(values) not in (1, 2):
        raise ValueError(f"expected a shorter-side size or [height, width], got {list(values)}")
    return values


def _torchvision(node: Mapping[str, Any]) -> ModelInfo:
    name = str(node["name"])
    weights = str(node.get("weights") or TORCHVISION_DEFAULT_WEIGHTS)
    known = True
    if weights == RANDOM:
        # Same preprocessing and labels as the real weights, so a throughput run produces
        # the same columns as a real one.
        member = torchvision_weights(name, TORCHVISION_DEFAULT_WEIGHTS)
    elif is_checkpoint_path(weights):
        member = identify_checkpoint(name, weights)
        known = member is not None
        member = member or torchvision_weights(name, TORCHVISION_DEFAULT_WEIGHTS)
    else:
        member = torchvision_weights(name, weights)
    preset = member.transforms()
    labels = load_labels(node.get("labels"))
    categories = member.meta.get("categories")
    num_classes = node.get("num_classes")
    if labels is None and known and categories and num_classes in (None, len(categories)):
        labels = tuple(categories)
    return ModelInfo(
        resize_size=as_resize(preset.resize_size),
        crop_size=as_pair(preset.crop_size),
        interpolation=preset.interpolation.value,
        mean=tuple(preset.mean),
        std=tuple(preset.std),
        labels=labels,
    )


def timm_data_config(name: str) -> dict[str, Any]:
    """timm's eval data config from the registry's pretrained config alone (no model, no hub)."""
    import timm
    import timm.data

    problem = timm_name_problem(name)
    if problem:
        raise ValueError(problem.removeprefix("name: "))
    cfg = timm.models.get_pretrained_cfg(name).to_dict()
    return {**timm.data.resolve_data_config(pretrained_cfg=cfg), "pretrained_cfg": cfg}


def _timm_labels(cfg: Mapping[str, Any], num_classes: int) -> tuple[str, ...] | None:
    import timm.data

    if cfg.get("label_descriptions") or cfg.get("label_names"):
        names = cfg.get("label_descriptions") or cfg.get("label_names")
        names = list(names.values()) if isinstance(names, Mapping) else list(names)
        return tuple(names) if len(names) == num_classes else None
    subset = timm.data.infer_imagenet_subset(dict(cfg))
    if not subset:
        return None
    info = timm.data.ImageNetInfo(subset)
    return tuple(info.label_descriptions()) if info.num_classes() == num_classes else None


def _timm(node: Mapping[str, Any]) -> ModelInfo:
    name = str(node["name"])
    data = timm_data_config(name)
    cfg = data["pretrained_cfg"]
    height, width = data["input_size"][1:]
    crop_pct = data.get("crop_pct") or 0.875
    crop_mode = data.get("crop_mode") or "center"
    # Mirrors timm.data.transforms_imagenet_eval.
    scaled = (math.floor(height / crop_pct), math.floor(width / crop_pct))
    if crop_mode == "squash":
        resize: tuple[int, ...] = scaled
    elif crop_mode == "center" and scaled[0] == scaled[1]:
        resize = (scaled[0],)
    else:
        raise ValueError(
            f"timm model {name} uses crop_mode {crop_mode!r} with input {height}x{width}, which "
            "image_transform does not reproduce; leave out from_model and set resize_size, "
            "crop_size, interpolation, mean and std explicitly"
        )
    labels = load_labels(node.get("labels"))
    if labels is None:
        labels = _timm_labels(cfg, int(node.get("num_classes") or cfg.get("num_classes") or 0))
    return ModelInfo(
        resize_size=resize,
        crop_size=(height, width),
        interpolation=str(data["interpolation"]),
        mean=tuple(float(v) for v in data["mean"]),
        std=tuple(float(v) for v in data["std"]),
        labels=labels,
    )


def _given(node: Mapping[str, Any], key: str, default: Any) -> Any:
    """``node[key]`` unless unset: a 0 given is a size to refuse, not the default."""
    value = node.get(key)
    return default if value is None else value


def _torchscript(node: Mapping[str, Any]) -> ModelInfo:
    return ModelInfo(
        resize_size=as_resize(_given(node, "resize_size", TORCHSCRIPT_RESIZE)),
        crop_size=as_pair(_given(node, "crop_size", TORCHSCRIPT_CROP)),
        interpolation=str(node.get("interpolation") or "bilinear"),
        mean=tuple(float(v) for v in node.get("mean") or IMAGENET_MEAN),
        std=tuple(float(v) for v in node.get("std") or IMAGENET_STD),
        labels=load_labels(node.get("labels")),
    )


_RESOLVERS = {"torchvision": _torchvision, "timm": _timm, "torchscript": _torchscript}
# Node keys that are not the model's parameters (see framework.spec.validate).
_NOT_PARAMS = ("type", "resources")
_FIELDS = ("resize_size", "crop_size", "interpolation", "mean", "std")


def _as_model_info(value: Any, kind: str) -> ModelInfo:
    if isinstance(value, ModelInfo):
        return value
    where = f"from_model: model {kind!r}: model_info()"
    if not isinstance(value, Mapping):
        raise ValueError(f"{where} returned {type(value).__name__}, expected ModelInfo or a dict")
    missing = [key for key in _FIELDS if value.get(key) is None]
    if missing:
        raise ValueError(f"{where} returned no {', '.join(missing)}")
    try:
        return ModelInfo(
            resize_size=as_resize(value["resize_size"]),
            crop_size=as_pair(value["crop_size"]),
            interpolation=str(value["interpolation"]),
            mean=tuple(float(v) for v in value["mean"]),
            std=tuple(float(v) for v in value["std"]),
            labels=load_labels(value.get("labels")),
        )
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from exc


def _plugin_model_info(kind: str, node: Mapping[str, Any]) -> ModelInfo | None:
    """The registered model class's own ``model_info(params)``; None when it has none."""
    try:
        cls = component_class("model", kind)
    except KeyError:
        return None
    resolve = getattr(cls, "model_info", None)
    if not callable(resolve):
        return None
    params = {key: value for key, value in node.items() if key not in _NOT_PARAMS}
    return _as_model_info(resolve(params), kind)


def model_info(node: Mapping[str, Any]) -> ModelInfo:
    """The preprocessing and labels of a model node; ValueError saying what is wrong."""
    kind = node.get("type")
    resolver = _RESOLVERS.get(str(kind))
    if resolver is None:
        info = _plugin_model_info(str(kind), node) if kind is not None else None
        if info is not None:
            return info
        raise ValueError(
            f"from_model: cannot read preprocessing from a model of type {kind!r} "
            f"(supported: {', '.join(_RESOLVERS)}, and a plugin's model class with a "
            "model_info(params) classmethod)"
        )
    if "name" not in node and kind != "torchscript":
        raise ValueError(f"from_model: the {kind} model node has no name")
    return resolver(node)
