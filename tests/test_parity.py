"""Ray pipeline vs a plain PyTorch loop: same images, same weights, same logits per id.

The reference side reads its recipe (sizes, interpolation, mean, std) from upstream
objects - torchvision's weights preset and timm's own eval transform - and applies it one
image at a time, so a mix-up, drop or reorder of rows, or preprocessing that drifted from
the model's, shows up as a logit mismatch. Both sides resize with transforms v2's uint8
kernel: v1's float path (what the preset objects call) rounds differently by one level.
"""

from __future__ import annotations

import io
import os
from typing import Any

import matplotlib
import numpy as np
import pytest
import skimage
import torch
from PIL import Image

from plugins.vision import ImageTransform, TimmClassifier, TorchvisionClassifier

pytestmark = [pytest.mark.ray]

SKIMAGE = os.path.join(os.path.dirname(skimage.__file__), "data")
PHOTOS = [
    os.path.join(SKIMAGE, "chelsea.png"),
    os.path.join(SKIMAGE, "coffee.png"),
    os.path.join(SKIMAGE, "astronaut.png"),
    os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg"),
]


def encoded_photos() -> list[bytes]:
    """11 real photos: 4 pictures at several sizes, as PNG and JPEG, one EXIF-rotated."""
    out = []
    for n, path in enumerate(PHOTOS):
        photo = Image.open(path).convert("RGB")
        for scale, fmt in ((1.0, "PNG"), (0.6, "JPEG"), (1.7, "JPEG")):
            if len(out) == 11:
                break
            size = (round(photo.width * scale), round(photo.height * scale))
            kwargs: dict[str, Any] = {"quality": 90} if fmt == "JPEG" else {}
            if fmt == "JPEG" and n == 1 and scale > 1:
                exif = Image.Exif()
                exif[0x0112] = 6  # rotate 90 degrees on display
                kwargs["exif"] = exif.tobytes()
            buf = io.BytesIO()
            photo.resize(size, Image.Resampling.BICUBIC).save(buf, fmt, **kwargs)
            out.append(buf.getvalue())
    return out


def reference_decode(data: bytes) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_image

    encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return decode_image(encoded, mode=ImageReadMode.RGB, apply_exif_orientation=True)


def run_pipeline(
    images: list[bytes], model_cls: type, model_params: dict[str, Any]
) -> dict[int, np.ndarray]:
    import ray.data

    node = {"type": model_cls.model_type, **model_params}
    transform = ImageTransform(from_model=node)
    ds = ray.data.from_items([{"id": i, "image": data} for i, data in enumerate(images)])
    ds = ds.map_batches(transform, batch_size=4, batch_format="numpy")
    ds = ds.map_batches(
        model_cls,
        fn_constructor_kwargs=model_params,
        batch_size=3,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=1),
    )
    rows = ds.take_all()
    assert len(rows) == len(images)
    assert all("image" not in row for row in rows)
    return {int(row["id"]): row["logits"] for row in rows}


def reference_logits(
    images: list[bytes],
    module: torch.nn.Module,
    resize: list[int],
    crop: list[int],
    interpolation: Any,
    mean: list[float],
    std: list[float],
) -> dict[int, np.ndarray]:
    from torchvision.transforms.v2 import functional as F

    module.eval()
    out = {}
    with torch.inference_mode():
        for i, data in enumerate(images):
            image = F.resize(reference_decode(data), resize, interpolation, antialias=True)
            image = F.to_dtype(F.center_crop(image, crop), torch.float32, scale=True)
            out[i] = module(F.normalize(image, mean, std)[None])[0].numpy()
    return out


def assert_same_logits(got: dict[int, np.ndarray], want: dict[int, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    for i in want:
        assert got[i].dtype == np.float32
        np.testing.assert_allclose(got[i], want[i], rtol=1e-4, atol=1e-4, err_msg=f"id {i}")
    # Guard against a tolerance so loose that a swap of two rows would pass.
    assert not np.allclose(want[0], want[1], rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    return encoded_photos()


def test_torchvision_pipeline_matches_plain_loop(ray_session, tmp_path, photos):
    import torchvision

    torch.manual_seed(0)
    # A 10-class head: the pipeline must infer num_classes from the checkpoint.
    module = torchvision.models.resnet18(num_classes=10)
    checkpoint = tmp_path / "resnet18-finetuned.pth"
    torch.save(module.state_dict(), checkpoint)

    got = run_pipeline(
        photos, TorchvisionClassifier, {"name": "resnet18", "weights": str(checkpoint)}
    )

    # An unrecognised checkpoint keeps the architecture's DEFAULT preset.
    p = torchvision.models.ResNet18_Weights.DEFAULT.transforms()
    want = reference_logits(
        photos, module, p.resize_size, p.crop_size, p.interpolation, p.mean, p.std
    )
    assert next(iter(got.values())).shape == (10,)
    assert_same_logits(got, want)


def test_timm_pipeline_matches_plain_loop(ray_session, tmp_path, photos):
    import timm
    import timm.data

    torch.manual_seed(1)
    module = timm.create_model("resnet18", pretrained=False)
    checkpoint = tmp_path / "timm-resnet18.pth"
    torch.save(module.state_dict(), checkpoint)

    got = run_pipeline(photos, TimmClassifier, {"name": "resnet18", "checkpoint": str(checkpoint)})

    # timm's own eval transform: Resize, CenterCrop, ToTensor, Normalize.
    config = timm.data.resolve_model_data_config(module)
    resize, crop, *_, norm = timm.data.create_transform(**config, is_training=False).transforms
    size = [resize.size] if isinstance(resize.size, int) else list(resize.size)
    want = reference_logits(
        photos, module, size, list(crop.size), resize.interpolation, list(norm.mean), list(norm.std)
    )
    assert next(iter(got.values())).shape == (1000,)
    assert_same_logits(got, want)
