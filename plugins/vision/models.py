"""``torchvision`` and ``timm`` classifiers: uint8 or float images in, logits out.

Both take ``compile``, ``decode_on_device`` (with its ``max_pixels``), ``micro_batch`` and
``micro_batch_max`` (see ``plugins.vision.classifier``), as does ``torchscript``
(``plugins.vision.scripted``).

Weights come only from the local disk (torch hub's cache for torchvision enums, which
``check()`` fills or explains how to fill) or are ``random``; nothing downloads in an actor.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from framework import RunError
from plugins.vision.classifier import ImageClassifier
from plugins.vision.decode import DEFAULT_MAX_PIXELS
from plugins.vision.microbatch import DEFAULT_MAX
from plugins.vision.model_info import TORCHVISION_DEFAULT_WEIGHTS
from plugins.vision.weights import (
    RANDOM,
    checkpoint_facts,
    checkpoint_problem,
    classifier_outputs,
    ensure_torchvision_weights,
    identify_checkpoint,
    is_checkpoint_path,
    load_state_dict,
    timm_name_problem,
    torchvision_weights,
    torchvision_weights_enum,
)


def _from_checkpoint(
    build: Callable[..., torch.nn.Module], path: str, num_classes: int | None
) -> torch.nn.Module:
    """Build the architecture with the checkpoint's head size unless ``num_classes`` is given."""
    state = load_state_dict(path)
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    module = build(**kwargs)
    if num_classes is None:
        found = classifier_outputs(module, state)
        if found is not None and found != classifier_outputs(module, module.state_dict()):
            module = build(num_classes=found)
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:  # another architecture's weights: missing keys, shapes
        problems = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]
        first = problems[0] if problems else str(exc)
        first = first if len(first) <= 160 else first[:157] + "..."  # torch lists every key
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise RunError(f"weights: {path} does not fit this architecture: {first}{more}") from exc
    return module


class TorchvisionClassifier(ImageClassifier):
    """A ``torchvision.models`` classifier.

    ``weights``: an enum member name (``IMAGENET1K_V2``, ``DEFAULT``) read from torch hub's
    cache, a local state_dict file, or ``random``.
    """

    model_type = "torchvision"

    def __init__(
        self,
        name: str,
        weights: str = TORCHVISION_DEFAULT_WEIGHTS,
        num_classes: int | None = None,
        labels: str | list[str] | None = None,
        column: str = "image",
        device: str = "auto",
        precision: str = "auto",
        channels_last: bool | str = "auto",
        keep_image: bool = False,
        fold_batch_norm: bool | str = "auto",
        compile: bool | str = False,
        decode_on_device: bool = False,
        micro_batch: int | str | None = None,
        micro_batch_max: int = DEFAULT_MAX,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> None:
        import torchvision

        params = {"name": name, "weights": weights, "num_classes": num_classes, "labels": labels}
        info = self.model_info(params)
        self.labels = list(info.labels) if info.labels is not None else None

        def build(**kwargs: Any) -> torch.nn.Module:
            return torchvision.models.get_model(name, weights=None, **kwargs)

        kwargs = {} if num_classes is None else {"num_classes": num_classes}
        if weights == RANDOM:
            self._warn_random(f"torchvision model {name}")
            module = build(**kwargs)
        elif is_checkpoint_path(weights):
            module = _from_checkpoint(build, weights, num_classes)
        else:
            member = torchvision_weights(name, weights)
            module = torchvision.models.get_model(name, weights=member, **kwargs)
        self._setup(
            module,
            info,
            column=column,
            device=device,
            precision=precision,
            channels_last=channels_last,
            keep_image=keep_image,
            fold_batch_norm=fold_batch_norm,
            compile=compile,
            decode_on_device=decode_on_device,
            micro_batch=micro_batch,
            micro_batch_max=micro_batch_max,
            max_pixels=max_pixels,
        )

    @classmethod
    def check(cls, params: Mapping[str, Any]) -> list[str]:
        problems = cls.common_problems(params)
        name = str(params["name"])
        try:
            torchvision_weights_enum(name)
        except ValueError as exc:
            return [*problems, f"name: {exc}"]
        weights = str(params.get("weights") or TORCHVISION_DEFAULT_WEIGHTS)
        if weights == RANDOM:
            return problems
        if is_checkpoint_path(weights):
            problem = checkpoint_problem("weights", weights)
            return [*problems, problem] if problem else problems
        try:
            member = torchvision_weights(name, weights)
        except ValueError as exc:
            return [*problems, f"weights: {exc}"]
        problem = ensure_torchvision_weights(member)
        return [*problems, problem] if problem else problems

    @classmethod
    def report_info(cls, params: Mapping[str, Any]) -> dict[str, Any]:
        name = str(params["name"])
        weights = str(params.get("weights") or TORCHVISION_DEFAULT_WEIGHTS)
        if weights == RANDOM:
            return cls.random_report()
        if is_checkpoint_path(weights):
            member = identify_checkpoint(name, weights)
            found = {"weights_identified_as": str(member)} if member else {}
            return {**checkpoint_facts(weights), **found}
        member = torchvision_weights(name, weights)
        return {"weights": str(member), "weights_url": member.url}


class TimmClassifier(ImageClassifier):
    """A timm model built with ``pretrained=False``; ``checkpoint`` is a local file or ``random``.

    ``name`` may carry a pretrained tag (``resnet18.a1_in1k``): it picks the preprocessing
    and labels that go with those weights, whose file you supply as ``checkpoint``.
    """

    model_type = "timm"

    def __init__(
        self,
        name: str,
        checkpoint: str,
        num_classes: int | None = None,
        labels: str | list[str] | None = None,
        column: str = "image",
        device: str = "auto",
        precision: str = "auto",
        channels_last: bool | str = "auto",
        keep_image: bool = False,
        fold_batch_norm: bool | str = "auto",
        compile: bool | str = False,
        decode_on_device: bool = False,
        micro_batch: int | str | None = None,
        micro_batch_max: int = DEFAULT_MAX,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> None:
        import timm

        params = {"name": name, "num_classes": num_classes, "labels": labels}
        info = self.model_info(params)
        self.labels = list(info.labels) if info.labels is not None else None

        def build(**kwargs: Any) -> torch.nn.Module:
            return timm.create_model(name, pretrained=False, **kwargs)

        if checkpoint == RANDOM:
            self._warn_random(f"timm model {name}")
            module = build(**({} if num_classes is None else {"num_classes": num_classes}))
        else:
            module = _from_checkpoint(build, checkpoint, num_classes)
        self._setup(
            module,
            info,
            column=column,
            device=device,
            precision=precision,
            channels_last=channels_last,
            keep_image=keep_image,
            fold_batch_norm=fold_batch_norm,
            compile=compile,
            decode_on_device=decode_on_device,
            micro_batch=micro_batch,
            micro_batch_max=micro_batch_max,
            max_pixels=max_pixels,
        )

    @classmethod
    def check(cls, params: Mapping[str, Any]) -> list[str]:
        problems = cls.common_problems(params)
        name_problem = timm_name_problem(str(params["name"]))
        if name_problem:
            problems.append(name_problem)
        checkpoint = str(params["checkpoint"])
        if checkpoint != RANDOM:
            problem = checkpoint_problem("checkpoint", checkpoint)
            if problem:
                problems.append(problem)
        return problems

    @classmethod
    def report_info(cls, params: Mapping[str, Any]) -> dict[str, Any]:
        checkpoint = str(params["checkpoint"])
        if checkpoint == RANDOM:
            return cls.random_report()
        return checkpoint_facts(checkpoint)
