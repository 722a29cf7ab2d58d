"""The package's own tests, written with infer-run's plugin test kit.

The kit (``framework.testing``) is a pytest plugin that installing infer-run enables:
``assert_conformant`` and the ``infer_registry`` / ``run_spec`` fixtures need no import
or conftest here. Photos come from scikit-image, preprocessed with Pillow so the golden
checks do not depend on infer-run's own image code.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from infer_efficientnet_lite import EfficientNetLite0
from infer_efficientnet_lite import checkpoint as ckpt
from PIL import Image

from framework import RunError
from framework.testing import assert_conformant, conformance_problems

MODEL = "efficientnet_lite0"
PHOTOS = Path(skimage.data.__file__).parent
CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COLOUR_PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png"]


def preprocess(name: str) -> np.ndarray:
    """The TF reference's eval crop with Pillow: shorter side to 256 (bicubic), center 224."""
    image = Image.open(PHOTOS / name).convert("RGB")
    scale = 256 / min(image.size)
    image = image.resize(
        (round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC
    )
    left, top = (image.width - 224) // 2, (image.height - 224) // 2
    return np.asarray(image.crop((left, top, left + 224, top + 224))).transpose(2, 0, 1)


def batch_of(names: list[str]) -> dict[str, np.ndarray]:
    return {"id": np.array(names, dtype=object), "image": np.stack([preprocess(n) for n in names])}


@pytest.fixture(scope="module")
def model() -> EfficientNetLite0:
    return EfficientNetLite0(device="cpu")


def test_registered_through_the_entry_point(infer_registry):
    entry = infer_registry.find("model", MODEL)
    assert entry is not None and entry.cls is EfficientNetLite0
    assert entry.distribution == "infer-efficientnet-lite"
    assert entry.version == importlib.metadata.version("infer-efficientnet-lite")


def test_conforms_to_the_batch_contract():
    assert_conformant("model", MODEL, batch=batch_of(["chelsea.png", "coffee.png"]))


def test_golden_cat(model):
    out = model(batch_of(["chelsea.png"]))
    assert set(out) == {"id", "logits"}  # the image column is dropped by default
    assert out["logits"].shape == (1, 1000) and out["logits"].dtype == np.float32
    assert int(out["logits"][0].argmax()) in CATS


def test_golden_cat_through_the_cli(run_spec, tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "chelsea.png").write_bytes((PHOTOS / "chelsea.png").read_bytes())
    result = run_spec(
        {
            "reader": {"type": "image_folder", "path": str(tmp_path / "photos")},
            "preprocessors": [{"type": "image_transform", "from_model": "${models.0}"}],
            "models": [{"type": MODEL}],
            "postprocessors": [{"type": "topk", "k": 5, "from_model": "${models.0}"}],
            "writer": {"type": "parquet", "path": "replaced-by-run_spec"},
        }
    )
    assert result.code == 0
    [row] = result.rows()
    assert row["id"] == "chelsea.png"
    assert int(row["top_ids"][0]) in CATS
    assert row["top_labels"][0] in {
        "tabby",
        "tiger cat",
        "Persian cat",
        "Siamese cat",
        "Egyptian cat",
    }


def test_normalization_matches_what_the_weights_were_trained_on(model):
    # Batch norm after the stem conv recorded the variance of its input during training;
    # inputs normalized as in training reproduce it, ImageNet's mean/std (what the
    # efficientnet_lite_pytorch README shows) make it about 4x wider. Top-1 on easy photos
    # cannot tell the two apart; this can.
    batch = batch_of(COLOUR_PHOTOS)
    running_var = model.module._bn0.running_var
    alive = running_var > 1e-3

    def log2_variance_ratio(inputs: torch.Tensor) -> float:
        with torch.inference_mode():
            stem = model.module._conv_stem(inputs)
        variance = stem.var(dim=(0, 2, 3))
        return float(torch.log2(variance[alive] / running_var[alive]).median())

    ours = log2_variance_ratio(model._input(batch["image"]))
    pixels = torch.from_numpy(batch["image"]).float() / 255
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    imagenet = log2_variance_ratio((pixels - mean) / std)
    assert abs(ours) < 1.0, ours
    assert imagenet > 1.0, imagenet


def test_float_input_is_taken_as_normalized(model):
    batch = batch_of(["coffee.png"])
    normalized = ((batch["image"] / 255.0 - 127 / 255) / (128 / 255)).astype(np.float32)
    from_uint8 = model({**batch, "image": batch["image"]})["logits"]
    from_float = model({**batch, "image": normalized})["logits"]
    np.testing.assert_allclose(from_float, from_uint8, rtol=1e-4, atol=1e-4)


def test_wrong_input_is_reported(model):
    with pytest.raises(RunError, match=r"must be \[N, 3, 224, 224\], got shape \[1, 3, 256, 256\]"):
        model({"id": np.array([0]), "image": np.zeros((1, 3, 256, 256), np.uint8)})
    with pytest.raises(RunError, match="no column 'image'"):
        model({"id": np.array([0]), "pixels": np.zeros((1, 3, 224, 224), np.uint8)})


def test_checkpoint_problems(tmp_path):
    assert EfficientNetLite0.check({}) == []
    assert EfficientNetLite0.check({"checkpoint": "s3://bucket/lite0.pth"}) == [
        "checkpoint: s3://bucket/lite0.pth must be a local file (remote URLs are not fetched)"
    ]
    # The file name's hash must match its content, as torch hub names files.
    damaged = tmp_path / "efficientnet-lite0-57934424.pth"
    damaged.write_bytes(b"not the checkpoint")
    [problem] = EfficientNetLite0.check({"checkpoint": str(damaged)})
    assert problem.startswith(f"checkpoint: {damaged} is damaged or not the file its name says")
    other = tmp_path / "resnet.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, other)
    [problem] = EfficientNetLite0.check({"checkpoint": str(other)})
    assert problem.startswith(f"checkpoint: {other} is not an efficientnet-lite0 state dict: ")
    assert conformance_problems("model", MODEL, params={"device": "gpu"}) == [
        f"model {MODEL!r}: check(): device: 'gpu' is not one of auto, cpu, cuda or cuda:N"
    ]


def test_report_names_the_weights():
    info = EfficientNetLite0.report_info({})
    assert info["weights"] == ckpt.default_checkpoint()
    assert info["weights"].endswith("efficientnet-lite0-57934424.pth")
    assert info["weights_sha256"].startswith("57934424") and len(info["weights_sha256"]) == 16


def test_model_info_is_what_from_model_reads():
    info = EfficientNetLite0.model_info({})
    assert info["resize_size"] == [256] and info["crop_size"] == [224, 224]
    assert info["interpolation"] == "bicubic"
    assert info["mean"] == [127 / 255] * 3 and info["std"] == [128 / 255] * 3
    labels = info["labels"]
    assert len(labels) == len(set(labels)) == 1000
    assert (labels[0], labels[281], labels[967]) == ("tench", "tabby", "espresso")
