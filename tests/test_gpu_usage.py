"""GPU busy % sampled in the workers: the sampler driven by injected readers, and the
figures' way through the run's StageLog into the report. No GPU needed."""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

from framework import worker
from framework.gpu_usage import GpuSampler, nvml_reader
from framework.report import gpu_busy, stage_figures
from framework.telemetry import StageLog
from framework.worker import StageRunner

GIB = 1024**3
WAIT = 30.0  # only ever waited out on failure


class Feed:
    """A reader that hands out queued readings, one per sample, then reads nothing."""

    def __init__(self, *readings: list[tuple[float, int]]) -> None:
        self.readings = list(readings)
        self.calls = 0
        self.drained = threading.Event()
        self.called = threading.Event()
        self.lock = threading.Lock()

    def add(self, *readings: list[tuple[float, int]]) -> None:
        with self.lock:
            self.readings.extend(readings)
            self.drained.clear()

    def __call__(self) -> list[tuple[float, int]]:
        with self.lock:
            self.calls += 1
            self.called.set()
            if self.readings:
                return self.readings.pop(0)
            self.drained.set()
            return []


def drain(sampler: GpuSampler, feed: Feed) -> None:
    sampler.start()
    assert feed.drained.wait(WAIT), "the sampler never read every queued reading"


def test_busy_is_the_mean_over_samples_and_gpus_and_memory_the_peak_sum() -> None:
    feed = Feed(
        [(100.0, 1 * GIB), (0.0, 2 * GIB)],  # 50 %, 3 GiB
        [(80.0, 4 * GIB), (60.0, 1 * GIB)],  # 70 %, 5 GiB
        [(0.0, 1 * GIB), (30.0, 1 * GIB)],  # 15 %, 2 GiB
    )
    sampler = GpuSampler(feed, interval=0.001)
    drain(sampler, feed)
    sampler.stop()
    assert sampler.summary() == {
        "gpu_busy_pct": 45.0,
        "gpu_memory_peak_bytes": 5 * GIB,
        "gpu_samples": 3,
    }


def test_nothing_is_sampled_before_the_first_batch_starts_it() -> None:
    feed = Feed([(90.0, GIB)])
    sampler = GpuSampler(feed, interval=0.001)
    assert not feed.called.wait(0.2)
    assert sampler.summary() is None
    drain(sampler, feed)
    assert sampler.summary() == {
        "gpu_busy_pct": 90.0,
        "gpu_memory_peak_bytes": GIB,
        "gpu_samples": 1,
    }
    sampler.stop()


def test_stop_joins_the_thread_and_sampling_stays_stopped() -> None:
    feed = Feed([(40.0, GIB)])
    sampler = GpuSampler(feed, interval=0.001)
    drain(sampler, feed)
    sampler.stop()
    thread = sampler._thread
    assert thread is not None and not thread.is_alive()
    calls = feed.calls
    feed.add([(100.0, 8 * GIB)])
    sampler.start()  # a late batch must not restart it
    assert sampler._thread is thread
    assert feed.calls == calls
    assert sampler.summary() == {
        "gpu_busy_pct": 40.0,
        "gpu_memory_peak_bytes": GIB,
        "gpu_samples": 1,
    }


def test_an_idle_worker_stops_sampling_until_its_next_batch() -> None:
    feed = Feed([(70.0, GIB)])
    sampler = GpuSampler(feed, interval=0.001, idle_s=0.0)
    sampler.start()
    assert sampler._thread is not None
    sampler._thread.join(WAIT)
    assert not sampler._thread.is_alive()
    assert feed.calls == 0 and sampler.summary() is None


def test_a_reader_that_fails_ends_sampling_quietly_keeping_what_it_had() -> None:
    readings = iter([[(20.0, GIB)], [(60.0, 3 * GIB)]])

    def read() -> list[tuple[float, int]]:
        return next(readings)  # StopIteration on the third call, like an NVMLError would

    sampler = GpuSampler(read, interval=0.001)
    sampler.start()
    assert sampler._thread is not None
    sampler._thread.join(WAIT)
    assert not sampler._thread.is_alive()
    assert sampler.read is None
    assert sampler.summary() == {
        "gpu_busy_pct": 40.0,
        "gpu_memory_peak_bytes": 3 * GIB,
        "gpu_samples": 2,
    }


