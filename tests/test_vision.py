"""The vision plugin: decoding, preprocessing config, weights handling, models and top-k."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import skimage.data
import torch
import torchvision
from PIL import Image, ImageOps

from framework import RunError
from framework.errors import ExitCode
from framework.torch_runtime import autocast_dtype, select_device
from plugins.vision import (
    DecodeImage,
    ImageTransform,
    TimmClassifier,
    TopK,
    TorchScriptClassifier,
    TorchvisionClassifier,
)
from plugins.vision.decode import DEFAULT_MAX_PIXELS, exif_orientation
from plugins.vision.model_info import model_info
from plugins.vision.runtime import fold_batch_norms, is_conv_net
from plugins.vision.topk import NonFiniteLogits
from plugins.vision.transform import resize_problem, resized_size
from tests.helpers import column, encode, run_cli

RNG = np.random.default_rng(0)
PIXELS = RNG.integers(0, 256, (30, 40, 3), dtype=np.uint8)


def pil_reference(data: bytes) -> np.ndarray:
    return np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))


def rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    return encode(Image.fromarray(PIXELS), "JPEG", quality=95, exif=exif.tobytes())


# High byte = the 8-bit pixels, low byte = noise that must be dropped.
SIXTEEN_BIT = (PIXELS[:, :, 0].astype(np.uint16) << 8) | PIXELS[:, :, 1]


@pytest.mark.parametrize(
    ("label", "data", "expected"),
    [
        ("rgb png", encode(Image.fromarray(PIXELS), "PNG"), None),
        ("gray png", encode(Image.fromarray(PIXELS).convert("L"), "PNG"), None),
        ("gray jpeg", encode(Image.fromarray(PIXELS).convert("L"), "JPEG"), None),
        ("rgba png", encode(Image.fromarray(PIXELS).convert("RGBA"), "PNG"), PIXELS),
        ("cmyk jpeg", encode(Image.fromarray(PIXELS).convert("CMYK"), "JPEG", quality=95), None),
        ("16-bit png", encode(Image.fromarray(SIXTEEN_BIT), "PNG"), PIXELS[:, :, [0, 0, 0]]),
        ("16-bit tiff", encode(Image.fromarray(SIXTEEN_BIT), "TIFF"), PIXELS[:, :, [0, 0, 0]]),
        ("exif-rotated jpeg", rotated_jpeg(), None),
        ("palette gif", encode(Image.fromarray(PIXELS).convert("P"), "GIF"), None),
        ("webp", encode(Image.fromarray(PIXELS), "WEBP", lossless=True), PIXELS),
        ("bmp", encode(Image.fromarray(PIXELS), "BMP"), PIXELS),
    ],
)
def test_decode_edge_cases_match_pillow(label, data, expected):
    out = DecodeImage()({"id": np.array([7]), "image": column([data])})["image"]
    want = pil_reference(data) if expected is None else expected
    assert out.dtype == np.uint8 and out.shape == (1, *want.shape), label
    np.testing.assert_array_equal(out[0], want, err_msg=label)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_dark_sixteen_bit_images_keep_their_high_byte_whatever_the_decoder(fmt):
    # Values under 256 in a 16-bit image are near black: torchvision (PNG) gives 0s, and
    # Pillow's path (TIFF) kept the low byte as if it were 8-bit, a bright image instead.
    dark = PIXELS[:, :, 1].astype(np.uint16)
    out = DecodeImage()(
        {"id": np.array([7]), "image": column([encode(Image.fromarray(dark), fmt)])}
    )
    np.testing.assert_array_equal(out["image"][0], np.zeros_like(PIXELS))


def test_a_torchvision_without_sixteen_bit_png_decodes_them_through_pillow(monkeypatch):
    # torchvision before 0.20 (inside the pinned range) refuses 16-bit PNGs.
    import torchvision.io

    def before_0_20(*args: object, **kwargs: object) -> None:
        raise RuntimeError("At most 8-bit PNG images are supported currently.")

    monkeypatch.setattr(torchvision.io, "decode_png", before_0_20)
    data = encode(Image.fromarray(SIXTEEN_BIT), "PNG")
    out = DecodeImage()({"id": np.array([7]), "image": column([data])})["image"]
    np.testing.assert_array_equal(out[0], PIXELS[:, :, [0, 0, 0]])


def test_exif_orientation_is_applied():
    out = DecodeImage()({"id": np.array([0]), "image": column([rotated_jpeg()])})["image"]
    assert out.shape == (1, 40, 30, 3)  # 30x40 stored, shown rotated


XMP_ROTATED = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
    b'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
    b'xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>'
)


def test_an_xmp_orientation_turns_no_path_as_torchvision_ignores_it():
    # Pillow's getexif() takes an XMP tiff:Orientation when EXIF has none; libjpeg via
    # torchvision does not. fast_decode (Pillow) turned such a JPEG 90 degrees, the full
    # decode did not, and the CUDA path (which turns by exif_orientation) would have too.
    big = Image.fromarray(PIXELS).resize((480, 360), Image.Resampling.BICUBIC)
    data = encode(big, "JPEG", quality=95, xmp=XMP_ROTATED)
    plain = torchvision.io.decode_jpeg(
        torch.frombuffer(bytearray(data), dtype=torch.uint8), apply_exif_orientation=True
    )
    assert exif_orientation(Image.open(io.BytesIO(data))) == 1
    ids = np.array([0])
    exact = ImageTransform(resize_size=64, crop_size=[64, 48])({"id": ids, "image": column([data])})
    fast = ImageTransform(resize_size=64, crop_size=[64, 48], fast_decode=True)(
        {"id": ids, "image": column([data])}
    )
    assert plain.shape == (3, 360, 480)
    assert np.abs(exact["image"].astype(int) - fast["image"].astype(int)).mean() < 2.0


def test_decode_image_ragged_batch_and_decoded_arrays():
    small = encode(Image.fromarray(PIXELS[:10, :20]), "PNG")
    batch = {"id": np.array([0, 1, 2]), "image": column([small, PIXELS, PIXELS[:, :, 0]])}
    out = DecodeImage()(batch)["image"]
    assert out.dtype == object and [a.shape for a in out] == [(10, 20, 3), (30, 40, 3), (30, 40, 3)]
    np.testing.assert_array_equal(out[2], PIXELS[:, :, [0, 0, 0]])


def test_gray_and_alpha_arrays_decode_as_their_png_does():
    # image_parquet takes [H, W, 2] uint8 tensors; they were refused on every row, while
    # the same pixels as an "LA" PNG decoded (alpha dropped, gray repeated).
    gray_alpha = np.stack([PIXELS[:, :, 0], PIXELS[:, :, 1]], axis=2)
    png = encode(Image.fromarray(gray_alpha, mode="LA"), "PNG")
    from_png = DecodeImage()({"id": np.array([0]), "image": column([png])})["image"]
    from_arrays = DecodeImage()({"id": np.array([1, 2]), "image": np.stack([gray_alpha] * 2)})
    np.testing.assert_array_equal(from_png[0], PIXELS[:, :, [0, 0, 0]])
    np.testing.assert_array_equal(from_arrays["image"], np.stack([from_png[0]] * 2))


def test_pixel_limit_names_max_pixels_even_past_twice_pillows_own(monkeypatch):
    # At the default max_pixels (Pillow's own limit), Pillow refused an image over twice
    # it inside Image.open: the record named Pillow's limit, not the parameter to raise.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    data = encode(Image.fromarray(PIXELS), "PNG")  # 1200 pixels: over twice 500
    with pytest.raises(RunError, match=r"id 'big'.*1200 pixels exceeds max_pixels=500"):
        DecodeImage(max_pixels=500)({"id": np.array(["big"]), "image": column([data])})
    assert Image.MAX_IMAGE_PIXELS == 500  # restored


def test_pixel_limit_and_bad_bytes_name_the_row():
    data = encode(Image.fromarray(PIXELS), "PNG")
    with pytest.raises(RunError, match=r"id 'big'.*1200 pixels exceeds max_pixels=1000"):
        DecodeImage(max_pixels=1000)({"id": np.array(["big"]), "image": column([data])})
    with pytest.raises(RunError, match=r"image_transform: image with id 5: not an image"):
        ImageTransform()({"id": np.array([4, 5]), "image": column([data, b"not an image"])})
    truncated = encode(Image.fromarray(PIXELS), "JPEG")[:200]
    with pytest.raises(RunError, match="id 9"):
        ImageTransform()({"id": np.array([9]), "image": column([truncated])})
    # Cut inside the scan: torchvision's message, without its C++ source location.
    photo = encode(Image.fromarray(PIXELS).resize((256, 256)), "JPEG")
    with pytest.raises(RunError) as caught:
        ImageTransform()({"id": np.array([7]), "image": column([photo[:-100]])})
    assert str(caught.value).endswith("image with id 7: Image is incomplete or truncated")


def test_a_truncated_png_is_named_without_torchvisions_source_location():
    # Noise does not compress: the first 3000 bytes end inside the pixel data, so Pillow
    # reads the header and libpng (through torchvision) fails mid-image. torchvision names
    # the failing function "operator()" there, which the prefix pattern once missed.
    noise = RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    cut = encode(Image.fromarray(noise), "PNG")[:3000]
    with pytest.raises(RunError) as caught:
        ImageTransform()({"id": np.array(["cut.png"]), "image": column([cut])})
    message = str(caught.value)
    assert message.startswith("image_transform: image with id 'cut.png': ")
    assert "decode_png" in message and ".cpp" not in message and "operator()" not in message


def test_image_transform_encoded_and_decoded_inputs_agree():
    transform = ImageTransform(resize_size=20, crop_size=16)
    encoded = transform(
        {"id": np.array([0, 1]), "image": column([encode(Image.fromarray(PIXELS), "PNG")] * 2)}
    )
    decoded = transform({"id": np.array([0, 1]), "image": np.stack([PIXELS, PIXELS])})
    assert encoded["image"].shape == (2, 3, 16, 16) and encoded["image"].dtype == np.uint8
    np.testing.assert_array_equal(encoded["image"], decoded["image"])

    normalized = ImageTransform(resize_size=20, crop_size=16, normalize=True)
    out = normalized({"id": np.array([0]), "image": PIXELS[None]})["image"]
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    want = (decoded["image"][:1] / 255.0 - mean[:, None, None]) / std[:, None, None]
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, want, atol=1e-5)


@pytest.mark.parametrize(
    ("height", "width", "resize"),
    [(1, 2000, (64,)), (2000, 1, (64,)), (7, 31, (232,)), (480, 640, (256,)), (50, 60, (20, 30))],
)
def test_resized_size_is_what_torchvisions_resize_makes(height, width, resize):
    from torchvision.transforms.v2 import functional as F

    image = torch.zeros((3, height, width), dtype=torch.uint8)
    out = F.resize(image, list(resize), antialias=True)
    assert resized_size(height, width, resize) == tuple(out.shape[-2:])


def test_a_thin_image_is_refused_before_its_resize_allocates():
    # 2000x1 with the shorter side resized to 64: 64 x 128,000 pixels, over the limit of 1e6.
    thin = encode(Image.new("RGB", (2000, 1), (120, 30, 200)), "PNG")
    photo = encode(Image.fromarray(PIXELS), "PNG")
    transform = ImageTransform(resize_size=64, crop_size=56, max_pixels=1_000_000)
    with pytest.raises(RunError) as caught:
        transform({"id": np.array(["ok", "thin"]), "image": column([photo, thin])})
    assert str(caught.value) == (
        "image_transform: image with id 'thin': 2000x1 would be resized to 128000x64 = 8192000 "
        "pixels before the 56x56 crop, over max_pixels=1000000 (extreme aspect ratio 2000:1; "
        "raise max_pixels only if a worker has the memory for it)"
    )
    # Pixel arrays (one size per batch) go through the same guard.
    with pytest.raises(RunError, match=r"id 'a'.*1x2000 would be resized to 64x128000"):
        transform({"id": np.array(["a", "b"]), "image": np.zeros((2, 2000, 1, 3), np.uint8)})
    # The QA case at the defaults: an 8000x1 PNG of 107 bytes would have become 256 x
    # 2,048,000 pixels (4.3 GiB peak); a 5000x20 banner still passes.
    config = ImageTransform().config
    assert "resized to 2048000x256" in str(resize_problem(1, 8000, config, DEFAULT_MAX_PIXELS))
    assert resize_problem(20, 5000, config, DEFAULT_MAX_PIXELS) is None
    banner = encode(Image.new("RGB", (5000, 20), (9, 9, 9)), "PNG")
    crops = ImageTransform()({"id": np.array([0]), "image": column([banner])})["image"]
    assert crops.shape == (1, 3, 224, 224)
    # No limit means no limit: max_pixels null lets it through, as it does for the source.
    assert resize_problem(1, 8000, config, None) is None
    # A limit below the resize of a square image would refuse every row: a spec problem.
    assert ImageTransform.check({"resize_size": 64, "crop_size": 56, "max_pixels": 4000}) == [
        "max_pixels: 4000 is below the 64x64 = 4096 pixels even a square image is resized to "
        "before the crop, so every image would be refused"
    ]
    assert ImageTransform.check({"resize_size": 64, "crop_size": 56, "max_pixels": 4096}) == []


def test_the_guard_leaves_ordinary_photos_bit_identical():
    """image_transform's crops (and so the model's logits) are what torchvision's resize and
    crop give without any guard, for real photos of the usual shapes."""
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms.v2 import functional as F

    node = {"type": "torchvision", "name": "resnet18", "weights": "random"}
    transform = ImageTransform(from_model=node)
    names = ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg", "camera.png"]
    files = [(Path(skimage.data.__file__).parent / name).read_bytes() for name in names]
    got = transform({"id": np.array(names), "image": column(files)})["image"]
    config = transform.config
    want = []
    for data in files:
        image = decode_image(
            torch.frombuffer(bytearray(data), dtype=torch.uint8), ImageReadMode.RGB
        )
        resized = F.resize(
            image,
            list(config.resize_size),
            interpolation=F.InterpolationMode(config.interpolation),
            antialias=True,
        )
        want.append(F.center_crop(resized, list(config.crop_size)))
    np.testing.assert_array_equal(got, torch.stack(want).numpy())
    torch.manual_seed(0)
    model = TorchvisionClassifier(name="resnet18", weights="random", device="cpu")
    np.testing.assert_array_equal(
        model({"id": np.arange(5), "image": got.copy()})["logits"],
        model({"id": np.arange(5), "image": torch.stack(want).numpy()})["logits"],
    )


def test_fast_decode_is_close_and_only_for_big_jpegs():
    big = Image.fromarray(PIXELS).resize((1600, 1200), Image.Resampling.BICUBIC)
    data = column([encode(big, "JPEG", quality=90), encode(big, "PNG")])
    ids = np.array([0, 1])
    exact = ImageTransform(resize_size=64, crop_size=64)({"id": ids, "image": data.copy()})
    fast = ImageTransform(resize_size=64, crop_size=64, fast_decode=True)(
        {"id": ids, "image": data}
    )
    diff = np.abs(exact["image"].astype(int) - fast["image"].astype(int))
    assert 0 < diff[0].mean() < 1.0  # the JPEG took the reduced path, and it stayed close
    assert diff[1].max() == 0  # PNG has no reduced decode


def test_from_model_torchvision_resnet50():
    node = {"type": "torchvision", "name": "resnet50", "weights": "IMAGENET1K_V2"}
    config = ImageTransform(from_model=node).config
    assert config.resize_size == (232,) and config.crop_size == (224, 224)
    assert config.interpolation == "bilinear"
    assert config.mean == (0.485, 0.456, 0.406) and config.std == (0.229, 0.224, 0.225)
    # Explicit params override the model's.
    assert ImageTransform(from_model=node, crop_size=200).config.crop_size == (200, 200)
    labels = model_info(node).labels
    assert labels == tuple(torchvision.models.ResNet50_Weights.IMAGENET1K_V2.meta["categories"])
    v1 = model_info({**node, "weights": "IMAGENET1K_V1"})
    assert v1.resize_size == (256,)
    # The official file name identifies the weights, so its recipe is kept offline.
    assert model_info({**node, "weights": "/ckpt/resnet50-11ad3fa6.pth"}).resize_size == (232,)


def test_from_model_timm_matches_timm():
    import timm
    import timm.data

    name = "vit_tiny_patch16_224"
    config = ImageTransform(
        from_model={"type": "timm", "name": name, "checkpoint": "random"}
    ).config
    data = timm.data.resolve_model_data_config(timm.create_model(name, pretrained=False))
    resize, crop, *_ = timm.data.create_transform(**data, is_training=False).transforms
    assert config.resize_size == (resize.size,) and config.crop_size == tuple(crop.size)
    assert config.interpolation == data["interpolation"] == "bicubic"
    assert config.mean == tuple(data["mean"]) and config.std == tuple(data["std"])
    labels = TopK(from_model={"type": "timm", "name": name}).labels
    assert len(labels) == 1000 and labels[0].startswith("tench")


def test_offline_weights_message(tmp_path, monkeypatch):
    # An empty hub cache, and a proxy nobody listens on: offline, deterministically.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    problems = TorchvisionClassifier.check({"name": "resnet50", "weights": "IMAGENET1K_V2"})
    assert len(problems) == 1
    wanted = tmp_path / "torch" / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth"
    message = problems[0]
    assert message.startswith("weights: ")
    assert "https://download.pytorch.org/models/resnet50-11ad3fa6.pth" in message
    assert f"place that file at {wanted}" in message
    assert "weights: /path/to/checkpoint.pth" in message and "weights: random" in message
    assert not wanted.parent.exists()


def test_unknown_names_suggest_close_matches():
    assert "did you mean 'resnet50'" in TorchvisionClassifier.check({"name": "resnet5O"})[0]
    wrong_enum = TorchvisionClassifier.check({"name": "resnet50", "weights": "IMAGENET1K_V3"})
    assert "'IMAGENET1K_V2'" in wrong_enum[0]
    timm_problems = TimmClassifier.check({"name": "resnet_18", "checkpoint": "random"})
    assert timm_problems[0].startswith("name: ") and "'resnet18'" in timm_problems[0]
    missing = TimmClassifier.check({"name": "resnet18", "checkpoint": "/nope/ckpt.pth"})
    assert missing == [
        "checkpoint: file /nope/ckpt.pth does not exist (or pass checkpoint: random for a throughput run)"
    ]
    assert ImageTransform.check({"interpolation": "lanczos"})[0].startswith("interpolation: ")


def test_random_weights_are_flagged(caplog):
    params = {"name": "resnet18", "weights": "random", "num_classes": 4}
    info = TorchvisionClassifier.report_info(params)
    assert info["weights"] == "random" and "meaningless" in info["warnings"][0]
    assert TimmClassifier.report_info({"name": "resnet18", "checkpoint": "random"}) == info
    with caplog.at_level(logging.WARNING):
        model = TorchvisionClassifier(**params)
    assert model.random_weights is True
    assert "random weights" in caplog.text
    assert TorchvisionClassifier.check(params) == []


def test_a_checkpoint_is_recorded_by_its_content(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), path)
    first = TorchvisionClassifier.report_info({"name": "resnet18", "weights": str(path)})
    assert first == {
        "weights": str(path),
        "weights_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }
    timm = TimmClassifier.report_info({"name": "resnet18", "checkpoint": str(path)})
    assert timm == first
    # Retrained into the same file: the same path, other weights.
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), path)
    again = TorchvisionClassifier.report_info({"name": "resnet18", "weights": str(path)})
    assert again["weights"] == first["weights"]
    assert again["weights_sha256"] != first["weights_sha256"]


def test_checkpoint_head_size_is_inferred_and_image_dropped(tmp_path):
    torch.manual_seed(0)
    module = torchvision.models.resnet18(num_classes=3).eval()
    path = tmp_path / "r18.pth"
    torch.save({"state_dict": module.state_dict()}, path)  # a training wrapper
    model = TorchvisionClassifier(name="resnet18", weights=str(path))
    assert model.random_weights is False and model.device.type == "cpu"
    images = RNG.integers(0, 256, (2, 3, 64, 64), dtype=np.uint8)
    out = model({"id": np.array([1, 2]), "image": images, "other": np.array([5, 6])})
    assert set(out) == {"id", "other", "logits"} and out["logits"].shape == (2, 3)
    x = (torch.from_numpy(images).float() / 255 - model.mean) / model.std
    with torch.inference_mode():
        np.testing.assert_allclose(out["logits"], module(x).numpy(), rtol=1e-4, atol=1e-4)
    # HWC pixels straight from a reader are accepted too.
    hwc = model({"id": np.array([1, 2]), "image": images.transpose(0, 2, 3, 1).copy()})
    np.testing.assert_allclose(hwc["logits"], out["logits"], rtol=1e-5, atol=1e-5)
    with pytest.raises(RunError, match="put image_transform before the model"):
        model({"id": np.array([1]), "image": column([PIXELS])})


def test_folded_batch_norms_give_the_same_predictions(tmp_path):
    torch.manual_seed(0)
    module = torchvision.models.resnet18(num_classes=10).eval()
    # Fresh batch norms (mean 0, var 1, weight 1, bias 0) would fold to nothing.
    for norm in (m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        norm.running_mean.uniform_(-0.5, 0.5)
        norm.running_var.uniform_(0.5, 2.0)
        norm.weight.data.uniform_(0.5, 1.5)
        norm.bias.data.uniform_(-0.2, 0.2)
    path = tmp_path / "r18.pth"
    torch.save(module.state_dict(), path)
    images = RNG.integers(0, 256, (4, 3, 96, 96), dtype=np.uint8)
    logits = {}
    for fold in (True, False):
        model = TorchvisionClassifier(name="resnet18", weights=str(path), fold_batch_norm=fold)
        logits[fold] = model({"id": np.arange(4), "image": images.copy()})["logits"]
        assert model.fold_note == (
            "20 of 20 batch norms folded"
            if fold
            else "batch norms not folded (fold_batch_norm: false)"
        )
        norms = [m for m in model.module.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert len(norms) == (0 if fold else 20)
    np.testing.assert_allclose(logits[True], logits[False], rtol=1e-4, atol=1e-4)
    assert (logits[True].argmax(1) == logits[False].argmax(1)).all()
    assert (
        "fold_batch_norm: expected true, false or 'auto', got 'yes'"
        in TorchvisionClassifier.check(
            {"name": "resnet18", "weights": "random", "fold_batch_norm": "yes"}
        )
    )


def test_untraceable_models_run_unfolded():
    class Branchy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.norm = torch.nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # data-dependent: fx cannot trace it
                x = -x
            return self.norm(self.conv(x))

    module = Branchy().eval()
    same, note = fold_batch_norms(module)
    assert same is module and note.startswith("batch norms not folded (fx cannot trace")
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)).eval()
    assert fold_batch_norms(plain) == (plain, "no batch norms to fold")


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_torchscript_and_export_match_eager(tmp_path):
    torch.manual_seed(0)
    module = torchvision.models.resnet18(num_classes=5).eval()
    example = torch.randn(2, 3, 64, 64)
    scripted, exported = tmp_path / "model.pt", tmp_path / "model.pt2"
    torch.jit.save(torch.jit.trace(module, example), scripted)
    batch_dim = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(module, (example,), dynamic_shapes={"x": {0: batch_dim}})
    torch.export.save(program, exported)

    images = RNG.integers(0, 256, (3, 3, 64, 64), dtype=np.uint8)
    x = (torch.from_numpy(images).float() / 255 - torch.tensor([0.5] * 3).view(1, 3, 1, 1)) / 0.25
    with torch.inference_mode():
        want = module(x).numpy()
    for path in (scripted, exported):
        model = TorchScriptClassifier(path=str(path), mean=[0.5] * 3, std=[0.25] * 3)
        out = model({"id": np.arange(3), "image": images})["logits"]
        np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4, err_msg=str(path))
    assert TorchScriptClassifier.check({"path": str(tmp_path / "missing.pt")}) == [
        f"path: file {tmp_path / 'missing.pt'} does not exist"
    ]


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ({"std": [0, 1, 1]}, "std: values must be non-zero"),
        ({"interpolation": "lanczos"}, "interpolation: 'lanczos' is not one of"),
        # mmcv's and Caffe's mean in 0-255 units: the pixels are scaled to 0-1 first, so
        # every prediction was silently wrong.
        (
            {"mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375]},
            "mean: expected values for pixels scaled to 0-1",
        ),
        # 0 was taken for unset: the model quietly resized to 256 and cropped 224.
        ({"resize_size": 0}, "resize_size: sizes must be positive"),
        ({"crop_size": 0}, "crop_size: sizes must be positive"),
    ],
)
def test_torchscript_preprocessing_mistakes_are_spec_problems(tmp_path, extra, problem):
    # They passed validation, then every model actor died at start-up with a traceback.
    path = tmp_path / "tiny.pt"
    tiny = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1), torch.nn.AdaptiveAvgPool2d(1))
    torch.jit.script(torch.nn.Sequential(tiny, torch.nn.Flatten())).save(str(path))
    problems = TorchScriptClassifier.check({"path": str(path), **extra})
    assert [p for p in problems if p.startswith(problem)], problems


def test_runtime_choices_outside_ray():
    assert select_device("auto").type == "cpu"
    assert autocast_dtype("auto", torch.device("cpu")) is None
    assert autocast_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    assert is_conv_net(torchvision.models.resnet18())
    assert not is_conv_net(torchvision.models.vit_b_16())


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the error for a machine without CUDA; this one has it"
)
def test_asking_for_cuda_without_it_is_a_user_error_not_a_crash():
    # A RunError stops the run in one line naming the stage (exit code 6), no traceback.
    with pytest.raises(RunError, match=r"^device: cuda:1 was asked for, but CUDA is not avail"):
        select_device("cuda:1")


def test_topk_matches_torch(tmp_path):
    logits = RNG.normal(size=(7, 12)).astype(np.float32) * 4
    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("".join(f"class {i}\n" for i in range(12)))
    out = TopK(k=3, labels=str(labels_file))({"id": np.arange(7), "logits": logits})
    scores, ids = torch.topk(torch.softmax(torch.from_numpy(logits), dim=1), 3)
    np.testing.assert_array_equal(out["top_ids"], ids.numpy())
    np.testing.assert_allclose(out["top_scores"], scores.numpy(), rtol=1e-6)
    assert out["top_ids"].dtype == np.int64 and out["top_scores"].dtype == np.float32
    assert list(out["top_labels"][0]) == [f"class {i}" for i in ids[0].tolist()]
    assert "logits" not in out
    kept = TopK(k=2, keep_logits=True)({"id": np.arange(7), "logits": logits})
    assert "logits" in kept and "top_labels" not in kept
    with pytest.raises(RunError, match="12 labels for 5 classes"):
        TopK(labels=str(labels_file))({"id": np.arange(1), "logits": logits[:1, :5]})


def test_topk_ties_rank_the_lower_class_id_first():
    # bf16 logits tie often. argpartition picked among tied scores in no set order, both
    # which of them made the k and how they were ranked.
    rng = np.random.default_rng(1)
    logits = rng.integers(0, 3, (64, 30)).astype(np.float32)
    out = TopK(k=7)({"id": np.arange(64), "logits": logits})
    want = np.argsort(-logits, axis=1, kind="stable")[:, :7]
    np.testing.assert_array_equal(out["top_ids"], want)
    assert (np.diff(out["top_scores"], axis=1) <= 0).all()


@pytest.mark.ray
def test_topk_round_trips_through_parquet_and_jsonl(ray_session, tmp_path):
    import ray.data

    logits = RNG.normal(size=(5, 6)).astype(np.float32)
    labels = ["cat", "dog, large", 'say "hi"', "é", "fish", "bird"]
    ds = ray.data.from_items([{"id": i, "logits": logits[i]} for i in range(5)])
    ds = ds.map_batches(TopK(k=2, labels=labels), batch_size=2, batch_format="numpy")
    ds.write_parquet(str(tmp_path / "pq"))
    ds.write_json(str(tmp_path / "js"), lines=True, orient="records")

    want = TopK(k=2, labels=labels)({"id": np.arange(5), "logits": logits})
    table = pq.read_table(tmp_path / "pq").to_pylist()
    lines = [
        json.loads(line)
        for name in os.listdir(tmp_path / "js")
        for line in (tmp_path / "js" / name).read_text().splitlines()
    ]
    for rows in (table, lines):
        by_id = {row["id"]: row for row in rows}
        assert sorted(by_id) == list(range(5))
        for i in range(5):
            assert list(by_id[i]["top_labels"]) == list(want["top_labels"][i])
            assert list(by_id[i]["top_ids"]) == want["top_ids"][i].tolist()
            np.testing.assert_allclose(by_id[i]["top_scores"], want["top_scores"][i], rtol=1e-6)


def test_plugin_registers_its_names():
    from framework.plugins import load_registry

    registry = load_registry()
    assert {"decode_image", "image_transform", "topk"} <= set(registry.names("preprocessor"))
    assert {"torchvision", "timm", "torchscript"} <= set(registry.names("model"))
    assert registry.find("model", "timm").plugin == "vision"


def test_each_vision_model_is_registered_under_its_own_model_type():
    # The names are literals beside each class's model_type (reading it would import
    # torch at registration); a class renamed in one place only fails here.
    from framework.plugins import load_registry

    registry = load_registry()
    models = [e for e in registry.all() if e.kind == "model" and e.plugin == "vision"]
    assert len(models) == 3
    for entry in models:
        assert entry.cls.model_type == entry.name, entry.class_path


@pytest.mark.ray
def test_ragged_decode_and_actor_runtime_under_ray(ray_session):
    import ray
    import ray.data

    from framework.torch_runtime import configure_cpu_threads

    sizes = [(20, 10), (30, 40), (30, 40), (8, 9), (16, 16)]
    items = [
        {"id": i, "image": encode(Image.fromarray(PIXELS).resize(size), "PNG")}
        for i, size in enumerate(sizes)
    ]
    ds = ray.data.from_items(items).map_batches(DecodeImage(), batch_size=2, batch_format="numpy")
    shapes = {row["id"]: row["image"].shape for row in ds.take_all()}
    assert shapes == {i: (h, w, 3) for i, (w, h) in enumerate(sizes)}

    @ray.remote(num_cpus=1)
    class Probe:
        def runtime(self) -> tuple[str, int]:
            return select_device("auto").type, configure_cpu_threads()

    probe = Probe.remote()
    assert ray.get(probe.runtime.remote()) == ("cpu", 1)
    ray.kill(probe)
    # As the worker rounds before every batch: the model is not built with fewer threads.
    wider = Probe.options(num_cpus=1.5).remote()
    assert ray.get(wider.runtime.remote()) == ("cpu", 2)
    ray.kill(wider)


def test_stages_pass_the_conformance_kit(tmp_path):
    from framework.testing import conformance_problems

    encoded = column([encode(Image.fromarray(PIXELS), fmt) for fmt in ("PNG", "JPEG", "WEBP")])
    images = {"id": np.arange(3), "image": encoded}
    torch.manual_seed(0)
    checkpoint = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(num_classes=5).state_dict(), checkpoint)
    pixels = {"id": np.arange(2), "image": RNG.integers(0, 256, (2, 3, 32, 32), dtype=np.uint8)}
    logits = {"id": np.arange(4), "logits": RNG.normal(size=(4, 5)).astype(np.float32)}
    cases = [
        ("preprocessor", "decode_image", {}, images),
        ("preprocessor", "image_transform", {"resize_size": 40, "crop_size": 32}, images),
        ("model", "torchvision", {"name": "resnet18", "weights": str(checkpoint)}, pixels),
        ("model", "timm", {"name": "resnet18", "checkpoint": "random", "num_classes": 5}, pixels),
        ("preprocessor", "topk", {"k": 2, "labels": list("abcde")}, logits),
    ]
    for kind, name, params, batch in cases:
        assert conformance_problems(kind, name, params, batch) == [], name


def test_topk_workers_start_without_torch():
    """Labels are looked up once on the driver; a worker running topk imports no torch."""
    params = TopK.worker_params({"k": 5, "from_model": {"type": "torchvision", "name": "resnet50"}})
    assert params["from_model"] is None and len(params["labels"]) == 1000
    assert params["labels"][0] == "tench"
    code = (
        "import pickle, sys\n"
        "runner = pickle.loads(sys.stdin.buffer.read())\n"
        "print(sorted({'torch', 'torchvision', 'timm'} & set(sys.modules)))\n"
    )
    payload = pickle.dumps((TopK, params))  # what a task worker unpickles
    done = subprocess.run(
        [sys.executable, "-c", code], input=payload, capture_output=True, check=True
    )
    assert done.stdout.decode().strip() == "[]"
    TopK(**params)  # and builds from those params alone


def test_topk_reads_a_labels_file_once_on_the_driver(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("cat\ndog\n")
    params = TopK.worker_params({"k": 1, "labels": str(path)})
    path.unlink()  # workers (perhaps on other machines) never open it
    assert params["labels"] == ["cat", "dog"]
    out = TopK(**params)({"logits": np.array([[0.0, 3.0]], dtype=np.float32)})
    assert out["top_labels"][0] == ["dog"]


def test_a_labels_file_saved_with_a_byte_order_mark_keeps_its_first_label(tmp_path):
    # Windows editors save UTF-8 with a BOM, which decoded into the first label's text.
    path = tmp_path / "labels.txt"
    path.write_bytes("\ufeffcat\r\ndog\r\n".encode())
    out = TopK(k=2, labels=str(path))({"logits": np.array([[0.0, 3.0]], dtype=np.float32)})
    assert out["top_labels"][0] == ["dog", "cat"]


def test_a_labels_file_that_is_not_utf8_is_a_spec_problem(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_bytes("café\ndog\n".encode("latin-1"))
    (problem,) = TopK.check({"k": 1, "labels": str(path)})
    assert problem.startswith(f"labels: cannot read {path}: not UTF-8 text")


def test_topk_asking_for_more_than_the_classes_is_refused(tmp_path):
    assert TopK.check({"k": 3, "labels": ["cat", "dog"]}) == [
        "k: 3 is more than the model's 2 classes"
    ]
    resnet = {"type": "torchvision", "name": "resnet18", "weights": "IMAGENET1K_V1"}
    assert TopK.check({"k": 1001, "from_model": resnet}) == [
        "k: 1001 is more than the model's 1000 classes"
    ]
    assert TopK.check({"k": 1000, "from_model": resnet}) == []
    with pytest.raises(RunError, match=r"^topk: k=3 is more than the 2 classes$"):
        TopK(k=3)({"logits": np.zeros((1, 2), dtype=np.float32)})


def test_torch_runtime_is_public_but_import_framework_stays_torch_free():
    from framework import torch_runtime

    assert torch_runtime.device_problem("cuda:1") is None
    assert (
        torch_runtime.device_problem("gpu")
        == "device: 'gpu' is not one of auto, cpu, cuda or cuda:N"
    )
    code = "import sys, framework; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_a_file_that_is_no_checkpoint_is_a_spec_problem(tmp_path):
    from safetensors.torch import save_file

    from plugins.vision.weights import checkpoint_problem

    state = {"w": torch.zeros(2, 2)}
    torch.save(state, tmp_path / "zip.pth")
    torch.save(state, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    save_file(state, str(tmp_path / "w.safetensors"))
    for good in ("zip.pth", "legacy.pth", "w.safetensors"):
        assert checkpoint_problem("weights", str(tmp_path / good)) is None, good
    (tmp_path / "cut.pth").write_bytes((tmp_path / "zip.pth").read_bytes()[:-40])
    (tmp_path / "html.pth").write_bytes(b"<html>a proxy's error page</html>")
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json here!!!")
    for bad in ("cut.pth", "html.pth", "bad.safetensors"):
        problem = checkpoint_problem("weights", str(tmp_path / bad))
        assert problem and problem.startswith(f"weights: {tmp_path / bad} is not a checkpoint")


@pytest.mark.ray
@pytest.mark.slow
def test_another_architectures_checkpoint_stops_the_run_in_one_line(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("astronaut", "chelsea", "coffee"):
        Image.fromarray(getattr(skimage.data, name)()).save(photos / f"{name}.jpg")
    checkpoint = tmp_path / "mobilenet.pth"
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), checkpoint)
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"""
reader: {{type: image_folder, path: {photos}}}
preprocessors: [{{type: image_transform, crop_size: 64}}]
models: [{{type: torchvision, name: resnet18, weights: {checkpoint}}}]
writer: {{type: parquet, path: {tmp_path / "out"}}}
"""
    )
    done = run_cli(str(spec), timeout=240)
    assert done.returncode == ExitCode.RUN_FAILED, done.stderr[-3000:]
    last = done.stderr.splitlines()[-1]
    assert last.startswith(
        f"infer-run: error: models[0]: weights: {checkpoint} does not fit this architecture: "
        "Missing key(s) in state_dict: "
    )
    assert last.endswith(" more)") and len(last) < 400


@pytest.mark.ray
@pytest.mark.slow
def test_the_models_setup_line_reaches_the_console(tmp_path):
    """README: "the model's log line says which happened" - logged at INFO in the actor,
    where only the driver had configured logging, it showed nowhere."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("astronaut", "chelsea"):
        Image.fromarray(getattr(skimage.data, name)()).save(photos / f"{name}.jpg")
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"""
reader: {{type: image_folder, path: {photos}}}
preprocessors: [{{type: image_transform, crop_size: 64}}]
models: [{{type: torchvision, name: resnet18, weights: random, fold_batch_norm: true}}]
writer: {{type: parquet, path: {tmp_path / "out"}}}
"""
    )
    done = run_cli(str(spec), timeout=240)
    assert done.returncode == ExitCode.OK, done.stderr[-3000:]
    line = (
        "INFO plugins.vision.classifier: torchvision on cpu: precision fp32, channels_last "
        "True, 20 of 20 batch norms folded, compile off, decode_on_device False"
    )
    shown = [x for x in (done.stdout + done.stderr).splitlines() if line in x]
    assert len(shown) == 1, done.stderr[-3000:]
    assert "pid=" in shown[0].split(line)[0]  # Ray's prefix naming the model's actor


