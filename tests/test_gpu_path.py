"""The classifiers' GPU-path options: compile, decode_on_device, micro_batch, staged uploads.

Each option must not change the predictions: every test compares the option's output
with the plain path's. They run on CPU here (the same code paths, minus nvjpeg and
CUDA memory); the ``cuda`` tests at the end run where a GPU is present, and
``benchmarks/gpu_path_check.py`` checks the same on a GPU with timings.
"""

from __future__ import annotations

import io
import logging
import warnings
import zipfile
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image, ImageOps

from framework import RunError
from framework.testing import conformance_problems
from plugins.vision import (
    ImageTransform,
    TimmClassifier,
    TorchScriptClassifier,
    TorchvisionClassifier,
)
from plugins.vision import pixels as pixels_module
from plugins.vision.classifier import ImageClassifier
from plugins.vision.decode import DecodeError, exif_orientation
from plugins.vision.device_decode import apply_orientation, decode_on_device
from plugins.vision.microbatch import MicroBatcher, choose_micro_batch, probe_largest
from plugins.vision.pixels import device_crops, resize_crop_by_size
from plugins.vision.runtime import COMPILE_TORCHSCRIPT
from plugins.vision.staging import ChunkedUpload, StagingBuffer, chunk_rows
from plugins.vision.transform import TransformConfig, resize_crop
from tests.helpers import column, encode

RNG = np.random.default_rng(0)
PHOTOS = Path(skimage.data.__file__).parent
GRACE_HOPPER = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
PHOTO_FILES = [
    PHOTOS / "chelsea.png",
    PHOTOS / "coffee.png",
    PHOTOS / "astronaut.png",
    PHOTOS / "rocket.jpg",
    GRACE_HOPPER,
]
# Acceptable top-1 ImageNet classes (as in tests/test_example_package.py): a sanity check
# that the real weights and both preprocessing paths see the photos as they are.
GOLDEN = {
    "chelsea": {281, 282, 283, 284, 285},  # tabby, tiger, Persian, Siamese, Egyptian cat
    "coffee": {967, 968},  # espresso, cup
    "rocket": {657, 744},  # missile, projectile
}
CPU = torch.device("cpu")


def with_orientation(image: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, "JPEG", quality=95, exif=exif.tobytes())


def photo_batch() -> dict[str, np.ndarray]:
    """Every photo as JPEG and as PNG bytes, plus the odd cases the device path must route."""
    ids: list[str] = []
    cells: list[bytes] = []
    for path in PHOTO_FILES:
        image = Image.open(path).convert("RGB")
        for fmt, kwargs in (("JPEG", {"quality": 90}), ("PNG", {})):
            ids.append(f"{path.stem}.{fmt.lower()}")
            cells.append(encode(image, fmt, **kwargs))
    chelsea = Image.open(PHOTOS / "chelsea.png").convert("RGB")
    odd = {
        "chelsea-rotated.jpeg": with_orientation(chelsea, 6),  # EXIF: show turned 90 degrees
        "chelsea-gray.jpeg": encode(chelsea.convert("L"), "JPEG", quality=90),
        "chelsea-cmyk.jpeg": encode(chelsea.convert("CMYK"), "JPEG", quality=90),
    }
    ids += list(odd)
    cells += list(odd.values())
    return {"id": np.array(ids, dtype=object), "image": column(cells)}