def test_without_nvml_the_real_reader_is_none_and_the_sampler_a_no_op(monkeypatch) -> None:
    # An id no machine has: None with or without a driver (none on CI: nvmlInit fails).
    assert nvml_reader(["4096"]) is None
    assert nvml_reader([]) is None
    monkeypatch.setitem(sys.modules, "pynvml", None)  # nvidia-ml-py not installed
    assert nvml_reader(["0"]) is None
    sampler = GpuSampler(nvml_reader(["0"]), interval=0.001)
    sampler.start()
    assert sampler._thread is None
    assert sampler.summary() is None
    sampler.stop()


class Handle:
    """Calls a plain StageLog the way a worker calls the actor: ``handle.method.remote``."""

    def __init__(self, target: Any) -> None:
        self.target = target

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.target, name)
        return type("Method", (), {"remote": staticmethod(method)})


def stage_log() -> Any:
    return StageLog.__ray_actor_class__("preprocessors[0]")


def test_workers_push_new_figures_at_most_every_push_interval(monkeypatch) -> None:
    log = stage_log()
    runner = StageRunner("models[0]", object, {}, log=Handle(log))
    assert runner._push_gpu("n1") == []  # no GPU granted: nothing to send
    feed = Feed([(50.0, GIB)])
    runner.gpu = GpuSampler(feed, interval=0.001)
    monkeypatch.setattr(worker, "GPU_PUSH_S", 3600.0)
    assert runner._push_gpu("n1") == []  # started, but no sample yet
    drain(runner.gpu, feed)
    assert len(runner._push_gpu("n1")) == 1  # the first figures go at once
    pid = os.getpid()
    expected = {"node_id": "n1", "pid": pid, "gpu_busy_pct": 50.0}
    assert log.snapshot()["models[0]"]["workers"][f"n1:{pid}"].items() >= expected.items()
    feed.add([(100.0, 2 * GIB)])
    drain(runner.gpu, feed)
    assert runner._push_gpu("n1") == []  # new samples, but within the interval
    monkeypatch.setattr(worker, "GPU_PUSH_S", 0.0)
    assert len(runner._push_gpu("n1")) == 1
    assert runner._push_gpu("n1") == []  # nothing new since
    runner.gpu.stop()
    figures = log.snapshot()["models[0]"]["workers"][f"n1:{pid}"]
    assert figures["gpu_busy_pct"] == 75.0 and figures["gpu_samples"] == 2
    assert figures["gpu_memory_peak_bytes"] == 2 * GIB


def test_report_has_each_gpu_stages_mean_busy_and_each_workers_figures() -> None:
    log = stage_log()
    for stage, pid, gpus in [
        ("preprocessors[0]", 1, 0.0),
        ("models[0]", 2, 1.0),
        ("models[0]", 3, 1.0),
    ]:
        log.worker(stage, {"node_id": "n1", "pid": pid, "gpus": gpus, "gpu_ids": []})
        log.record(stage, "n1", 10.0, 11.0, 8, 8)
    summary = {"gpu_memory_peak_bytes": 4 * GIB, "gpu_samples": 5}
    log.gpu("models[0]", "n1", 2, {**summary, "gpu_busy_pct": 20.0})
    log.gpu("models[0]", "n1", 2, {**summary, "gpu_busy_pct": 90.0})  # replaces the last
    log.gpu("models[0]", "n1", 3, {**summary, "gpu_busy_pct": 40.0, "gpu_samples": 7})
    stages = gpu_busy(stage_figures(log.snapshot(), origin=9.0, nodes={}))
    model, pre = stages["models[0]"], stages["preprocessors[0]"]
    assert model["gpu_busy_pct"] == 65.0
    assert [
        (w["pid"], w["gpus"], w["gpu_busy_pct"], w["gpu_samples"]) for w in model["workers"]
    ] == [
        (2, 1.0, 90.0, 5),
        (3, 1.0, 40.0, 7),
    ]
    assert {w["gpu_memory_peak_bytes"] for w in model["workers"]} == {4 * GIB}
    assert "gpu_busy_pct" not in pre
    assert not any("gpu_samples" in w for w in pre["workers"])


def test_a_gpu_stage_without_samples_has_no_busy_figure() -> None:
    log = stage_log()
    log.worker("models[0]", {"node_id": "n1", "pid": 2, "gpus": 1.0, "gpu_ids": ["0"]})
    log.record("models[0]", "n1", 10.0, 11.0, 8, 8)
    stages = gpu_busy(stage_figures(log.snapshot(), origin=9.0, nodes={}))
    assert "gpu_busy_pct" not in stages["models[0]"]
    assert stages["models[0]"]["workers"][0]["gpu_ids"] == ["0"]
