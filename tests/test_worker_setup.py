"""torch's threads in a Ray worker follow the CPUs its stage was granted."""

from __future__ import annotations

import pytest
import ray

from framework.worker_setup import match_torch_threads

pytestmark = pytest.mark.ray


@ray.remote(num_cpus=0)
def _threads_granted_no_cpu() -> tuple[int | None, int]:
    import torch

    torch.set_num_threads(3)  # what a stage granted 3 CPUs left in this reused worker
    return match_torch_threads(), torch.get_num_threads()


def test_a_stage_granted_no_cpu_gets_one_torch_thread(ray_session):
    # README: as many threads as CPUs granted, at least 1 (a postprocessor after a GPU
    # model asks for none); it kept the 3 threads of the worker's previous stage.
    assert ray.get(_threads_granted_no_cpu.remote()) == (1, 1)


def test_outside_a_worker_torch_keeps_its_threads():
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    assert match_torch_threads() == before
    assert torch.get_num_threads() == before
