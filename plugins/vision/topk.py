"""``topk``: logits -> the k most likely classes, their probabilities and names.

``top_labels`` is an object array holding one Python list of k strings per row. Ray Data
stores it as Arrow ``list<string>``, which parquet keeps as a list column and the JSON
writer as a JSON array - so both formats round-trip without a per-rank column scheme.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from framework import Batch, Preprocessor, RunError
from plugins.vision.model_info import labels_problems, load_labels, model_info

LOGITS = "logits"  # the classifiers' output column


class NonFiniteLogits(ValueError):
    """A row's logits hold NaN or infinity (fp16 overflow, a broken checkpoint): its top k
    would be ids 0..k-1 with NaN scores, a prediction in form only. Raised for the batch,
    the row-by-row retry then gives up on those rows alone."""


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, shifted by the row max so large logits cannot overflow."""
    shifted = logits.astype(np.float32) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices [N, k] (int64) and values [N, k] of the largest scores, largest first."""
    k = min(k, scores.shape[1])
    # Sorted by class id, so the stable sort below ranks equal scores lower id first.
    part = np.sort(np.argpartition(-scores, k - 1, axis=1)[:, :k], axis=1)
    part_scores = np.take_along_axis(scores, part, axis=1)
    # argpartition picks among scores tied with the k-th in no set order (bf16 logits tie
    # often): such rows, rare, are sorted whole, which keeps the lowest ids of the tie.
    tied = (scores >= part_scores.min(axis=1, keepdims=True)).sum(axis=1) > k
    if tied.any():
        part[tied] = np.argsort(-scores[tied], axis=1, kind="stable")[:, :k]
        part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    ids = np.take_along_axis(part, order, axis=1).astype(np.int64)
    return ids, np.take_along_axis(part_scores, order, axis=1)


def _labels(
    labels: str | list[str] | None, from_model: Mapping[str, Any] | None
) -> Sequence[str] | None:
    """``labels`` when given, else the labels of ``from_model``'s weights (None: unknown)."""
    loaded = load_labels(labels)
    if loaded is None and from_model is not None:
        return model_info(from_model).labels
    return loaded


class TopK(Preprocessor):
    """Adds ``top_ids`` int64 [N, k], ``top_scores`` float32 [N, k] (softmax probabilities)
    and, when labels are known, ``top_labels`` (a list of k strings per row).

    Labels come from ``labels`` (a file with one per line, or a list) or else from
    ``from_model`` (a model node, e.g. ``${models.0}``). ``logits`` is dropped unless
    ``keep_logits``.
    """

    output_columns: ClassVar[Mapping[str, str]] = {
        "top_ids": "int64",
        "top_scores": "float32",
        "top_labels": "object",
    }

    def __init__(
        self,
        k: int = 5,
        labels: str | list[str] | None = None,
        from_model: dict[str, Any] | None = None,
        keep_logits: bool = False,
        column: str = LOGITS,
    ) -> None:
        self.k = k
        self.labels = _labels(labels, from_model)
        self.keep_logits = keep_logits
        self.column = column
        if self.labels is None:
            self.output_columns = {"top_ids": "int64", "top_scores": "float32"}

    @classmethod
    def worker_params(cls, params: Mapping[str, Any]) -> dict[str, Any]:
        """Labels looked up once here: workers then need neither torchvision, timm nor the file."""
        labels = _labels(params.get("labels"), params.get("from_model"))
        return {
            **params,
            "labels": list(labels) if labels is not None else None,
            "from_model": None,
        }

    @classmethod
    def check(cls, params: Mapping[str, Any]) -> list[str]:
        problems = []
        k = int(params.get("k", 5))
        if k < 1:
            problems.append(f"k: must be at least 1, got {params.get('k')}")
        labels = params.get("labels")
        if labels is not None:
            problems += labels_problems(labels)
        elif params.get("from_model") is not None:
            try:
                model_info(params["from_model"])
            except (ValueError, OSError) as exc:
                message = str(exc)
                problems.append(
                    message if message.startswith("from_model:") else f"from_model: {message}"
                )
        if not problems:
            known = _labels(labels, params.get("from_model"))
            if known is not None and k > len(known):
                # Else every row silently gets all classes, fewer than the k asked for.
                problems.append(f"k: {k} is more than the model's {len(known)} classes")
        return problems

    def __call__(self, batch: Batch) -> Batch:
        logits = batch[self.column]
        if logits.dtype == object or logits.ndim != 2:
            raise RunError(f"topk: column {self.column!r} must be [N, num_classes] logits")
        if self.labels is not None and len(self.labels) != logits.shape[1]:
            raise RunError(
                f"topk: {len(self.labels)} labels for {logits.shape[1]} classes - the labels "
                "do not belong to this model; pass topk labels: (or the model's num_classes "
                "and labels: when it was fine-tuned)"
            )
        if self.k > logits.shape[1]:
            raise RunError(f"topk: k={self.k} is more than the {logits.shape[1]} classes")
        finite = np.isfinite(logits).all(axis=1)
        if not finite.all():
            raise NonFiniteLogits(
                f"{int((~finite).sum())} of {len(finite)} rows have NaN or infinite logits "
                "(fp16 overflow? try precision: bf16 or fp32)"
            )
        ids, scores = top_k(softmax(logits), self.k)
        if not self.keep_logits:
            del batch[self.column]
        batch["top_ids"] = ids
        batch["top_scores"] = scores.astype(np.float32)
        if self.labels is not None:
            names = np.empty(len(ids), dtype=object)
            for row, row_ids in enumerate(ids):
                names[row] = [self.labels[i] for i in row_ids]
            batch["top_labels"] = names
        return batch