def copy(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {key: value.copy() for key, value in batch.items()}


# ---------------------------------------------------------------------------- check()


def test_each_bad_value_gets_one_message_naming_its_param():
    params = {
        "name": "resnet18",
        "weights": "random",
        "compile": "fast",
        "decode_on_device": "yes",
        "micro_batch": 0,
        "micro_batch_max": True,
        "max_pixels": 0,
    }
    assert TorchvisionClassifier.check(params) == [
        "compile: expected false, true or one of default, reduce-overhead, max-autotune, "
        "max-autotune-no-cudagraphs, got 'fast'",
        "decode_on_device: expected true or false, got 'yes'",
        "micro_batch: expected null (the whole batch), a number of rows >= 1 or 'auto', got 0",
        "micro_batch_max: expected a number of rows >= 1, got True",
        "max_pixels: must be positive or null (no limit), got 0",
    ]
    good = {"name": "resnet18", "weights": "random", "decode_on_device": True}
    for compile_, micro_batch in ((True, "auto"), ("max-autotune", 64), (False, None)):
        checked = {**good, "compile": compile_, "micro_batch": micro_batch, "micro_batch_max": 8}
        assert TorchvisionClassifier.check(checked) == []
    # micro_batch: true would otherwise pass as the integer 1.
    assert TorchvisionClassifier.check({**good, "micro_batch": True})[0].startswith("micro_batch: ")
    for max_pixels in (10**9, None, 89_478_485):
        assert TorchvisionClassifier.check({**good, "max_pixels": max_pixels}) == []


@pytest.mark.parametrize("model_type", ["torchvision", "timm", "torchscript"])
def test_max_pixels_is_refused_without_decode_on_device(model_type, tmp_path):
    # The model gets pixels then: a limit set on it would do nothing, silently.
    params = {
        "torchvision": {"name": "resnet18", "weights": "random"},
        "timm": {"name": "resnet18", "checkpoint": "random"},
        "torchscript": {"path": str(scripted_convnet(tmp_path))},
    }[model_type]
    cls = {"torchvision": TorchvisionClassifier, "timm": TimmClassifier}.get(
        model_type, TorchScriptClassifier
    )
    assert cls.check({**params, "max_pixels": 10**9}) == [
        "max_pixels: only applies with decode_on_device: true - without it, set max_pixels "
        "on image_transform, which decodes the images"
    ]
    assert cls.check({**params, "max_pixels": 10**9, "decode_on_device": True}) == []
    assert cls.check(params) == []  # the default, unset
    # Under what even a square image is resized to (resnet18's 232 or 235, torchscript's
    # default 256), every row would fail: a spec problem instead.
    (problem,) = cls.check({**params, "max_pixels": 50_000, "decode_on_device": True})
    assert problem.startswith("max_pixels: 50000 is below the ") and "square image" in problem


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
@pytest.mark.parametrize("model_type", ["torchvision", "timm", "torchscript"])
def test_decode_on_device_takes_the_models_max_pixels(model_type, tmp_path):
    def model(**options) -> ImageClassifier:
        if model_type == "torchvision":
            return TorchvisionClassifier(name="resnet18", weights="random", **options)
        if model_type == "timm":
            return TimmClassifier(name="resnet18", checkpoint="random", **options)
        return TorchScriptClassifier(path=str(scripted_convnet(tmp_path)), **options)

    photo = Image.open(PHOTOS / "coffee.png").convert("RGB").resize((400, 300))  # 120,000 px
    # Both limits are at least what a square image is resized to, as validation requires.
    small = model(decode_on_device=True, max_pixels=100_000)
    raised = model(decode_on_device=True, max_pixels=200_000)
    for fmt in ("JPEG", "PNG"):  # the device decoder's path, and the CPU decoder's
        cells = column([encode(photo, fmt)])
        with pytest.raises(RunError) as caught:
            small({"id": np.array(["big"]), "image": cells.copy()})
        assert str(caught.value) == (
            f"{model_type}: image with id 'big': 400x300 = 120000 pixels exceeds "
            "max_pixels=100000 (decompression-bomb guard; raise the model's max_pixels if the "
            "image is legitimate)"
        ), fmt
        assert raised({"id": np.array(["big"]), "image": cells.copy()})["logits"].shape[0] == 1
    # The resize guard takes the same limit: 600x1 at the shorter side's resize is far over it.
    thin = column([encode(Image.new("RGB", (600, 1)), "PNG")])
    with pytest.raises(RunError, match=r"id 'thin': 600x1 would be resized to .*=100000 \(ext"):
        small({"id": np.array(["thin"]), "image": thin})


def test_torchscript_refuses_compile_but_export_takes_it(tmp_path):
    scripted, exported = tmp_path / "model.pt", tmp_path / "model.pt2"
    for path in (scripted, exported):  # zip archives, as torch.jit.save and export.save write
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("model/data.pkl", b"")
    assert TorchScriptClassifier.check({"path": str(scripted), "compile": True}) == [
        COMPILE_TORCHSCRIPT
    ]
    assert TorchScriptClassifier.check({"path": str(scripted), "compile": False}) == []
    assert TorchScriptClassifier.check({"path": str(exported), "compile": "default"}) == []


# ---------------------------------------------------------------------------- compile


def scripted_convnet(directory: Path) -> Path:
    """``tiny_convnet`` traced to a TorchScript file, for the ``torchscript`` classifier."""
    path = directory / "tiny.pt"
    if not path.exists():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit's deprecation notice
            torch.jit.save(torch.jit.trace(tiny_convnet(), torch.randn(1, 3, 32, 32)), path)
    return path


def tiny_convnet() -> torch.nn.Module:
    """Conv + BN + pool + linear: the op mix of a classifier, compiled in seconds."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 5),
    ).eval()


def test_compile_gives_the_same_logits():
    # resnet18 rather than a smaller net: inductor compiles it fastest here (~30 s cold,
    # a few seconds with a warm cache) - few distinct kernels, the convolutions go to oneDNN.
    node = {"type": "torchvision", "name": "resnet18", "weights": "random"}
    eager, compiled = build(node), build(node, compile=True)
    assert compiled.compile_mode == "default" and compiled.module is not compiled.eager_module
    images = RNG.integers(0, 256, (4, 3, 64, 64), dtype=np.uint8)
    want = eager({"id": np.arange(4), "image": images.copy()})["logits"]
    got = compiled({"id": np.arange(4), "image": images.copy()})["logits"]
    # Inductor fuses and reorders float32 arithmetic: equal up to rounding, not bit for bit.
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert (got.argmax(1) == want.argmax(1)).all()
    # An empty batch (all rows dead-lettered) goes through the eager module: no compile.
    empty = compiled({"id": np.arange(0), "image": images[:0]})["logits"]
    assert empty.shape == (0, 1000)


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_compile_takes_exported_programs_and_refuses_torchscript(tmp_path):
    module = tiny_convnet()
    example = torch.randn(2, 3, 32, 32)
    exported, scripted = tmp_path / "model.pt2", tmp_path / "model.pt"
    batch_dim = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(module, (example,), dynamic_shapes=({0: batch_dim},))
    torch.export.save(program, exported)
    torch.jit.save(torch.jit.trace(module, example), scripted)

    images = RNG.integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    want = TorchScriptClassifier(path=str(exported))({"id": np.arange(3), "image": images.copy()})
    model = TorchScriptClassifier(path=str(exported), compile=True)
    got = model({"id": np.arange(3), "image": images.copy()})
    np.testing.assert_allclose(got["logits"], want["logits"], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="TorchScript file cannot be compiled"):
        TorchScriptClassifier(path=str(scripted), compile=True)


# ---------------------------------------------------------------------------- decode_on_device


@pytest.mark.parametrize("orientation", range(1, 9))
def test_device_orientation_matches_pillow_and_torchvision(orientation):
    from torchvision.io import ImageReadMode, decode_jpeg

    pixels = RNG.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    data = with_orientation(Image.fromarray(pixels), orientation)
    assert exif_orientation(Image.open(io.BytesIO(data))) == orientation
    encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    # nvjpeg's output: pixels as stored, EXIF ignored; apply_orientation turns them.
    stored = decode_jpeg(encoded, mode=ImageReadMode.RGB)
    turned = apply_orientation(stored, orientation)
    want = decode_jpeg(encoded, mode=ImageReadMode.RGB, apply_exif_orientation=True)
    assert torch.equal(turned, want)
    shown = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    np.testing.assert_array_equal(turned.permute(1, 2, 0).numpy(), shown)


@pytest.fixture(scope="module")
def lite0_torchscript(tmp_path_factory) -> dict:
    """EfficientNet-Lite0 with its real ImageNet weights, as a torchscript model node.

    The example plugin package ships the weights; traced to TorchScript, the network runs
    through the built-in ``torchscript`` classifier, which is what takes decode_on_device.
    """
    pytest.importorskip("infer_efficientnet_lite", reason="pip install -e examples/...")
    from infer_efficientnet_lite import checkpoint, preprocessing

    module = checkpoint.load_module(checkpoint.default_checkpoint()).eval()
    path = tmp_path_factory.mktemp("lite0") / "lite0.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notice
        torch.jit.save(torch.jit.trace(module, torch.randn(1, 3, 224, 224)), path)
    return {
        "type": "torchscript",
        "path": str(path),
        "mean": list(preprocessing.MEAN),
        "std": list(preprocessing.STD),
        "resize_size": preprocessing.RESIZE_SIZE,
        "crop_size": preprocessing.INPUT_SIZE,
        "interpolation": preprocessing.INTERPOLATION,
    }


def build(node: dict, **options) -> TorchScriptClassifier | TorchvisionClassifier:
    params = {key: value for key, value in node.items() if key != "type"}
    cls = TorchScriptClassifier if node["type"] == "torchscript" else TorchvisionClassifier
    if cls is TorchvisionClassifier:
        torch.manual_seed(0)  # random weights: the same ones for both paths
    return cls(**params, **options)


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
@pytest.mark.parametrize("which", ["efficientnet_lite0 real weights", "resnet18 random weights"])
def test_decode_on_device_predicts_like_image_transform(which, request):
    if which.startswith("efficientnet"):
        node = request.getfixturevalue("lite0_torchscript")
    else:
        node = {"type": "torchvision", "name": "resnet18", "weights": "random"}
    batch = photo_batch()
    crops = ImageTransform(from_model=node)(copy(batch))
    want = build(node)(copy(crops))["logits"]

    model = build(node, decode_on_device=True)
    with torch.inference_mode():
        device_crops = model._decoded_pixels(batch["image"], batch["id"])
    # On CPU both paths use libjpeg-turbo/libpng and the same uint8 resize: same pixels.
    np.testing.assert_array_equal(device_crops.numpy(), crops["image"])
    got = model(copy(batch))
    assert "image" not in got and list(got["id"]) == list(batch["id"])
    # Same pixels, same module, same batch: only float noise could differ, so the bound is
    # tight; on a GPU, nvjpeg and the float resize shift pixels, hence the looser GPU check.
    np.testing.assert_allclose(got["logits"], want, rtol=1e-5, atol=1e-5)
    top1 = got["logits"].argmax(1)
    assert list(top1) == list(want.argmax(1))
    if which.startswith("efficientnet"):
        for row_id, label in zip(batch["id"], top1, strict=True):
            stem = row_id.split(".")[0].split("-")[0]
            if stem in GOLDEN and "-" not in row_id:
                assert label in GOLDEN[stem], (row_id, label)


def test_decode_on_device_names_the_bad_row():
    model = build(
        {"type": "torchvision", "name": "resnet18", "weights": "random"}, decode_on_device=True
    )
    good = encode(Image.open(PHOTOS / "coffee.png").convert("RGB"), "JPEG")
    noise = RNG.integers(0, 256, 500, dtype=np.uint8).tobytes()
    with pytest.raises(RunError, match=r"torchvision: image with id 'noise': not an image"):
        model({"id": np.array(["ok", "noise"], dtype=object), "image": column([good, noise])})
    # A JPEG whose header reads fine but whose data is cut: the batched decode fails, the
    # one-by-one retry isolates it, and the CPU decoder names it.
    with pytest.raises(RunError, match=r"image with id 'cut'"):
        model({"id": np.array(["ok", "cut"], dtype=object), "image": column([good, good[:400]])})


def test_decode_on_device_guards_and_passes_pixels_through():
    data = encode(Image.fromarray(RNG.integers(0, 256, (30, 40, 3), dtype=np.uint8)), "JPEG")
    with pytest.raises(DecodeError, match=r"id 'big'.*exceeds max_pixels=1000"):
        decode_on_device(column([data]), ["big"], CPU, max_pixels=1000)
    with pytest.raises(DecodeError, match="id 3: the image cell is null"):
        decode_on_device(column([None]), [3], CPU)
    node = {"type": "torchvision", "name": "resnet18", "weights": "random"}
    model, plain = build(node, decode_on_device=True), build(node)
    # A pixel tensor (image_transform in front after all) is taken as it is.
    pixels = RNG.integers(0, 256, (2, 3, 48, 48), dtype=np.uint8)
    np.testing.assert_array_equal(
        model({"id": np.arange(2), "image": pixels.copy()})["logits"],
        plain({"id": np.arange(2), "image": pixels.copy()})["logits"],
    )


def test_decode_on_device_refuses_a_thin_image_before_its_resize():
    # 1x2000 (a thin PNG and a thin JPEG) resized to 64 on the shorter side: 128,000 x 64
    # pixels, over a limit of 1e6 that the source (2,000 pixels) is far under.
    config = TransformConfig((64,), (56, 56), "bilinear", mean=(0.5,) * 3, std=(0.5,) * 3)
    thin = Image.new("RGB", (1, 2000), (120, 30, 200))
    photo = encode(Image.open(PHOTOS / "coffee.png").convert("RGB"), "JPEG")
    for fmt in ("PNG", "JPEG"):
        cells = column([photo, encode(thin, fmt)])
        with pytest.raises(RunError) as caught:
            device_crops(cells, ["ok", "thin"], CPU, config, name="torchvision", max_pixels=10**6)
        assert str(caught.value).startswith(
            "torchvision: image with id 'thin': 1x2000 would be resized to 64x128000 = 8192000 "
            "pixels before the 56x56 crop, over max_pixels=1000000 (extreme aspect ratio 2000:1"
        ), fmt
    # Without a thin image the same call crops as usual.
    crops = device_crops(column([photo]), ["ok"], CPU, config, name="t", max_pixels=10**6)
    assert crops.shape == (1, 3, 56, 56)


@pytest.mark.parametrize("chunk_bytes", [256 << 20, 3 * 60 * 80 * 2], ids=["whole", "by-two"])
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_same_sized_images_resize_together_with_each_image_as_alone(
    monkeypatch, chunk_bytes, interpolation
):
    """Sizes interleaved (rows of one size are not a run), repeated, one image upscaled:
    every crop equals the crop of the image alone, in order."""
    monkeypatch.setattr(pixels_module, "RESIZE_CHUNK_BYTES", chunk_bytes)
    config = TransformConfig((40,), (32, 32), interpolation, mean=(0.5,) * 3, std=(0.5,) * 3)
    sizes = [(60, 80), (80, 60), (60, 80), (60, 80), (20, 24), (80, 60), (60, 80)]
    images = [torch.from_numpy(RNG.integers(0, 256, (3, h, w), dtype=np.uint8)) for h, w in sizes]
    alone = torch.stack([resize_crop(image, config) for image in images])
    together = resize_crop_by_size(images, config, CPU)
    assert together.dtype == torch.uint8 and together.shape == (len(sizes), 3, 32, 32)
    assert torch.equal(together, alone)
    assert resize_crop_by_size([], config, CPU).shape == (0, 3, 32, 32)


# ---------------------------------------------------------------------------- micro_batch


class OomAbove(torch.nn.Module):
    """A real module that raises the real OOM type whenever it gets more than ``limit`` rows."""

    def __init__(self, limit: int, inner: torch.nn.Module | None = None) -> None:
        super().__init__()
        self.limit = limit
        self.inner = inner or torch.nn.Linear(4, 3)
        self.calls: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(len(x))
        if len(x) > self.limit:
            raise torch.OutOfMemoryError(f"{len(x)} rows > {self.limit}")
        return self.inner(x)


def test_micro_batches_give_the_same_output():
    torch.manual_seed(0)
    module = torch.nn.Linear(4, 3)
    inputs = torch.randn(10, 4)
    with torch.inference_mode():
        want = module(inputs)
        for size in (1, 3, None, 64):
            got = MicroBatcher(size).run(inputs, module)
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        assert MicroBatcher(3).run(inputs[:0], module).shape == (0, 3)

    node = {"type": "torchvision", "name": "resnet18", "weights": "random"}
    images = RNG.integers(0, 256, (7, 3, 40, 40), dtype=np.uint8)
    outputs = [
        build(node, micro_batch=size)({"id": np.arange(7), "image": images.copy()})["logits"]
        for size in (None, 1, 3)
    ]
    for out in outputs[1:]:
        # oneDNN may pick other kernels for other batch sizes: equal up to float rounding.
        np.testing.assert_allclose(out, outputs[0], rtol=1e-5, atol=1e-5)
        assert (out.argmax(1) == outputs[0].argmax(1)).all()


def test_out_of_memory_halves_the_micro_batch(caplog):
    module = OomAbove(5)
    inputs = torch.randn(37, 4)
    batcher = MicroBatcher(None, name="net")
    with torch.inference_mode(), caplog.at_level(logging.WARNING):
        got = batcher.run(inputs, module)
        want = module.inner(inputs)
    torch.testing.assert_close(got, want)
    assert batcher.size is not None and batcher.size <= 5
    assert batcher.size == 4  # 37 -> 18 -> 9 -> 4
    assert "micro_batch whole batch -> 18" in caplog.text and "9 -> 4" in caplog.text
    with pytest.raises(torch.OutOfMemoryError):
        MicroBatcher(8).run(inputs, OomAbove(0))


def test_out_of_memory_back_off_inside_the_classifier():
    node = {"type": "torchvision", "name": "resnet18", "weights": "random"}
    images = RNG.integers(0, 256, (9, 3, 40, 40), dtype=np.uint8)
    want = build(node)({"id": np.arange(9), "image": images.copy()})["logits"]
    model = build(node)
    assert model.micro_batch is None
    model.module = OomAbove(3, inner=model.module)
    got = model({"id": np.arange(9), "image": images.copy()})["logits"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert model.micro_batch is not None and model.micro_batch <= 3


@pytest.mark.parametrize(
    ("limit", "cap", "expected"),
    [
        (1, 1024, 1),
        (5, 1024, 4),
        (64, 1024, 64),
        (100, 1024, 64),
        (5000, 1024, 1024),
        (500, 100, 100),
    ],
)
def test_probe_finds_the_largest_power_of_two_that_fits(limit, cap, expected):
    module = OomAbove(limit)
    with torch.inference_mode():
        assert probe_largest(module, lambda rows: torch.zeros(rows, 4), cap, CPU) == expected
    # Doubling from 1, stopping at the first OOM (or at the cap).
    assert module.calls[0] == 1 and module.calls[-1] in (cap, expected * 2)


def test_probe_at_one_row_propagates_and_auto_on_cpu_does_not_split():
    with pytest.raises(torch.OutOfMemoryError):
        probe_largest(OomAbove(0), lambda rows: torch.zeros(rows, 4), 8, CPU)
    module = OomAbove(20)
    size, why = choose_micro_batch("auto", 1024, CPU, module, lambda r: torch.zeros(r, 4))
    assert size is None and "only GPU memory is probed" in why and module.calls == []
    size, why = choose_micro_batch(
        "auto", 1024, CPU, module, lambda r: torch.zeros(r, 4), probe_on_cpu=True
    )
    assert size == 16 and "16 rows" in why

    model = build(
        {"type": "torchvision", "name": "resnet18", "weights": "random"}, micro_batch="auto"
    )
    assert model.micro_batch is None and "auto on cpu" in model.micro_batch_reason
    # The classifier's own probe (what runs on CUDA), asked for on CPU: the real forward.
    probed = model._micro_batcher("auto", 4, probe_on_cpu=True)
    assert probed.size == 4 and "4 rows" in model.micro_batch_reason


def test_options_pass_the_conformance_kit():
    cells = [encode(Image.open(p).convert("RGB"), "JPEG") for p in PHOTO_FILES[:3]]
    cells.append(encode(Image.open(PHOTOS / "coffee.png").convert("RGB"), "PNG"))
    batch = {"id": np.arange(4), "image": column(cells)}
    params = {
        "name": "resnet18",
        "weights": "random",
        "num_classes": 5,
        "decode_on_device": True,
        "micro_batch": 3,
    }
    assert conformance_problems("model", "torchvision", params, batch) == []


# ---------------------------------------------------------------------------- staged uploads
# On CUDA, pixel batches go up through a pinned staging buffer a chunk ahead of the compute.
# The same code runs on CPU unpinned and without streams: the bookkeeping is tested here,
# the streams and events in the cuda tests below.


@pytest.mark.parametrize(
    ("rows", "micro_batch", "explicit", "expected"),
    [
        (128, None, False, 128),  # the default: the whole batch in one chunk
        (20, None, False, 20),
        (0, None, False, 1),
        (128, 48, True, 48),  # micro_batch from the spec: taken as it is
        (128, 512, True, 512),  # >= the batch: one chunk, no overlap
        (128, 40, False, 40),  # probed by auto or left by a back-off: a ceiling
        (128, 512, False, 128),
    ],
)
def test_chunk_rows(rows, micro_batch, explicit, expected):
    assert chunk_rows(rows, micro_batch, explicit) == expected


def test_staging_buffer_grows_only_for_a_bigger_batch():
    staging = StagingBuffer(pin_memory=False)
    assert staging.capacity == 0 and staging.allocations == 0
    first = staging.reserve((4, 3, 2, 2), torch.uint8)
    assert first.shape == (4, 3, 2, 2) and staging.capacity == 48 and staging.allocations == 1
    pointer = first.data_ptr()
    smaller = staging.reserve((2, 3, 2, 2), torch.uint8)
    assert smaller.data_ptr() == pointer and staging.allocations == 1
    floats = staging.reserve((1, 3, 2, 2), torch.float32)  # the same bytes, as float32
    assert floats.dtype == torch.float32 and floats.data_ptr() == pointer
    bigger = staging.reserve((5, 3, 2, 2), torch.uint8)
    assert staging.capacity == 60 and staging.allocations == 2 and bigger.is_contiguous()


def test_chunked_upload_fills_each_row_once_and_serves_prefetched_rows():
    source = torch.from_numpy(RNG.integers(0, 256, (10, 3, 4, 4), dtype=np.uint8))
    staging = StagingBuffer(pin_memory=False)
    upload = ChunkedUpload(source, staging, CPU)
    assert len(upload) == 10 and upload.filled == 0
    assert torch.equal(upload[0:4], source[0:4]) and upload.filled == 4
    upload.prefetch(4, 8)
    assert upload.filled == 8 and list(upload.pending) == [(4, 8)]
    # After a back-off the retry asks for part of a prefetched chunk: served from it.
    assert torch.equal(upload[4:6], source[4:6]) and upload.pending == {}
    assert torch.equal(upload[6:8], source[6:8])  # re-sent from the staging buffer
    assert torch.equal(upload[8:10], source[8:10]) and upload.filled == 10
    # Copies, not views: the next batch may refill the staging buffer.
    got = upload[0:10]
    ChunkedUpload(torch.zeros_like(source), staging, CPU)[0:10]
    assert torch.equal(got, source) and staging.allocations == 1
    hwc = torch.from_numpy(RNG.integers(0, 256, (3, 4, 4, 3), dtype=np.uint8))
    chw = ChunkedUpload(hwc.permute(0, 3, 1, 2), staging, CPU)[0:3]
    assert chw.is_contiguous() and torch.equal(chw, hwc.permute(0, 3, 1, 2))


class Recording(torch.nn.Module):
    """Records the rows of each forward pass."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(len(x))
        return self.inner(x)


def plain_logits(model, images: np.ndarray, chunk: int) -> torch.Tensor:
    """The unpipelined path over the same slices: the same kernels on the same inputs."""
    with torch.inference_mode():
        pixels = model._pixels(images)
        return torch.cat(
            [model._forward(pixels[i : i + chunk]) for i in range(0, len(pixels), chunk)]
        )


@pytest.mark.parametrize(
    ("micro_batch", "sizes"),
    [(None, [40, 40, 70, 7]), (16, [40, 70])],
)
def test_staged_logits_equal_the_plain_path_over_the_same_slices(micro_batch, sizes):
    model = build(
        {"type": "torchvision", "name": "resnet18", "weights": "random"}, micro_batch=micro_batch
    )
    model.module = Recording(model.module)
    for rows in sizes:  # 40 -> 70 grows the staging buffer, 7 reuses it
        images = RNG.integers(0, 256, (rows, 3, 32, 32), dtype=np.uint8)
        images.flags.writeable = False  # as Arrow hands it: read without a copy
        chunk = chunk_rows(rows, model.micro_batch, model.micro_batch_explicit)
        model.module.calls.clear()
        with torch.inference_mode():
            got = model._staged_logits(model._host_pixels(images, copy_read_only=False))
        assert model.module.calls == [min(chunk, rows - i) for i in range(0, rows, chunk)]
        torch.testing.assert_close(got, plain_logits(model, images, chunk), rtol=0, atol=0)
    assert model.staging is not None and model.staging.allocations == 2


def test_staged_logits_back_off_on_out_of_memory():
    node = {"type": "torchvision", "name": "resnet18", "weights": "random"}
    images = RNG.integers(0, 256, (70, 3, 32, 32), dtype=np.uint8)
    want = build(node)({"id": np.arange(70), "image": images.copy()})["logits"]
    model = build(node)
    model.module = OomAbove(20, inner=model.module)
    with torch.inference_mode():
        got = model._staged_logits(model._host_pixels(images)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # One chunk of 70 rows runs out of memory: 70 -> 35 -> 17, the rest in 17s.
    assert model.micro_batch == 17 and model.module.calls[:3] == [70, 35, 17]
    assert model.staging is not None and model.staging.allocations == 1


def test_cpu_batches_skip_the_staging_buffer():
    model = build({"type": "torchvision", "name": "resnet18", "weights": "random"})
    assert not model.pipeline_uploads
    images = RNG.integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    images.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # read-only input: copied on CPU, no torch warning
        model({"id": np.arange(3), "image": images})
    assert model.staging is None and model.copy_stream is None


# ---------------------------------------------------------------------------- on a GPU

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
def test_gpu_decode_predicts_like_the_cpu_path():
    node = {"type": "torchvision", "name": "resnet18", "weights": "random"}
    batch = photo_batch()
    want = build(node, device="cpu", precision="fp32", decode_on_device=True)(copy(batch))
    got = build(node, device="cuda", precision="fp32", decode_on_device=True)(copy(batch))
    # nvjpeg's IDCT/upsampling and the CUDA float resize move pixels by a few levels, so
    # logits agree to a few percent of their range, not bit for bit.
    assert (got["logits"].argmax(1) == want["logits"].argmax(1)).mean() >= 0.9
    spread = np.ptp(want["logits"])
    assert np.abs(got["logits"] - want["logits"]).max() <= 0.05 * spread


@cuda
def test_gpu_auto_micro_batch_probes_a_size():
    node = {"type": "torchvision", "name": "resnet18", "weights": "random"}
    model = build(node, device="cuda", micro_batch="auto", micro_batch_max=64)
    assert model.micro_batch == 64 and "probed" in model.micro_batch_reason


@cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("micro_batch", [None, 24])
def test_gpu_staged_logits_equal_the_plain_path(precision, micro_batch):
    node = {"type": "torchvision", "name": "resnet18", "weights": "random"}
    model = build(node, device="cuda", precision=precision, micro_batch=micro_batch)
    assert model.pipeline_uploads
    # 80 -> 50 reuses the staging buffer; 130 outgrows it; 97 and 50 end on a partial chunk.
    for rows in (80, 50, 130, 97, 1):
        images = RNG.integers(0, 256, (rows, 3, 64, 64), dtype=np.uint8)
        chunk = chunk_rows(rows, model.micro_batch, model.micro_batch_explicit)
        got = model({"id": np.arange(rows), "image": images.copy()})["logits"]
        want = plain_logits(model, images, chunk).cpu().numpy()
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
        model.pipeline_uploads = False  # the plain path, whole micro-batches: other kernels
        plain = model({"id": np.arange(rows), "image": images.copy()})["logits"]
        model.pipeline_uploads = True
        assert (got.argmax(1) == plain.argmax(1)).mean() >= 0.9
    assert model.staging is not None and model.staging.allocations == 2
    assert model.staging.buffer is not None and model.staging.buffer.is_pinned()


@cuda
def test_gpu_staged_logits_back_off_on_out_of_memory():
    node = {"type": "torchvision", "name": "resnet18", "weights": "random"}
    model = build(node, device="cuda", precision="fp32")
    images = RNG.integers(0, 256, (70, 3, 64, 64), dtype=np.uint8)
    inner = model.module
    model.module = OomAbove(20, inner=inner)
    got = model({"id": np.arange(70), "image": images.copy()})["logits"]
    assert model.micro_batch == 17
    model.module = inner
    want = plain_logits(model, images, 17).cpu().numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
