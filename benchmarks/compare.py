"""infer-run against a model-only ceiling, a plain PyTorch loop and hand-written Ray Data.

    python -m benchmarks.compare --rows 500 --model resnet18 [--batch-size 64] [--data DIR]
        [--json OUT.json] [--only ceiling,loop,raydata,infer-run] [--seed S] [--loop-workers N]
        [--device cpu|cuda] [--precision fp32|bf16|fp16] [--set KEY=VALUE ...]

Every mode classifies the same datagen parquet images with the same randomly initialised
torchvision model (eval, ``inference_mode``; fp32 unless ``--precision`` says otherwise,
under autocast), on the CPU or, with ``--device cuda``, on one GPU, one mode after
another, each in its own fresh interpreter so no Ray cluster, torch thread pool or
oneDNN cache is shared:

* ``ceiling``: forward passes only, on ready normalized tensors (on the device), all
  cores, the best of the contiguous and channels_last memory formats, each with the model
  as built in a default process (the ceiling as the performance issue defines it) and as
  infer-run's model actors run it: batch norms folded into the convolutions and freed
  activations held for reuse (``framework.allocator.hold_freed_memory``). The best of
  the four is the ceiling; no reading, decoding or writing.
* ``loop``: what a PyTorch user writes: a ``Dataset`` decoding with PIL and the classic
  torchvision transforms, a ``DataLoader``, the model with default threads, top-5. On
  CUDA: ``pin_memory``, ``non_blocking`` copies and all cores but one as loader workers.
* ``raydata``: a pipeline in the style of Ray's published batch-inference benchmark:
  ``read_parquet`` -> ``map_batches(preprocess)`` -> ``map_batches(Predictor,
  ActorPoolStrategy(size=1))`` with default resource requests (plus ``num_gpus=1`` on
  CUDA) -> ``write_parquet``.
* ``infer-run``: the equivalent spec through ``framework.cli.main``; its run report's
  ``wall_time_s`` (start of execution to the end of the write) is the figure.

The three end-to-end modes read the parquet files, decode, resize 256 / crop 224,
normalize, classify, keep the top 5 classes and write them as parquet; their clock
starts after Ray's start-up (where there is one) and stops when the last row is written.
See benchmarks/README.md for how to read the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import io
import json
import math
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torchvision
from PIL import Image

from framework import torch_runtime

REPO = Path(__file__).resolve().parent.parent
MODES = ("ceiling", "loop", "raydata", "infer-run")
DEFAULT_JSON = REPO / "benchmarks" / "results" / "latest.json"
# The targets for infer-run's rows/s divided by each baseline's.
TARGETS = {"ceiling": 0.90, "loop": 1.2, "raydata": 1.8}
WORKER_COMMAND = "_worker"
RAY_NICENESS_VARIABLE = "RAY_worker_niceness"

# The classic ImageNet eval recipe, identical in every mode that preprocesses.
RESIZE = 256
CROP = 224
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
TOP_K = 5
# oneDNN picks and caches its kernels on the first calls; two batches settle it.
CEILING_WARMUP_BATCHES = 2
# On a 2-core machine a typical user gives decoding one worker process and leaves the
# other core to the model; more workers only oversubscribe the cores the model uses.
# With a GPU doing the model's work, every core but the main process's decodes.
LOOP_WORKERS = 1
PRECISIONS = ("fp32", "bf16", "fp16")
MODE_TIMEOUT_S = 3600.0


# ---------------------------------------------------------------------------------------
# Shared pieces of the modes


def classic_transform() -> Callable[[Image.Image], torch.Tensor]:
    """Resize(256) / CenterCrop(224) / ToTensor / Normalize on a PIL image, as tutorials write it."""
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.Resize(RESIZE),
            transforms.CenterCrop(CROP),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]
    )


def build_model(name: str, device: str = "cpu") -> torch.nn.Module:
    """The torchvision architecture with random weights (nothing to download), in eval mode."""
    return torchvision.models.get_model(name, weights=None).eval().to(device)


def autocast(config: dict[str, Any]) -> contextlib.AbstractContextManager[None]:
    """Autocast to the configured reduced precision on the configured device; fp32: nothing."""
    device = torch.device(config.get("device", "cpu"))
    dtype = torch_runtime.autocast_dtype(config.get("precision", "fp32"), device)
    return torch_runtime.autocast(device, dtype)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def top_k(logits: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Softmax top-k class ids (int64) and scores (float32), as infer-run's ``topk`` keeps."""
    scores, ids = logits.float().softmax(dim=1).topk(TOP_K, dim=1)
    return ids.to(torch.int64).cpu().numpy(), scores.to(torch.float32).cpu().numpy()