def test_topk_gives_up_on_rows_whose_logits_are_not_finite(tmp_path):
    # fp16 overflow gives NaN or inf logits: topk made them ids 0..k-1 with NaN scores,
    # a prediction in form only. Such a row is now a bad row; the others go on.
    from framework.dead_letter import ErrorPolicy
    from framework.worker import StageRunner

    logits = RNG.normal(size=(4, 6)).astype(np.float32)
    logits[1, 2], logits[3, 0] = np.nan, np.inf
    with pytest.raises(NonFiniteLogits, match="2 of 4 rows"):
        TopK(k=2)({"id": np.arange(4), "logits": logits.copy()})
    errors = ErrorPolicy(policy="skip", dead_letter=str(tmp_path / "dead"))
    runner = StageRunner("postprocessors[0]", TopK, {"k": 2}, errors=errors)
    out = runner({"id": np.array(["a", "b", "c", "d"]), "logits": logits})
    assert out["id"].tolist() == ["a", "c"]
    assert np.isfinite(out["top_scores"]).all()
    records = [json.loads(line) for f in (tmp_path / "dead").glob("*.jsonl") for line in f.open()]
    assert sorted((r["id"], r["error_type"]) for r in records) == [
        ("b", "NonFiniteLogits"),
        ("d", "NonFiniteLogits"),
    ]


def test_image_transform_refuses_a_mean_in_0_255_units():
    problems = ImageTransform.check({"mean": [123.675, 116.28, 103.53], "std": [1, 1, 1]})
    assert problems == [
        "mean: expected values for pixels scaled to 0-1 (ImageNet's: [0.485, 0.456, 0.406]), "
        "got [123.675, 116.28, 103.53] - divide a mean (and std) given for 0-255 by 255"
    ]
    # A std above 1 alone is a choice (inputs scaled down), not a mistake.
    assert ImageTransform.check({"mean": [0.5, 0.5, 0.5], "std": [2, 2, 2]}) == []
