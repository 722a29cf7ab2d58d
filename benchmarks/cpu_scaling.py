"""How infer-run's image preprocessing scales with the processes running it at once.

    python -m benchmarks.cpu_scaling --data DIR [--rows 512] [--processes 1,4,8,15]

Each of P processes (one torch thread each, no Ray) decodes, resizes and crops the same
``rows`` images of the dataset's first parquet file with the ``image_transform`` stage, all
P starting together. It prints the milliseconds per image per process and the images/s
of all P together: on a machine whose cores share execution units (hyper-threads) or
memory bandwidth, the cost per image grows with P, and that, not the pipeline, bounds
what the CPU stages before a GPU can feed it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from pathlib import Path
from typing import Any

BATCH = 256


def _worker(data: str, rows: int, start: Any, out: Any) -> None:
    import pyarrow.parquet as pq
    import torch

    from plugins.vision import ImageTransform

    torch.set_num_threads(1)
    first = sorted(Path(data).glob("*.parquet"))[0]
    table = pq.read_table(first, columns=["id", "image"]).slice(0, rows)
    batch = {"id": table["id"].to_numpy(), "image": table["image"].to_numpy(zero_copy_only=False)}
    stage = ImageTransform(resize_size=256, crop_size=224)
    stage({k: v[:8] for k, v in batch.items()})  # warm-up: first-call costs out of the timing
    start.wait()
    began = time.perf_counter()
    for i in range(0, rows, BATCH):
        stage({k: v[i : i + BATCH] for k, v in batch.items()})
    out.put(time.perf_counter() - began)


def measure(data: str, rows: int, processes: int) -> dict[str, float]:
    context = mp.get_context("spawn")
    start, out = context.Barrier(processes), context.Queue()
    workers = [
        context.Process(target=_worker, args=(data, rows, start, out)) for _ in range(processes)
    ]
    for w in workers:
        w.start()
    seconds = [out.get(timeout=600) for _ in workers]
    for w in workers:
        w.join()
    return {
        "processes": processes,
        "ms_per_image": round(1000 * sum(seconds) / len(seconds) / rows, 3),
        "images_per_s": round(processes * rows / max(seconds), 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cpu_scaling", description=__doc__)
    p.add_argument("--data", required=True, help="a datagen parquet dataset directory")
    p.add_argument("--rows", type=int, default=512, help="images per process")
    p.add_argument("--processes", default="1,4,8,15", help="comma-separated process counts")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    figures = [measure(args.data, args.rows, int(n)) for n in args.processes.split(",")]
    for f in figures:
        print(
            f"{f['processes']:>3} processes: {f['ms_per_image']:.2f} ms per image each, "
            f"{f['images_per_s']:.0f} images/s together",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
