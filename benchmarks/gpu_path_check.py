"""Check and time the classifiers' GPU-path options on a CUDA machine.

    python benchmarks/gpu_path_check.py [--model resnet50] [--weights random] [--batch 128]
        [--seconds 3] [--photos DIR ...] [--out result.json] [--skip-compile]

Builds a torchvision model through ``TorchvisionClassifier`` (random weights unless
``--weights`` names cached ones) and checks, on the GPU:

a. ``decode_on_device``: real photos as JPEG (nvjpeg) and PNG (CPU decode) bytes give the
   same crops (within a few uint8 levels) and the same top-1 as ``image_transform`` on
   the CPU followed by the same model;
b. ``micro_batch: auto`` probes a size (printed, with the time the probe took);
c. ``compile: true`` runs and matches eager within tolerance (fp32);
d. images/s, in fp32 and in ``precision: auto``: the model alone on ready normalized
   tensors, the classifier's ``__call__`` on uint8 [N, 3, 224, 224] batches, and
   ``decode_on_device`` from JPEG bytes. ``call_uint8_batches`` times ``__call__`` alone
   (the default, staged and pipelined upload), next to ``_unpipelined`` (the plain upload,
   as before the staging buffer), ``_copied_input`` variants that also copy the numpy
   batch on each call (how this script timed it before: the harness's copy and its page
   faults counted in), and a chunk sweep (``micro_batch`` = the batch: one chunk, no
   overlap; a quarter of it: four). ``ratio_to_model_only`` divides each by the model
   alone at the same precision (the target is >= 0.9 for ``call_uint8_batches``);
   ``decode_on_device_parts`` times its parts alone: Pillow's header pass, the batched
   decode, and the resize, one call per image against one per size;
e. staged uploads: ``__call__``'s logits equal the plain upload's over the same slices
   (same kernels, same inputs) for several batch sizes - a partial last chunk, a batch
   that outgrows the staging buffer, one that reuses it - in fp32 and ``auto``.

Prints one JSON object; exits 1 when a check fails, 2 when it cannot run at all.

Needs torch, torchvision, numpy, pillow and pyarrow; not Ray or omegaconf. ``framework``
(which every plugin imports) imports ``pluggy`` at module level (``framework.hookspecs``,
``framework.plugins``): where pluggy is missing this script puts in a stand-in with only
the decorator markers, says so in the JSON, and builds the classifier directly (no plugin
registry). Photos: scikit-image's and matplotlib's sample photos when those are
installed, else ``--photos`` (directories or files); without any, it stops.

Took 41 s on an H200 (torch 2.11, resnet50, --seconds 2; the compile in check c: 16 s);
allow 1-3 minutes elsewhere, most of it start-up and compilation.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
PHOTO_NAMES = ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg", "grace_hopper.jpg")
# Pixel agreement between nvjpeg + CUDA resize and libjpeg-turbo + CPU uint8 resize: IDCT
# and chroma upsampling differ by a level or two, the float resize rounds differently.
MAX_MEAN_PIXEL_DIFF = 2.0
# Logit agreement, as a fraction of the logits' range over the batch.
DECODE_LOGIT_TOLERANCE = 0.05
COMPILE_LOGIT_TOLERANCE = 0.01
# Staged against plain upload over the same slices: the same kernels, so equal up to noise.
PIPELINE_LOGIT_TOLERANCE = 1e-6


def pluggy_stand_in() -> types.ModuleType:
    """Just enough of pluggy for ``import framework``: the markers, as no-op decorators."""
    module = types.ModuleType("pluggy")

    class Marker:
        def __init__(self, project_name: str) -> None:
            self.project_name = project_name

        def __call__(self, function: Any = None, **options: Any) -> Any:
            return function if function is not None else (lambda f: f)

    class PluginManager:
        def __init__(self, project_name: str) -> None:
            raise RuntimeError("pluggy stand-in: no plugin registry in gpu_path_check")

    class PluginValidationError(Exception):
        pass

    module.HookspecMarker = Marker  # type: ignore[attr-defined]
    module.HookimplMarker = Marker  # type: ignore[attr-defined]
    module.PluginManager = PluginManager  # type: ignore[attr-defined]
    module.PluginValidationError = PluginValidationError  # type: ignore[attr-defined]
    return module


def import_plugins(notes: list[str]) -> tuple[type, type]:
    """``TorchvisionClassifier`` and ``ImageTransform`` from this checkout."""
    sys.path.insert(0, str(ROOT))
    missing = [m for m in ("ray", "omegaconf") if importlib.util.find_spec(m) is None]
    if missing:
        notes.append(f"not installed (not needed here): {', '.join(missing)}")
    if importlib.util.find_spec("pluggy") is None:
        sys.modules["pluggy"] = pluggy_stand_in()
        notes.append(
            "pluggy is not installed: framework/__init__.py imports it (framework.hookspecs, "
            "framework.plugins); a stand-in with only the decorator markers was used"
        )
    from plugins.vision.models import TorchvisionClassifier
    from plugins.vision.stages import ImageTransform

    return TorchvisionClassifier, ImageTransform


def photo_files(extra: list[str]) -> list[Path]:
    roots: list[Path] = []
    for name in ("skimage", "matplotlib"):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin:
            base = Path(spec.origin).parent
            roots += [base / "data", base / "mpl-data" / "sample_data"]
    found: list[Path] = []
    for item in extra:
        path = Path(item)
        if path.is_file():
            found.append(path)
        else:
            roots.append(path)
    for name in PHOTO_NAMES:
        found += [root / name for root in roots if (root / name).is_file()][:1]
    return found


def encode(image: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def rotated_jpeg(image: Image.Image) -> bytes:
    """EXIF orientation 6: nvjpeg ignores it, so the device path turns the image itself."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(image, "JPEG", quality=90, exif=exif.tobytes())


