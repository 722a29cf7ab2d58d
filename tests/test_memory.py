"""Memory accounting and the allocator policy that keeps long runs flat."""

from __future__ import annotations

import mmap
import os
import subprocess
import sys
import time
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any

import psutil

from framework.allocator import WORKER_ENV, hold_freed_memory, release_free_memory, worker_env
from framework.memory import _memory


def test_shared_memory_is_not_counted_per_process() -> None:
    # The object store lives in /dev/shm and is counted once from there; a worker that maps
    # an object must not count it again.
    me = psutil.Process()
    before = _memory(me)
    block = shared_memory.SharedMemory(create=True, size=64 * 1024**2)
    try:
        block.buf[:] = b"\x01" * block.size  # touch every page
        assert me.memory_full_info().pss - before > 48 * 1024**2  # PSS alone counts it
        assert _memory(me) - before < 16 * 1024**2
    finally:
        block.close()
        block.unlink()


def test_release_free_memory_returns_freed_pages() -> None:
    code = """
import ctypes, psutil
from framework.allocator import release_free_memory
libc = ctypes.CDLL("libc.so.6")
libc.mallopt(-3, 64 * 1024 * 1024)  # keep 4 MB blocks on the heap
libc.mallopt(-1, 1024**3)  # and no trimming but ours
blocks = [bytearray(4 * 1024 * 1024) for _ in range(64)]
for b in blocks[:-1]:
    b[:] = b"x" * len(b)
held = psutil.Process().memory_info().rss
del blocks[:-1]
release_free_memory()
print(held - psutil.Process().memory_info().rss)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(done.stdout) > 128 * 1024**2, done.stdout


FAULTS_PER_FORWARD = """
import resource, sys
import torch
from framework.allocator import hold_freed_memory
if sys.argv[1] == "hold":
    hold_freed_memory()
torch.set_num_threads(1)
conv = torch.nn.Conv2d(3, 64, 7, stride=2, padding=3)  # ResNet's stem: 100 MB out at batch 32
images = torch.randn(32, 3, 224, 224)
with torch.inference_mode():
    conv(images)  # the first output is new memory either way
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        conv(images)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 3)
"""


def test_held_memory_is_reused_without_page_faults() -> None:
    """A model actor's activations: the same big blocks, allocated and freed every batch."""

    def faults(mode: str) -> int:
        command = [sys.executable, "-c", FAULTS_PER_FORWARD, mode]
        return int(subprocess.run(command, capture_output=True, text=True, check=True).stdout)

    pages = 32 * 64 * 112 * 112 * 4 // 4096
    assert faults("default") > pages // 2  # glibc mmaps each output afresh: a fault per page
    assert faults("hold") < pages // 100
    hold_freed_memory()  # and it is harmless in a process that already allocated
    release_free_memory()


def test_worker_env_yields_to_the_user(monkeypatch) -> None:
    name = "MALLOC_MMAP_THRESHOLD_"
    monkeypatch.delenv(name, raising=False)
    assert worker_env()[name] == WORKER_ENV[name]
    assert worker_env({name: "4096"})[name] == "4096"  # ray.runtime_env.env_vars
    monkeypatch.setenv(name, "8192")  # the driver's own environment
    assert name not in worker_env()
    assert os.environ[name] == "8192"


def test_local_workers_get_the_allocator_env_and_the_driver_keeps_its_own(ray_session) -> None:
    import ray

    @ray.remote(num_cpus=0)
    def worker_env_values() -> dict[str, str | None]:
        return {name: os.environ.get(name) for name in WORKER_ENV}

    seen = ray.get(worker_env_values.remote())
    for name, value in WORKER_ENV.items():
        if name not in os.environ:  # a value the developer set wins, and is tested above
            assert seen[name] == value, name
    assert os.environ.get("MALLOC_MMAP_THRESHOLD_") != WORKER_ENV["MALLOC_MMAP_THRESHOLD_"]


def test_sampler_catches_a_peak_that_comes_after_its_start() -> None:
    import time

    from framework.memory import MemorySampler

    with MemorySampler(interval=0.05) as sampler:
        start = sampler.peak_rss
        block = bytearray(256 * 1024**2)
        block[:] = b"\x01" * len(block)  # touched: resident, private
        time.sleep(0.3)
        del block
    assert sampler.figures()["peak_process_rss_bytes"] - start > 200 * 1024**2


def test_idle_task_workers_outlive_a_runs_actors(ray_session, tmp_path) -> None:
    """Ray counts actors against its idle-worker limit. With a run's actors alive, a task
    worker idle for a moment must stay, not be killed and started again (importing torch
    again, mid-run) for the next task."""
    import ray

    @ray.remote(num_cpus=0)
    class Held:  # Ray Data's own actors, the run log, the models
        def pid(self) -> int:
            return os.getpid()

    @ray.remote(num_cpus=0.25)
    def task_pid(arrived: str, tasks: int) -> int:
        # A barrier, not a sleep: no task ends before all have started, so Ray cannot hand
        # a finished task's worker to the next one, however slowly the others start.
        (Path(arrived) / str(os.getpid())).touch()
        deadline = time.monotonic() + 120
        while len(os.listdir(arrived)) < tasks:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {os.listdir(arrived)} of {tasks} tasks started")
            time.sleep(0.05)
        return os.getpid()

    held = [Held.remote() for _ in range(6)]
    try:
        ray.get([actor.pid.remote() for actor in held])
        workers = set(ray.get([task_pid.remote(str(tmp_path), 4) for _ in range(4)]))
        assert len(workers) == 4
        time.sleep(3)  # Ray kills idle workers above its limit after 1 s
        alive = [
            p for p in workers if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
        ]
        assert len(alive) == len(workers)
    finally:
        for actor in held:
            ray.kill(actor)


def test_a_local_ray_starts_no_usage_actor_for_ray_data(ray_session, monkeypatch) -> None:
    """Ray Data's usage actor is one more process starting beside the model; the local Ray
    infer-run starts goes without it even where Ray's usage stats are on."""
    import ray
    import ray.data
    from ray.data._internal.usage import collector

    monkeypatch.setattr(collector, "usage_stats_enabled", lambda: True)
    assert ray.data.range(10).map_batches(lambda b: b).count() == 10
    names = {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)}
    assert "DataUsageCollectionActor" not in names


def _touch(buffer: Any, size: int) -> None:
    """Every page of ``buffer`` made resident, without a temporary copy of its size."""
    chunk = b"\x01" * 1024**2
    for at in range(0, size, len(chunk)):
        buffer[at : at + len(chunk)] = chunk


def test_a_peak_after_shared_memory_was_let_go_is_still_caught(monkeypatch) -> None:
    # Object-store pages a process maps are in its resident total but not in the peak
    # (counted once, from /dev/shm): the high they set hid a later, smaller private peak.
    from framework import memory

    me = psutil.Process()
    monkeypatch.setattr(memory, "_run_processes", lambda: [me])  # not a session's Ray
    sampler = memory.MemorySampler()
    sampler._sample()
    start = sampler.peak_rss
    block = shared_memory.SharedMemory(create=True, size=256 * 1024**2)
    try:
        _touch(block.buf, block.size)
        sampler._sample()
    finally:
        block.close()
        block.unlink()
    # Fresh pages of its own (not malloc's: another test here holds freed memory).
    private = mmap.mmap(-1, 160 * 1024**2, flags=mmap.MAP_PRIVATE)
    _touch(private, len(private))
    sampler._sample()
    private.close()
    assert sampler.figures()["peak_process_rss_bytes"] - start > 128 * 1024**2
