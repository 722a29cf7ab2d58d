"""INFER_PROFILE_STAGES: each stage worker writes a pstats file of its batches."""

from __future__ import annotations

import pickle
import pstats

import numpy as np

from framework.stage_profile import PROFILE_ENV
from framework.worker import StageRunner


class Doubler:
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch["x"] = batch["x"] * 2
        return batch


def batch() -> dict[str, np.ndarray]:
    return {"id": np.array(["a", "b"]), "x": np.arange(2)}


def test_each_stage_worker_writes_a_profile_of_its_batches(tmp_path, monkeypatch):
    monkeypatch.setenv(PROFILE_ENV, str(tmp_path / "prof"))
    runner = StageRunner("preprocessors[0]", Doubler, {})
    assert runner(batch())["x"].tolist() == [0, 2]
    [written] = (tmp_path / "prof").iterdir()
    assert written.name.startswith("preprocessors_0_-") and written.suffix == ".prof"
    called = {name for (_, _, name) in pstats.Stats(str(written)).stats}
    assert "__call__" in called and "checked_call" in called


def test_without_the_variable_nothing_is_profiled(tmp_path, monkeypatch):
    monkeypatch.delenv(PROFILE_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    runner = StageRunner("preprocessors[0]", Doubler, {})
    assert runner(batch())["x"].tolist() == [0, 2]
    assert runner.profile.profile is None and not list(tmp_path.iterdir())


def test_a_runner_that_profiled_still_pickles_for_the_next_worker(tmp_path, monkeypatch):
    monkeypatch.setenv(PROFILE_ENV, str(tmp_path / "prof"))
    runner = StageRunner("preprocessors[0]", Doubler, {})
    runner(batch())
    copy = pickle.loads(pickle.dumps(runner.profile))
    assert copy.stage_path == "preprocessors[0]" and copy.profile is None
