"""A model that reports, per row, what its worker was given: threads, GPUs, CUDA state, node."""

from __future__ import annotations

import os
import time

import numpy as np
import ray
import ray.data
import torch

import framework
from framework import Batch, Model, Preprocessor, hookimpl


class Probe(Model):
    output_columns = {"threads": "int64", "gpu_ids": "object", "cuda_initialized": "bool"}

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s

    def __call__(self, batch: Batch) -> Batch:
        if self.delay_s:
            time.sleep(self.delay_s)
        n = len(batch["id"])
        batch["threads"] = np.full(n, torch.get_num_threads(), dtype=np.int64)
        ids = ",".join(str(g) for g in ray.get_gpu_ids())
        batch["gpu_ids"] = np.array([ids] * n, dtype=object)
        batch["cuda_initialized"] = np.full(n, torch.cuda.is_initialized())
        batch["node_id"] = np.array([ray.get_runtime_context().get_node_id()] * n, dtype=object)
        batch["pid"] = np.full(n, os.getpid(), dtype=np.int64)
        # Where this worker imported infer-run from (ray.ship_code uploads a copy).
        batch["framework_file"] = np.array([framework.__file__] * n, dtype=object)
        batch["probe_file"] = np.array([__file__] * n, dtype=object)
        return batch


class SlowCopy(Preprocessor):
    """A CPU stage stand-in that takes time, so stage overlap is visible."""

    def __init__(self, delay_s: float = 0.05) -> None:
        self.delay_s = delay_s

    def __call__(self, batch: Batch) -> Batch:
        time.sleep(self.delay_s)
        batch["pre_node_id"] = np.array(
            [ray.get_runtime_context().get_node_id()] * len(batch["id"]), dtype=object
        )
        return batch


class ContextProbe(Preprocessor):
    """Reports the Ray Data setting ``key`` as the worker running it sees it."""

    def __init__(self, key: str) -> None:
        self.key = key

    def __call__(self, batch: Batch) -> Batch:
        value = getattr(ray.data.DataContext.get_current(), self.key)
        batch["context_value"] = np.array([repr(value)] * len(batch["id"]), dtype=object)
        return batch


@hookimpl
def register_models(register):
    register("probe", Probe)


@hookimpl
def register_preprocessors(register):
    register("slow_copy", SlowCopy)
    register("context_probe", ContextProbe)
