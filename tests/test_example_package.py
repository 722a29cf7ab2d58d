"""The example third-party plugin package in examples/infer-efficientnet-lite, as users get it.

CI installs it next to infer-run (``pip install -e examples/infer-efficientnet-lite``);
these tests use it only through what a user touches: the entry point, ``infer-run
plugins``, the offline spec run through the CLI, and ``from_model``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import skimage.data
import torchvision
from omegaconf import OmegaConf

import plugins.vision.model_info as model_info_module
from framework.cli import main
from framework.testing import assert_conformant, conformance_problems
from plugins.vision import ImageTransform, TopK
from plugins.vision.model_info import ModelInfo, model_info

DIST = "infer-efficientnet-lite"
MODEL = "efficientnet_lite0"
SPEC = Path(__file__).resolve().parent.parent / "specs" / "efficientnet_lite0_offline.yaml"
PHOTOS = Path(skimage.data.__file__).parent
IMAGENET_LABELS = tuple(torchvision.models.ResNet50_Weights.IMAGENET1K_V2.meta["categories"])
# Acceptable top-1 ImageNet classes for three scikit-image photos.
GOLDEN = {
    "chelsea.png": {281, 282, 283, 284, 285},  # tabby, tiger, Persian, Siamese, Egyptian cat
    "coffee.png": {967, 968},  # espresso, cup
    "rocket.jpg": {657, 744},  # missile, projectile
}


@pytest.fixture(autouse=True)
def _installed() -> None:
    try:
        importlib.metadata.distribution(DIST)
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(
            f"{DIST} is not installed: pip install -e examples/infer-efficientnet-lite",
            pytrace=False,
        )


def photo_batch(names: list[str]) -> dict[str, np.ndarray]:
    """Real photos preprocessed the way the offline spec does it (from_model)."""
    data = np.empty(len(names), dtype=object)
    for i, name in enumerate(names):
        data[i] = (PHOTOS / name).read_bytes()
    transform = ImageTransform(from_model={"type": MODEL})
    return transform({"id": np.array(names, dtype=object), "image": data})


def test_discovered_through_its_entry_point(infer_registry, capsys):
    entry = infer_registry.find("model", MODEL)
    assert entry is not None
    assert entry.distribution == DIST
    assert entry.version == importlib.metadata.version(DIST)
    assert entry.plugin == "efficientnet_lite"
    points = importlib.metadata.distribution(DIST).entry_points
    assert [(ep.group, ep.name, ep.value) for ep in points if ep.group == "infer_run"] == [
        ("infer_run", "efficientnet_lite", "infer_efficientnet_lite")
    ]

    assert main(["plugins"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if f" {MODEL} " in line]
    assert len(lines) == 1
    assert lines[0].split()[:4] == ["model", MODEL, DIST, entry.version]
    assert main(["plugins", "--json"]) == 0
    rows = [r for r in json.loads(capsys.readouterr().out) if r["name"] == MODEL]
    assert rows == [
        {
            "kind": "model",
            "name": MODEL,
            "class": "infer_efficientnet_lite.model.EfficientNetLite0",
            "plugin": "efficientnet_lite",
            "distribution": DIST,
            "version": entry.version,
        }
    ]


def test_offline_spec_defaults():
    spec = OmegaConf.load(SPEC)
    assert spec.vars.input == "data/photos" and spec.vars.output == "out/efficientnet_lite0"
    assert spec.reader.type == "image_folder" and spec.writer.type == "parquet"
    assert [m.type for m in spec.models] == [MODEL]
    assert spec.postprocessors[0].k == 5
    # Preprocessing and labels are named nowhere in the spec: they come from the model.
    assert OmegaConf.to_container(spec.preprocessors[0], resolve=False) == {
        "type": "image_transform",
        "from_model": "${models.0}",
    }


@pytest.mark.ray
def test_golden_predictions_through_the_cli(ray_session, run_spec, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in GOLDEN:
        shutil.copy(PHOTOS / name, photos / name)

    result = run_spec(SPEC, [f"vars.input={photos}"])

    assert result.code == 0
    rows = {row["id"]: row for row in result.rows()}
    assert sorted(rows) == sorted(GOLDEN)
    for name, wanted in GOLDEN.items():
        row = rows[name]
        # List columns may come back as lists or arrays, depending on how Ray typed them.
        ids = [int(i) for i in row["top_ids"]]
        scores = [float(v) for v in row["top_scores"]]
        labels = [str(v) for v in row["top_labels"]]
        assert ids[0] in wanted, (name, ids, labels)
        assert len(ids) == len(labels) == len(scores) == 5
        # Labels are the human-readable ImageNet names of exactly those class ids.
        assert labels == [IMAGENET_LABELS[i] for i in ids]
        assert all(any(c.isalpha() for c in label) for label in labels)
        assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0001
        assert set(row) == {"id", "top_ids", "top_scores", "top_labels"}

    facts = next(c for c in result.report["components"] if c["path"] == "models[0]")
    weights = Path(facts["weights"])
    assert weights.name == "efficientnet-lite0-57934424.pth"
    assert facts["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
    assert (facts["distribution"], facts["type"]) == (DIST, MODEL)


def test_model_conforms_to_the_contract():
    batch = photo_batch(["chelsea.png", "coffee.png"])
    assert batch["image"].shape == (2, 3, 224, 224) and batch["image"].dtype == np.uint8
    assert_conformant("model", MODEL, batch=batch)
    missing = conformance_problems("model", MODEL, params={"checkpoint": "/nope/lite0.pth"})
    assert missing == [f"model {MODEL!r}: check(): checkpoint: file /nope/lite0.pth does not exist"]


def test_from_model_reads_a_plugin_models_own_info():
    node = {"type": MODEL, "device": "cpu", "resources": {"batch_size": 8}}
    config = ImageTransform(from_model=node).config
    assert config.resize_size == (256,) and config.crop_size == (224, 224)
    assert config.interpolation == "bicubic"
    assert config.mean == pytest.approx((127 / 255,) * 3)
    assert config.std == pytest.approx((128 / 255,) * 3)
    # Explicit params still win over the model's.
    assert ImageTransform(from_model=node, crop_size=200).config.crop_size == (200, 200)
    # The package ships its own label file: class i must name torchvision's class i.
    assert TopK(from_model=node).labels == IMAGENET_LABELS


def test_from_model_keeps_its_error_for_models_without_info():
    for kind in ("echo", "no_such_model"):
        with pytest.raises(
            ValueError, match=f"cannot read preprocessing from a model of type '{kind}'"
        ):
            model_info({"type": kind})
    assert TopK.check({"from_model": {"type": "echo"}})[0] == (
        "from_model: cannot read preprocessing from a model of type 'echo' (supported: "
        "torchvision, timm, torchscript, and a plugin's model class with a model_info(params) "
        "classmethod)"
    )


class _Reported:
    """A model class whose ``model_info`` returns whatever the test gives it."""

    answer: Any = None
    seen: Mapping[str, Any] | None = None

    @classmethod
    def model_info(cls, params: Mapping[str, Any]) -> Any:
        cls.seen = params
        return cls.answer


def test_from_model_fallback_normalizes_and_checks_the_answer(monkeypatch, tmp_path):
    monkeypatch.setattr(model_info_module, "component_class", lambda kind, name: _Reported)
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\n")
    _Reported.answer = {
        "resize_size": 80,
        "crop_size": [64],
        "interpolation": "bilinear",
        "mean": [0.5, 0.5, 0.5],
        "std": (0.25, 0.25, 0.25),
        "labels": str(labels),
    }
    info = model_info({"type": "mine", "size": 3, "resources": {"actors": 2}})
    assert info == ModelInfo((80,), (64, 64), "bilinear", (0.5,) * 3, (0.25,) * 3, ("cat", "dog"))
    assert _Reported.seen == {"size": 3}  # the node's own keys are not the model's params

    expected = ModelInfo((8,), (8, 8), "nearest", (0.0,) * 3, (1.0,) * 3)
    _Reported.answer = expected
    assert model_info({"type": "mine"}) is expected

    _Reported.answer = {"resize_size": 80, "crop_size": 64, "interpolation": "bilinear"}
    with pytest.raises(
        ValueError, match=r"^from_model: model 'mine': model_info\(\) returned no mean, std$"
    ):
        model_info({"type": "mine"})
    _Reported.answer = {
        **_Reported.answer,
        "mean": [0.5] * 3,
        "std": [1.0] * 3,
        "crop_size": [1, 2, 3],
    }
    with pytest.raises(ValueError, match=r"model_info\(\): expected a size or \[height, width\]"):
        model_info({"type": "mine"})
    _Reported.answer = "224"
    with pytest.raises(ValueError, match="returned str, expected ModelInfo or a dict"):
        model_info({"type": "mine"})
