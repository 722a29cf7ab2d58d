"""Does the workers' GPU sampler see a busy GPU? A check for a real GPU machine.

    python benchmarks/gpu_usage_check.py [--gpu 0] [--seconds 3] [--min-busy 50]

Samples the GPU with ``framework.gpu_usage`` and its real NVML reader while torch keeps it
busy with fp16 matmuls, then prints the summary as JSON. Exits 1 when the busy % is under
``--min-busy`` or nothing was sampled, 2 when there is no NVML or CUDA to check with.
Needs torch and nvidia-ml-py only: the module is loaded from its file, so neither Ray nor
the rest of the framework has to be installed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from types import ModuleType

MODULE = Path(__file__).resolve().parents[1] / "framework" / "gpu_usage.py"


def load_gpu_usage() -> ModuleType:
    """framework/gpu_usage.py on its own: ``import framework`` would pull in its deps."""
    spec = importlib.util.spec_from_file_location("infer_run_gpu_usage", MODULE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", default="0", help="NVML index or UUID (default 0)")
    parser.add_argument("--seconds", type=float, default=3.0, help="how long to keep it busy")
    parser.add_argument("--min-busy", type=float, default=50.0, help="lowest busy %% that passes")
    args = parser.parse_args(argv)
    # cuda:N is NVML's index N only in PCI bus order (CUDA's default is fastest first).
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    if not args.gpu.startswith(("GPU-", "MIG-")):
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", args.gpu)
    gpu_usage = load_gpu_usage()
    read = gpu_usage.nvml_reader([args.gpu])
    if read is None:
        print(json.dumps({"error": f"NVML cannot read GPU {args.gpu}"}))
        return 2
    import torch

    if not torch.cuda.is_available():
        print(json.dumps({"error": "torch sees no CUDA device"}))
        return 2
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
    (a @ b).sum().item()  # CUDA context and cuBLAS ready before sampling starts
    sampler = gpu_usage.GpuSampler(read)
    sampler.start()
    matmuls, end = 0, time.monotonic() + args.seconds
    while time.monotonic() < end:
        for _ in range(8):
            c = a @ b
        c.sum().item()  # wait: never queue more than a few ms of work ahead of the clock
        matmuls += 8
    sampler.stop()
    summary = sampler.summary() or {"gpu_busy_pct": None, "gpu_samples": 0}
    print(
        json.dumps(
            {
                "gpu": args.gpu,
                "device": torch.cuda.get_device_name(0),
                "seconds": args.seconds,
                "matmuls": matmuls,
                **summary,
            }
        )
    )
    busy = summary["gpu_busy_pct"]
    return 0 if summary["gpu_samples"] and busy is not None and busy >= args.min_busy else 1


if __name__ == "__main__":
    sys.exit(main())