def column(cells: list[bytes]) -> np.ndarray:
    out = np.empty(len(cells), dtype=object)
    for i, cell in enumerate(cells):
        out[i] = cell
    return out


def photo_cells(paths: list[Path]) -> tuple[list[str], list[bytes]]:
    ids, cells = [], []
    for path in paths:
        image = Image.open(path).convert("RGB")
        for fmt, kwargs in (("JPEG", {"quality": 90}), ("PNG", {})):
            ids.append(f"{path.stem}.{fmt.lower()}")
            cells.append(encode(image, fmt, **kwargs))
    first = Image.open(paths[0]).convert("RGB")
    ids.append(f"{paths[0].stem}-exif6.jpeg")
    cells.append(rotated_jpeg(first))
    return ids, cells


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rate(call: Callable[[], Any], rows: int, device: torch.device, seconds: float) -> float:
    """Rows per second over at least ``seconds`` (and 3 calls), after 2 warm-up calls."""
    for _ in range(2):
        call()
    sync(device)
    calls, start = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - start < seconds:
        call()
        calls += 1
    sync(device)
    return round(rows * calls / (time.perf_counter() - start), 1)


def release(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def spread(logits: np.ndarray) -> float:
    return float(np.ptp(logits)) or 1.0


class Check:
    def __init__(self, args: argparse.Namespace, out: dict[str, Any]) -> None:
        self.args = args
        self.out = out
        self.device = torch.device(args.device)
        self.node = {"type": "torchvision", "name": args.model, "weights": args.weights}
        self.failures: list[str] = out.setdefault("failures", [])

    def save(self) -> None:
        if self.args.out:
            Path(self.args.out).write_text(json.dumps(self.out, indent=2))

    def build(self, **options: Any) -> Any:
        torch.manual_seed(0)  # random weights: the same ones for every build
        params = {key: value for key, value in self.node.items() if key != "type"}
        return self.classifier(**params, device=self.args.device, **options)

    def decode(self, ids: list[str], cells: list[bytes]) -> None:
        """(a) decode_on_device against image_transform on the CPU, through the same model."""
        batch = {"id": np.array(ids, dtype=object), "image": column(cells)}
        crops = self.transform(from_model=self.node)({k: v.copy() for k, v in batch.items()})
        model = self.build(precision="fp32", decode_on_device=True)
        with torch.inference_mode():
            device_crops = model._decoded_pixels(batch["image"], batch["id"]).cpu().numpy()
        diff = np.abs(device_crops.astype(np.int16) - crops["image"].astype(np.int16))
        want = model({k: v.copy() for k, v in crops.items()})["logits"]
        got = model({k: v.copy() for k, v in batch.items()})["logits"]
        same_top1 = got.argmax(1) == want.argmax(1)
        logit_diff = float(np.abs(got - want).max()) / spread(want)
        mean_diff = diff.reshape(len(ids), -1).mean(1)
        self.out["decode_on_device"] = {
            "rows": ids,
            "mean_pixel_diff": [round(float(d), 3) for d in mean_diff],
            "max_pixel_diff": int(diff.max()),
            "top1_device": got.argmax(1).tolist(),
            "top1_cpu_transform": want.argmax(1).tolist(),
            "max_logit_diff_over_range": round(logit_diff, 5),
        }
        if not same_top1.all():
            self.failures.append(f"decode_on_device: top-1 differs for {np.array(ids)[~same_top1]}")
        if mean_diff.max() > MAX_MEAN_PIXEL_DIFF:
            self.failures.append(
                f"decode_on_device: crops differ by {mean_diff.max():.2f} levels on average "
                f"(limit {MAX_MEAN_PIXEL_DIFF})"
            )
        if logit_diff > DECODE_LOGIT_TOLERANCE:
            self.failures.append(f"decode_on_device: logits differ by {logit_diff:.4f} of range")

    def probe(self) -> None:
        """(b) micro_batch: auto."""
        start = time.perf_counter()
        model = self.build(micro_batch="auto", micro_batch_max=self.args.micro_batch_max)
        self.out["micro_batch_auto"] = {
            "size": model.micro_batch,
            "reason": model.micro_batch_reason,
            "setup_s": round(time.perf_counter() - start, 2),
        }
        if self.device.type == "cuda" and not model.micro_batch:
            self.failures.append("micro_batch: auto probed no size on CUDA")
        del model
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def timings(self, crops: np.ndarray, cells: list[bytes]) -> None:
        """(d) images/s: model alone, __call__ on uint8, decode_on_device from JPEG bytes."""
        rows = self.args.batch
        uint8 = np.ascontiguousarray(crops[np.arange(rows) % len(crops)])
        jpegs = column([cells[i % len(cells)] for i in range(rows)])
        self.out["decode_on_device_parts"] = self.decode_parts(jpegs)
        self.save()
        results: dict[str, dict[str, Any]] = {}
        for precision in ("fp32", "auto"):
            results[precision] = self.precision_timings(precision, uint8, jpegs)
            self.out["images_per_s"] = results
            self.save()

    def decode_parts(self, jpegs: np.ndarray) -> dict[str, float]:
        """Images/s of each part of ``decode_on_device`` alone: Pillow's header pass, the
        batched decode, and resizing one image per call against one call per size."""
        from plugins.vision.device_decode import _decode_jpegs, _sort_cells
        from plugins.vision.pixels import resize_crop_by_size
        from plugins.vision.transform import resize_crop

        rows, seconds, ids = len(jpegs), self.args.seconds, list(range(len(jpegs)))
        found, _ = _sort_cells(jpegs, ids, None)
        images = [image for image in _decode_jpegs(found, self.device) if image is not None]
        model = self.build(precision="fp32", decode_on_device=True)
        config = model.preprocess  # what decode_on_device resizes and crops to
        del model
        release(self.device)
        return {
            "header_pass": rate(lambda: _sort_cells(jpegs, ids, None), rows, self.device, seconds),
            "batched_decode": rate(
                lambda: _decode_jpegs(found, self.device), rows, self.device, seconds
            ),
            "resize_one_call_per_image": rate(
                lambda: torch.stack([resize_crop(i, config) for i in images]),
                rows,
                self.device,
                seconds,
            ),
            "resize_one_call_per_size": rate(
                lambda: resize_crop_by_size(images, config, self.device), rows, self.device, seconds
            ),
            "distinct_sizes": len({tuple(i.shape) for i in images}),
        }

    def precision_timings(
        self, precision: str, uint8: np.ndarray, jpegs: np.ndarray
    ) -> dict[str, Any]:
        model = self.build(precision=precision, decode_on_device=True)
        out = self.model_timings(model, uint8, jpegs)
        del model
        release(self.device)
        sweep = {}
        rows = len(uint8)
        for chunk in (rows, max(1, rows // 4)):
            chunked = self.build(precision=precision, micro_batch=chunk)
            sweep[f"micro_batch_{chunk}"] = self.call_rate(chunked, uint8)
            del chunked
            release(self.device)
        out["call_uint8_batches_chunk_sweep"] = sweep
        ceiling = out["model_only_ready_tensors"]
        out["ratio_to_model_only"] = {
            key: round(value / ceiling, 3)
            for key, value in [*out.items(), *sweep.items()]
            if key.startswith(("call_", "micro_batch_")) and isinstance(value, float)
        }
        out["meets_0.9_target"] = out["ratio_to_model_only"]["call_uint8_batches"] >= 0.9
        return out

    def model_timings(self, model: Any, uint8: np.ndarray, jpegs: np.ndarray) -> dict[str, Any]:
        from framework.torch_runtime import autocast

        rows, seconds = len(uint8), self.args.seconds
        ready = model._normalize(torch.from_numpy(uint8).to(self.device))

        def forward() -> None:
            with torch.inference_mode(), autocast(model.device, model.autocast_dtype):
                model.module(ready)

        return {
            "model_only_ready_tensors": rate(forward, rows, self.device, seconds),
            "call_uint8_batches": self.call_rate(model, uint8),
            "call_uint8_batches_unpipelined": self.call_rate(model, uint8, pipelined=False),
            "call_uint8_batches_copied_input": self.call_rate(model, uint8, copy=True),
            "call_uint8_batches_unpipelined_copied_input": self.call_rate(
                model, uint8, pipelined=False, copy=True
            ),
            "call_decode_on_device_jpeg": rate(
                lambda: model({"id": np.arange(rows), "image": jpegs.copy()}),
                rows,
                self.device,
                seconds,
            ),
            "autocast": str(model.autocast_dtype or "fp32"),
        }

    def call_rate(
        self, model: Any, uint8: np.ndarray, pipelined: bool = True, copy: bool = False
    ) -> float:
        """``__call__`` on ``uint8``; ``copy``: a fresh copy of the array each call, timed too."""
        ids = np.arange(len(uint8))
        model.pipeline_uploads = pipelined and self.device.type == "cuda"

        def call() -> None:
            # A fresh dict each call (__call__ replaces the column); the array is only read.
            model({"id": ids, "image": uint8.copy() if copy else uint8})

        timed = rate(call, len(uint8), self.device, self.args.seconds)
        model.pipeline_uploads = self.device.type == "cuda"
        return timed

    def pipeline(self, crops: np.ndarray) -> None:
        """(e) staged uploads give the plain upload's logits over the same slices."""
        from plugins.vision.staging import chunk_rows

        rows = self.args.batch
        # A batch, one that outgrows the staging buffer (partial last chunk), one reusing it.
        sizes = (rows, rows + 37, max(1, rows // 2 - 7))
        cases = [("fp32", None), ("auto", None), ("fp32", 48)]
        results = []
        for precision, micro_batch in cases:
            model = self.build(precision=precision, micro_batch=micro_batch)
            for size in sizes:
                images = np.ascontiguousarray(crops[np.arange(size) % len(crops)])
                chunk = chunk_rows(size, model.micro_batch, model.micro_batch_explicit)
                model.pipeline_uploads = True  # on CPU too (a smoke run): unpinned, in line
                got = model({"id": np.arange(size), "image": images})["logits"]
                with torch.inference_mode():
                    pixels = model._pixels(images)
                    same_slices = torch.cat(
                        [model._forward(pixels[i : i + chunk]) for i in range(0, size, chunk)]
                    )
                same_slices = same_slices.cpu().numpy()
                model.pipeline_uploads = False
                plain = model({"id": np.arange(size), "image": images})["logits"]
                model.pipeline_uploads = self.device.type == "cuda"
                diff = float(np.abs(got - same_slices).max()) / spread(same_slices)
                results.append(
                    {
                        "precision": precision,
                        "micro_batch": micro_batch,
                        "rows": size,
                        "chunk_rows": chunk,
                        "max_logit_diff_over_range_same_slices": diff,
                        "max_logit_diff_over_range_plain_whole": round(
                            float(np.abs(got - plain).max()) / spread(plain), 6
                        ),
                        "same_top1_as_plain_whole": float(
                            (got.argmax(1) == plain.argmax(1)).mean()
                        ),
                    }
                )
                if diff > PIPELINE_LOGIT_TOLERANCE:
                    self.failures.append(
                        f"staged upload: {precision}, micro_batch {micro_batch}, {size} rows: "
                        f"logits differ from the plain upload by {diff:.2e} of range"
                    )
            staging = model.staging
            if self.device.type == "cuda" and (
                staging is None or staging.allocations != 2 or not staging.buffer.is_pinned()
            ):
                self.failures.append(
                    "staged upload: expected one pinned staging buffer, grown once, got "
                    f"{None if staging is None else staging.allocations} allocations"
                )
            del model
            release(self.device)
        self.out["staged_upload"] = results

    def compile(self, crops: np.ndarray) -> None:
        """(c) compile: true against eager, fp32, the same uint8 batch."""
        rows = min(self.args.batch, 32)
        batch = np.ascontiguousarray(crops[np.arange(rows) % len(crops)])
        eager = self.build(precision="fp32")({"id": np.arange(rows), "image": batch.copy()})
        model = self.build(precision="fp32", compile=True)
        start = time.perf_counter()
        got = model({"id": np.arange(rows), "image": batch.copy()})
        compile_s = time.perf_counter() - start
        logit_diff = float(np.abs(got["logits"] - eager["logits"]).max()) / spread(eager["logits"])
        same_top1 = bool((got["logits"].argmax(1) == eager["logits"].argmax(1)).all())
        timed = rate(
            lambda: model({"id": np.arange(rows), "image": batch.copy()}),
            rows,
            self.device,
            self.args.seconds,
        )
        self.out["compile"] = {
            "mode": model.compile_mode,
            "first_call_s": round(compile_s, 1),
            "max_logit_diff_over_range": round(logit_diff, 6),
            "same_top1": same_top1,
            "fp32_call_uint8_images_per_s": timed,
            "rows": rows,
        }
        if not same_top1 or logit_diff > COMPILE_LOGIT_TOLERANCE:
            self.failures.append(
                f"compile: logits differ by {logit_diff:.5f} of range, same top-1: {same_top1}"
            )

    def run(self, photos: list[Path]) -> None:
        self.classifier, self.transform = import_plugins(self.out["notes"])
        ids, cells = photo_cells(photos)
        self.decode(ids, cells)
        self.save()
        self.probe()
        self.save()
        batch = {"id": np.array(ids, dtype=object), "image": column(cells)}
        crops = self.transform(from_model=self.node)(batch)["image"]
        self.pipeline(crops)
        self.save()
        jpegs = [cell for i, cell in zip(ids, cells, strict=True) if i.endswith(".jpeg")]
        self.timings(crops, jpegs)
        if not self.args.skip_compile:
            self.compile(crops)
        self.save()


def environment(device: torch.device) -> dict[str, Any]:
    import torchvision

    info: dict[str, Any] = {"torch": torch.__version__, "torchvision": torchvision.__version__}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--weights", default="random")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=3.0, help="per timing")
    parser.add_argument("--micro-batch-max", type=int, default=1024)
    parser.add_argument("--photos", nargs="*", default=[], help="photo files or directories")
    parser.add_argument("--out", help="also write the JSON here (updated after each check)")
    parser.add_argument("--skip-compile", action="store_true")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    out: dict[str, Any] = {"config": vars(args), "notes": [], "failures": []}
    if device.type == "cuda" and not torch.cuda.is_available():
        out["failures"].append("CUDA is not available (pass --device cpu for a smoke run)")
        print(json.dumps(out))
        return 2
    out["environment"] = environment(device)
    photos = photo_files(args.photos)
    if not photos:
        out["failures"].append(
            "no photos: install scikit-image/matplotlib or pass --photos with JPEG/PNG files"
        )
        print(json.dumps(out))
        return 2
    out["photos"] = [str(p) for p in photos]
    start = time.perf_counter()
    Check(args, out).run(photos)
    out["wall_s"] = round(time.perf_counter() - start, 1)
    out["ok"] = not out["failures"]
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out))
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