def parquet_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("*.parquet") if not p.name.startswith(("_", ".")))


def count_rows(directory: Path) -> int:
    return sum(pq.read_metadata(p).num_rows for p in parquet_files(directory))


def write_predictions(path: Path, ids: list[str], classes: np.ndarray, scores: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "top_ids": pa.FixedSizeListArray.from_arrays(pa.array(classes.reshape(-1)), TOP_K),
            "top_scores": pa.FixedSizeListArray.from_arrays(pa.array(scores.reshape(-1)), TOP_K),
        }
    )
    pq.write_table(table, path)


# ---------------------------------------------------------------------------------------
# Mode 1: model-only ceiling


def run_ceiling(config: dict[str, Any]) -> dict[str, Any]:
    """Forward passes on one ready batch, repeated to cover at least ``rows`` rows."""
    from framework.allocator import hold_freed_memory
    from plugins.vision.runtime import fold_batch_norms

    device = config.get("device", "cpu")
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    batch_size = int(config["batch_size"])
    batches = max(1, math.ceil(int(config["rows"]) / batch_size))
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(
        0, 256, (batch_size, 3, CROP, CROP), dtype=torch.uint8, generator=generator
    )
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    images = pixels.to(torch.float32).div_(255.0).sub_(mean).div_(std).to(device)
    built = build_model(config["model"])
    # The model as built in a default process (the ceiling), then as infer-run's
    # model actors run it: batch norms folded, freed activations held for reuse.
    models = {
        "as built": (built, lambda: None),
        "batch norms folded, memory held": (fold_batch_norms(built)[0], hold_freed_memory),
    }
    formats = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
    figures: dict[str, dict[str, float]] = {}
    with torch.inference_mode(), autocast(config):
        for model_name, (module, prepare) in models.items():
            prepare()
            for format_name, memory_format in formats.items():
                model = module.to(device=device, memory_format=memory_format)
                batch = images.contiguous(memory_format=memory_format)
                for _ in range(CEILING_WARMUP_BATCHES):
                    model(batch)
                sync(device)
                start = time.perf_counter()
                for _ in range(batches):
                    model(batch)
                sync(device)
                wall = time.perf_counter() - start
                figures[f"{format_name}, {model_name}"] = {
                    "rows_per_s": batches * batch_size / wall,
                    "wall_time_s": wall,
                }
    best = max(figures, key=lambda name: figures[name]["rows_per_s"])
    return {
        "rows": batches * batch_size,
        "rows_per_s": figures[best]["rows_per_s"],
        "wall_time_s": figures[best]["wall_time_s"],
        "batches": batches,
        "warmup_batches": CEILING_WARMUP_BATCHES,
        "torch_threads": torch.get_num_threads(),
        "best": best,
        "channels_last": best.startswith("channels_last"),
        # The ceiling: the better memory format, the model as built.
        "as_built_rows_per_s": max(v["rows_per_s"] for k, v in figures.items() if "built" in k),
        "variants": figures,
    }


# ---------------------------------------------------------------------------------------
# Mode 2: plain PyTorch DataLoader loop


class ParquetImageDataset(torch.utils.data.Dataset):
    """The parquet table in memory; one JPEG decoded and transformed per ``__getitem__``."""

    def __init__(self, files: Sequence[Path], transform: Callable[[Image.Image], torch.Tensor]):
        table = pa.concat_tables(pq.read_table(f, columns=["id", "image"]) for f in files)
        self.ids: list[str] = table.column("id").to_pylist()
        self.images: list[bytes] = table.column("image").to_pylist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[str, torch.Tensor]:
        with Image.open(io.BytesIO(self.images[index])) as image:
            return self.ids[index], self.transform(image.convert("RGB"))


def run_loop(config: dict[str, Any]) -> dict[str, Any]:
    """Read, decode, classify and write with a DataLoader; the clock covers all of it."""
    out = Path(config["workdir"]) / "loop-out" / "part-00000.parquet"
    device = config.get("device", "cpu")
    start = time.perf_counter()
    model = build_model(config["model"], device)
    model_build_s = time.perf_counter() - start
    dataset = ParquetImageDataset([Path(f) for f in config["files"]], classic_transform())
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=int(config["batch_size"]),
        num_workers=int(config["loop_workers"]),
        pin_memory=device == "cuda",
    )
    ids: list[str] = []
    classes: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    with torch.inference_mode(), autocast(config):
        for batch_ids, images in loader:
            logits = model(images.to(device, non_blocking=True))
            batch_classes, batch_scores = top_k(logits)
            ids.extend(batch_ids)
            classes.append(batch_classes)
            scores.append(batch_scores)
    write_predictions(out, ids, np.concatenate(classes), np.concatenate(scores))
    wall = time.perf_counter() - start
    rows = count_rows(out.parent)
    return {
        "rows": rows,
        "rows_per_s": rows / wall,
        "wall_time_s": wall,
        "model_build_s": model_build_s,
        "num_workers": int(config["loop_workers"]),
        "torch_threads": torch.get_num_threads(),
        "channels_last": False,
    }


# ---------------------------------------------------------------------------------------
# Mode 3: hand-written Ray Data pipeline (the published benchmark's shape)


def preprocess(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Decode with PIL and apply the classic transforms; ships float32 [N, 3, 224, 224]."""
    transform = classic_transform()
    images = []
    for data in batch["image"]:
        with Image.open(io.BytesIO(data)) as image:
            images.append(transform(image.convert("RGB")))
    return {"id": batch["id"], "image": torch.stack(images).numpy()}


class Predictor:
    """The model actor; it notes its torch thread count, which Ray sets from its CPU request."""

    def __init__(self, model_name: str, probe_dir: str, config: dict[str, Any]) -> None:
        self.config = config
        self.device = config.get("device", "cpu")
        self.model = build_model(model_name, self.device)
        probe = {
            "pid": os.getpid(),
            "torch_threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "niceness": os.nice(0),
        }
        Path(probe_dir, f"{os.getpid()}.json").write_text(json.dumps(probe))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.inference_mode(), autocast(self.config):
            images = torch.as_tensor(batch["image"]).to(self.device)
            classes, scores = top_k(self.model(images))
        return {"id": batch["id"], "top_ids": classes, "top_scores": scores}


def run_raydata(config: dict[str, Any]) -> dict[str, Any]:
    import ray
    import ray.data

    workdir = Path(config["workdir"])
    out = workdir / "raydata-out"
    probe_dir = workdir / "raydata-probe"
    probe_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    # address="local": a fresh cluster of this machine's cores even if another Ray runs here.
    ray.init(address="local", include_dashboard=False)
    ray_init_s = time.perf_counter() - started
    start = time.perf_counter()
    ds = ray.data.read_parquet(config["data"], columns=["id", "image"])
    ds = ds.map_batches(preprocess)
    ds = ds.map_batches(
        Predictor,
        compute=ray.data.ActorPoolStrategy(size=1),
        batch_size=int(config["batch_size"]),
        fn_constructor_kwargs={
            "model_name": config["model"],
            "probe_dir": str(probe_dir),
            "config": config,
        },
        # The published benchmark's GPU request; on the CPU, Ray's default (1 CPU).
        **({"num_gpus": 1} if config.get("device") == "cuda" else {}),
    )
    ds.write_parquet(str(out))
    wall = time.perf_counter() - start
    ray.shutdown()
    rows = count_rows(out)
    actors = [json.loads(p.read_text()) for p in sorted(probe_dir.glob("*.json"))]
    return {
        "rows": rows,
        "rows_per_s": rows / wall,
        "wall_time_s": wall,
        "ray_init_s": ray_init_s,
        "actor_pool_size": 1,
        "actors": actors,
        "channels_last": False,
    }


# ---------------------------------------------------------------------------------------
# Mode 4: infer-run


def infer_run_spec(config: dict[str, Any], out: Path) -> dict[str, Any]:
    """The spec equivalent to the other modes: same files, recipe, model, batch size, top-5.

    With ``decode_on_device`` the model decodes, resizes and crops on its GPU with its own
    preprocessing (for resnet50's weights: resize 232, not 256) and no CPU stage runs.
    """
    spec = {
        "run": {"name": f"benchmark-compare-{config['model']}"},
        "reader": {"type": "image_parquet", "path": config["data"]},
        "preprocessors": [
            {
                "type": "image_transform",
                "from_model": "${models.0}",
                # from_model gives resnet50 its V2 weights' 232; pin the classic recipe.
                "resize_size": RESIZE,
                "crop_size": CROP,
            }
        ],
        "models": [
            {
                "type": "torchvision",
                "name": config["model"],
                "weights": "random",
                "device": config.get("device", "cpu"),
                "precision": config.get("precision", "fp32"),
                "resources": {"batch_size": int(config["batch_size"])},
            }
        ],
        "postprocessors": [{"type": "topk", "k": TOP_K, "from_model": "${models.0}"}],
        "writer": {"type": "parquet", "path": str(out)},
    }
    if config.get("decode_on_device"):
        spec["preprocessors"] = []
        spec["models"][0]["decode_on_device"] = True
    return spec


def run_infer_run(config: dict[str, Any]) -> dict[str, Any]:
    from framework.cli import main as cli_main

    workdir = Path(config["workdir"])
    spec_path = workdir / "infer-run-spec.yaml"
    report_path = workdir / "infer-run-report.json"
    # JSON is YAML; the spec loader reads it as written.
    spec_path.write_text(json.dumps(infer_run_spec(config, workdir / "infer-run-out"), indent=2))
    overrides = list(config.get("overrides", []))
    code = cli_main([str(spec_path), *overrides, "--report", str(report_path)])
    if code != 0:
        raise RuntimeError(f"infer-run exited with code {code}")
    report = json.loads(report_path.read_text())
    return {
        "rows": report["rows_written"],
        "rows_per_s": report["rows_per_s"],
        "wall_time_s": report["wall_time_s"],
        "spec": infer_run_spec(config, workdir / "infer-run-out"),
        "overrides": overrides,
        "summary": report_summary(report),
        "report": report,
    }


def report_summary(report: dict[str, Any]) -> dict[str, Any]:
    """Where infer-run's time went: per Ray Data operator and per spec stage."""
    return {
        "operators": [
            {
                k: op.get(k)
                for k in ("name", "rows_out", "start_s", "end_s", "wall_time_s", "task_time_s")
            }
            for op in report.get("operators", [])
        ],
        "stages": {
            path: {
                "batches": stage.get("batches"),
                "busy_s": stage.get("busy_s"),
                "first_start_s": stage.get("first_start_s"),
                "last_end_s": stage.get("last_end_s"),
                "batches_at_once": batches_at_once(stage),
                "workers": [
                    {k: w.get(k) for k in ("cpus", "torch_threads")}
                    for w in stage.get("workers", [])
                ],
            }
            for path, stage in report.get("stages", {}).items()
        },
    }


def batches_at_once(stage: dict[str, Any]) -> float | None:
    """How many of the stage's batches ran at once on average while it ran: for the CPU
    stages before a GPU model, how many cores decoding kept busy."""
    first, last = stage.get("first_start_s"), stage.get("last_end_s")
    if first is None or last is None or last <= first:
        return None
    return round(stage.get("busy_s", 0.0) / (last - first), 2)


RUNNERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "ceiling": run_ceiling,
    "loop": run_loop,
    "raydata": run_raydata,
    "infer-run": run_infer_run,
}


def worker_main(argv: Sequence[str]) -> int:
    """``_worker MODE CONFIG.json RESULT.json``: one mode, in this fresh interpreter."""
    mode, config_path, result_path = argv
    config = json.loads(Path(config_path).read_text())
    result = RUNNERS[mode](config)
    Path(result_path).write_text(json.dumps(result))
    return 0


# ---------------------------------------------------------------------------------------
# The driver: dataset, one subprocess per mode, table and JSON


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "infer-run" / "benchmarks"


def ensure_dataset(data: str | None, rows: int, seed: int) -> tuple[Path, int]:
    """The dataset's directory and row count; generated once per (rows, seed) in the cache.

    An explicit ``data`` directory holding parquet files is used whole, whatever ``rows``;
    a missing or empty one is filled with ``rows`` generated images.
    """
    from framework.datagen import generate

    if data is not None:
        path = Path(data)
        if not (path.is_dir() and parquet_files(path)):
            generate(path, rows, "parquet", seed)
        return path, count_rows(path)
    path = cache_root() / f"imagenet-like-{rows}-seed{seed}"
    # The marker sits beside the directory so no reader ever sees it as data.
    marker = path.with_name(f"{path.name}.json")
    wanted = {"rows": rows, "seed": seed, "format": "parquet"}
    if marker.is_file() and path.is_dir() and parquet_files(path):
        with contextlib.suppress(ValueError):
            if json.loads(marker.read_text()) == wanted and count_rows(path) == rows:
                return path, rows
    marker.unlink(missing_ok=True)
    generate(path, rows, "parquet", seed, overwrite=True)
    marker.write_text(json.dumps(wanted))
    return path, rows


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "torch": torch.__version__,
        "torch_threads_default": torch.get_num_threads(),
        "torchvision": torchvision.__version__,
        "ray": importlib.metadata.version("ray"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "niceness": os.nice(0),
        "ray_worker_niceness": child_env()[RAY_NICENESS_VARIABLE],
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    # Ray's workers must import this module to unpickle preprocess and Predictor.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env.pop("RAY_ADDRESS", None)  # both Ray modes start their own local cluster
    # Ray starts its workers at nice 15, the ceiling and loop run at the caller's niceness:
    # with anything else running, the Ray modes would get a fraction of the CPU the others
    # get and measure that load, not the pipeline. Every mode runs at one priority instead.
    env.setdefault(RAY_NICENESS_VARIABLE, "0")
    return env


def run_mode(
    mode: str, config: dict[str, Any], workdir: Path, log_path: Path, timeout: float
) -> dict[str, Any]:
    """Runs one mode in a fresh interpreter in the new ``workdir``; output goes to ``log_path``."""
    mode_dir = workdir
    mode_dir.mkdir(parents=True)
    config_path = mode_dir / "config.json"
    result_path = mode_dir / "result.json"
    config_path.write_text(json.dumps({**config, "workdir": str(mode_dir)}))
    command = [
        sys.executable,
        "-m",
        "benchmarks.compare",
        WORKER_COMMAND,
        mode,
        str(config_path),
        str(result_path),
    ]
    load = [round(v, 2) for v in os.getloadavg()]
    started = time.perf_counter()
    with log_path.open("w") as log:
        # A session of its own, so a timeout can stop the Ray processes the mode started too.
        process = subprocess.Popen(
            command,
            cwd=REPO,
            env=child_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return {"error": f"timed out after {timeout:g}s", "log": str(log_path)}
    process_wall = time.perf_counter() - started
    if code != 0 or not result_path.is_file():
        return {"error": f"exited with code {code}", "log": str(log_path)}
    result = json.loads(result_path.read_text())
    result.update(process_wall_s=process_wall, load_average_before=load, log=str(log_path))
    if mode != "ceiling" and result["rows"] != config["rows"]:
        result["error"] = f"wrote {result['rows']} rows, expected {config['rows']}"
    return result


def best_run(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest successful run, with every run's figures under ``runs``.

    The best of several is the least disturbed by other processes on a shared machine.
    A mode with any failed run keeps that run's ``error``, so the command still fails.
    """
    ok = [r for r in results if "error" not in r]
    failed = [r for r in results if "error" in r]
    best = dict(max(ok, key=lambda r: r["rows_per_s"]) if ok else failed[0])
    keys = ("rows_per_s", "wall_time_s", "load_average_before", "error", "log")
    best["runs"] = [{k: r[k] for k in keys if k in r} for r in results]
    if failed:
        best["error"] = failed[0]["error"]
    return best


def ratios(modes: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """infer-run's rows/s over each baseline's; None where a side did not run or failed."""

    def speed(mode: str) -> float | None:
        result = modes.get(mode) or {}
        return None if "error" in result else result.get("rows_per_s")

    ours = speed("infer-run")
    out: dict[str, float | None] = {}
    for base in TARGETS:
        theirs = speed(base)
        out[f"infer-run/{base}"] = round(ours / theirs, 3) if ours and theirs else None
    return out


def as_built_ratio(modes: dict[str, dict[str, Any]]) -> float | None:
    ceiling, ours = modes.get("ceiling") or {}, modes.get("infer-run") or {}
    if "error" in ceiling or "error" in ours or "as_built_rows_per_s" not in ceiling:
        return None
    if "rows_per_s" not in ours:
        return None
    return round(ours["rows_per_s"] / ceiling["as_built_rows_per_s"], 3)


def format_table(document: dict[str, Any]) -> str:
    config, machine, modes = document["config"], document["machine"], document["modes"]
    gpu = f" ({machine['gpu']})" if machine.get("gpu") else ""
    lines = [
        f"model {config['model']} (random weights, {config['precision']} on "
        f"{config['device']}{gpu}), "
        f"{config['rows']} rows, "
        f"batch {config['batch_size']}, best of {config['repeat']} round(s), "
        f"data {config['data']}",
        f"machine: {machine['cpu_model']}, {machine['cores']} cores "
        f"({machine['usable_cores']} usable), torch {machine['torch']} "
        f"({machine['torch_threads_default']} threads by default), ray {machine['ray']}, "
        f"load average {machine['load_average'][0]:g} at start",
        "",
        f"{'mode':<10} {'rows/s':>8} {'wall s':>8} {'process s':>9}  {'infer-run /':>11}  "
        f"{'target':>7}  notes",
    ]
    for mode in config["modes"]:
        result = modes[mode]
        if "error" in result:
            lines.append(
                f"{mode:<10} {'failed':>8} {'':>8} {'':>9}  {'':>11}  {'':>7}  {result['error']}"
            )
            continue
        ratio = document["ratios"].get(f"infer-run/{mode}")
        target = TARGETS.get(mode)
        ratio_text = f"{ratio:.2f}" if ratio is not None else "-"
        target_text = f">= {target:g}" if target is not None else ""
        process = result.get("process_wall_s")
        process_text = f"{process:.2f}" if process is not None else "-"
        lines.append(
            f"{mode:<10} {result['rows_per_s']:>8.2f} {result['wall_time_s']:>8.2f} "
            f"{process_text:>9}  {ratio_text:>11}  {target_text:>7}  {mode_notes(mode, result)}"
        )
    if document.get("ratio_to_ceiling_as_built") is not None:
        lines.append(
            f"infer-run / ceiling of the model as built (no batch norms folded): "
            f"{document['ratio_to_ceiling_as_built']:.2f}"
        )
    # The modes' clocks start once each has imported what it needs (and infer-run's once
    # Ray is up); the process column is what `time` around the whole command would say.
    lines.append(
        "rows/s and wall s: each mode's own clock; process s: its whole interpreter, "
        "imports, Ray's start and stop included"
    )
    return "\n".join(lines)


def mode_notes(mode: str, result: dict[str, Any]) -> str:
    if mode == "ceiling":
        return f"{result['torch_threads']} threads, {result['best']}, {result['batches']} batches"
    if mode == "loop":
        return f"{result['num_workers']} DataLoader worker(s), {result['torch_threads']} threads"
    if mode == "raydata":
        threads = sorted({a["torch_threads"] for a in result.get("actors", [])})
        return f"1 actor, torch threads {threads}, ray.init {result['ray_init_s']:.1f}s excluded"
    threads = sorted(
        {
            w["torch_threads"]
            for stage in result["summary"]["stages"].values()
            for w in stage["workers"]
            # GPU stages' workers and torch-free CPU ones (topk) report no thread count.
            if stage["batches"] and w.get("cpus", 0) >= 1 and w.get("torch_threads") is not None
        }
    )
    stages = result["summary"]["stages"]
    notes = [f"model torch threads {threads}"] if threads else []
    pre = stages.get("preprocessors[0]", {}).get("batches_at_once")
    if pre is not None:
        notes.append(f"preprocessing {pre:g} batches at once")
    return ", ".join(notes)


def loop_workers(args: argparse.Namespace) -> int:
    if args.loop_workers is not None:
        return int(args.loop_workers)
    return max(1, (os.cpu_count() or 2) - 1) if args.device == "cuda" else LOOP_WORKERS


def parse_modes(text: str) -> tuple[str, ...]:
    wanted = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in wanted if m not in MODES]
    if unknown or not wanted:
        raise argparse.ArgumentTypeError(
            f"unknown mode(s) {', '.join(unknown) or '(none)'}; choose from {','.join(MODES)}"
        )
    return tuple(m for m in MODES if m in wanted)  # always in the documented order


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.compare",
        description="Compare infer-run with a model-only ceiling, a PyTorch DataLoader loop "
        "and a hand-written Ray Data pipeline on the same images and model.",
    )
    p.add_argument("--rows", type=positive, default=500, help="images to classify")
    p.add_argument("--model", default="resnet18", help="torchvision model name (random init)")
    p.add_argument("--batch-size", type=positive, default=64, help="rows per forward pass")
    p.add_argument("--data", help="parquet dataset directory (default: a cached datagen set)")
    p.add_argument("--seed", type=int, default=0, help="datagen seed for the cached dataset")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write the figures")
    p.add_argument(
        "--only",
        type=parse_modes,
        default=MODES,
        help=f"comma-separated subset of {','.join(MODES)}",
    )
    p.add_argument(
        "--loop-workers",
        type=int,
        help=f"DataLoader num_workers for the loop mode (default {LOOP_WORKERS} on the CPU, "
        "all cores but one on CUDA)",
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where models run")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="autocast")
    p.add_argument(
        "--decode-on-device",
        action="store_true",
        help="infer-run decodes JPEGs on the GPU (nvjpeg) instead of in CPU stages",
    )
    p.add_argument(
        "--repeat",
        type=positive,
        default=1,
        help="rounds of all modes; each mode keeps its best rows/s",
    )
    p.add_argument("--timeout", type=float, default=MODE_TIMEOUT_S, help="seconds allowed per mode")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override in infer-run's spec, as on its command line (repeatable)",
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == WORKER_COMMAND:
        return worker_main(argv[1:])
    args = parse_args(argv)
    data, rows = ensure_dataset(args.data, args.rows, args.seed)
    files = parquet_files(data)
    config = {
        "model": args.model,
        "rows": rows,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "data": str(data.resolve()),
        "files": [str(f.resolve()) for f in files],
        "data_bytes": sum(f.stat().st_size for f in files),
        "loop_workers": loop_workers(args),
        "device": args.device,
        "decode_on_device": args.decode_on_device,
        "overrides": args.overrides,
        "modes": list(args.only),
        "repeat": args.repeat,
        "weights": "random",
        "precision": args.precision,
        "resize": RESIZE,
        "crop": CROP,
        "top_k": TOP_K,
    }
    machine = machine_info()
    json_path: Path = args.json
    json_path.parent.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in args.only}
    with tempfile.TemporaryDirectory(prefix="infer-run-compare-") as work:
        # Whole rounds, not one mode N times: load from other processes then hits every
        # mode alike instead of whichever happened to run during a busy spell.
        for round_index in range(args.repeat):
            for mode in args.only:
                name = f"{mode}-{round_index + 1}" if args.repeat > 1 else mode
                log_path = json_path.with_name(f"{json_path.stem}-{name}.log")
                print(f"[{name}] running (log: {log_path})", flush=True)
                result = run_mode(mode, config, Path(work) / name, log_path, args.timeout)
                runs[mode].append(result)
                outcome = result.get("error") or f"{result['rows_per_s']:.2f} rows/s"
                print(f"[{name}] {outcome}", flush=True)
    modes = {mode: best_run(results) for mode, results in runs.items()}
    figures = ratios(modes)
    document = {
        "schema_version": 1,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["python", "-m", "benchmarks.compare", *argv]),
        "config": config,
        "machine": {**machine, "load_average_end": [round(v, 2) for v in os.getloadavg()]},
        "modes": modes,
        "ratios": figures,
        # Against the definition of the ceiling: the model as built, no folding.
        "ratio_to_ceiling_as_built": as_built_ratio(modes),
        "targets": {f"infer-run/{base}": target for base, target in TARGETS.items()},
        "meets_targets": {
            key: (None if value is None else value >= TARGETS[key.split("/", 1)[1]])
            for key, value in figures.items()
        },
    }
    json_path.write_text(json.dumps(document, indent=2) + "\n")
    print()
    print(format_table(document))
    print(f"\nfigures: {json_path}")
    failed = [mode for mode, result in modes.items() if "error" in result]
    if failed:
        print(f"failed: {', '.join(failed)} (see the logs above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    # Run through the imported module, not __main__, so Ray pickles preprocess and
    # Predictor by reference and its workers import them from benchmarks.compare.
    from benchmarks.compare import main as _main

    sys.exit(_main())
