"""``python -m benchmarks.compare`` end to end at a tiny size: every figure is recorded.

No timing is asserted: throughput on a shared CI machine says nothing; the benchmark is
run for real by hand (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import compare

REPO = Path(__file__).resolve().parent.parent
MODES = ("ceiling", "loop", "raydata", "infer-run")
RATIOS = ("infer-run/ceiling", "infer-run/loop", "infer-run/raydata")


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(600)
def test_compare_records_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "results" / "tiny.json"
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    command = [
        sys.executable,
        "-m",
        "benchmarks.compare",
        "--rows",
        "32",
        "--model",
        "resnet18",
        "--batch-size",
        "16",
        "--json",
        str(out),
        "--set",
        "run.name=tiny-override",
    ]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=580)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    doc = json.loads(out.read_text())
    # The cached dataset was generated, with its marker beside it, not inside it.
    data = Path(doc["config"]["data"])
    assert data.parent == tmp_path / "cache" / "infer-run" / "benchmarks"
    assert data.with_name(f"{data.name}.json").is_file()
    assert doc["config"]["rows"] == 32
    assert doc["config"]["batch_size"] == 16
    assert doc["config"]["model"] == "resnet18"
    assert doc["config"]["modes"] == list(MODES)
    assert doc["config"]["repeat"] == 1
    assert doc["config"]["device"] == "cpu"
    assert doc["config"]["precision"] == "fp32"

    machine = doc["machine"]
    assert machine["cpu_model"]
    assert machine["cores"] >= 1
    assert machine["torch"]
    assert machine["torch_threads_default"] >= 1

    for mode in MODES:
        result = doc["modes"][mode]
        assert "error" not in result, result
        assert result["rows_per_s"] > 0
        assert result["wall_time_s"] > 0
        assert result["process_wall_s"] >= result["wall_time_s"]
        assert Path(result["log"]).is_file()
        assert [r["rows_per_s"] for r in result["runs"]] == [result["rows_per_s"]]
    for mode in ("loop", "raydata", "infer-run"):
        assert doc["modes"][mode]["rows"] == 32

    ceiling = doc["modes"]["ceiling"]
    assert ceiling["rows"] >= 32
    assert isinstance(ceiling["channels_last"], bool)
    assert set(ceiling["variants"]) == {
        f"{layout}, {model}"
        for layout in ("contiguous", "channels_last")
        for model in ("as built", "batch norms folded, memory held")
    }
    assert ceiling["best"] in ceiling["variants"]
    assert 0 < ceiling["as_built_rows_per_s"] <= ceiling["rows_per_s"]
    assert doc["ratio_to_ceiling_as_built"] >= doc["ratios"]["infer-run/ceiling"]
    assert ceiling["torch_threads"] == os.cpu_count()

    raydata = doc["modes"]["raydata"]
    assert len(raydata["actors"]) == 1
    assert raydata["actors"][0]["torch_threads"] >= 1

    infer_run = doc["modes"]["infer-run"]
    report = infer_run["report"]
    assert report["status"] == "ok"
    assert report["rows_written"] == 32
    assert infer_run["wall_time_s"] == report["wall_time_s"]
    # --set reached infer-run's spec and only it.
    assert doc["config"]["overrides"] == infer_run["overrides"] == ["run.name=tiny-override"]
    assert report["name"] == "tiny-override"
    assert infer_run["summary"]["operators"]
    assert "models[0]" in infer_run["summary"]["stages"]
    assert infer_run["summary"]["stages"]["preprocessors[0]"]["batches_at_once"] > 0

    for key in RATIOS:
        assert doc["ratios"][key] > 0
        assert doc["targets"][key] > 0
        assert isinstance(doc["meets_targets"][key], bool)
    # The table was printed with the ratios.
    assert "infer-run /" in done.stdout
    assert machine["cpu_model"] in done.stdout


def test_modes_are_parsed_in_the_documented_order() -> None:
    assert compare.parse_modes("infer-run, ceiling") == ("ceiling", "infer-run")
    with pytest.raises(argparse.ArgumentTypeError, match="unknown mode"):
        compare.parse_modes("ceiling,spark")


def test_ratios_leave_out_missing_or_failed_modes() -> None:
    modes = {
        "ceiling": {"rows_per_s": 100.0},
        "loop": {"error": "exited with code 1"},
        "infer-run": {"rows_per_s": 50.0},
    }
    assert compare.ratios(modes) == {
        "infer-run/ceiling": 0.5,
        "infer-run/loop": None,
        "infer-run/raydata": None,
    }


def test_the_table_shows_each_modes_whole_process_time_beside_its_own_clock() -> None:
    document = {
        "config": {
            "model": "resnet50",
            "precision": "bf16",
            "device": "cuda",
            "rows": 40000,
            "batch_size": 256,
            "repeat": 1,
            "data": "/data",
            "modes": ["loop", "infer-run"],
        },
        "machine": {
            "cpu_model": "Xeon",
            "cores": 16,
            "usable_cores": 16,
            "torch": "2.11",
            "torch_threads_default": 16,
            "ray": "2.60",
            "load_average": [4.0],
        },
        "modes": {
            "loop": {
                "rows_per_s": 1667.79,
                "wall_time_s": 23.98,
                "process_wall_s": 34.93,
                "num_workers": 15,
                "torch_threads": 1,
            },
            "infer-run": {"error": "timed out after 155s"},
        },
        "ratios": {"infer-run/loop": None},
    }
    table = compare.format_table(document)
    assert "process s" in table.splitlines()[3]
    loop_row = next(line for line in table.splitlines() if line.startswith("loop"))
    assert loop_row.split()[:4] == ["loop", "1667.79", "23.98", "34.93"]
    failed_row = next(line for line in table.splitlines() if line.startswith("infer-run"))
    assert failed_row.split()[:2] == ["infer-run", "failed"]


def test_best_run_keeps_the_fastest_and_lists_every_run() -> None:
    results = [
        {"rows_per_s": 10.0, "wall_time_s": 5.0, "log": "a"},
        {"rows_per_s": 12.0, "wall_time_s": 4.0, "log": "b"},
    ]
    best = compare.best_run(results)
    assert best["rows_per_s"] == 12.0 and best["log"] == "b"
    assert [r["rows_per_s"] for r in best["runs"]] == [10.0, 12.0]
    assert "error" not in best
    failed = compare.best_run([*results, {"error": "timed out after 5s", "log": "c"}])
    assert failed["rows_per_s"] == 12.0 and failed["error"] == "timed out after 5s"


def test_cached_dataset_is_reused_for_the_same_rows_and_seed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path, rows = compare.ensure_dataset(None, 3, 0)
    assert rows == 3 and compare.count_rows(path) == 3
    stamp = compare.parquet_files(path)[0].stat().st_mtime_ns
    again, _ = compare.ensure_dataset(None, 3, 0)
    assert again == path
    assert compare.parquet_files(path)[0].stat().st_mtime_ns == stamp
    other, _ = compare.ensure_dataset(None, 3, 1)
    assert other != path and compare.count_rows(other) == 3
    # A stale marker (an interrupted generation) makes it generate again.
    path.with_name(f"{path.name}.json").write_text('{"rows": 4}')
    compare.ensure_dataset(None, 3, 0)
    assert json.loads(path.with_name(f"{path.name}.json").read_text())["rows"] == 3


@pytest.mark.slow
def test_the_gpu_session_script_runs_the_steps_asked_for_and_packs_them(tmp_path: Path) -> None:
    """benchmarks/device/session.sh's own machinery, here without a GPU: the chosen steps
    run, each gets a line in run.log, and their logs come back packed."""
    root = Path(__file__).resolve().parents[1]
    env = {
        **os.environ,
        "OUT": str(tmp_path),
        "DEVICE": "cpu",
        "ROWS": "8",
        "SKIP_BUNDLE": "1",
        "PY": sys.executable,
        "STEPS": "import_cold,datagen",
        "TMPDIR": str(tmp_path),
    }
    done = subprocess.run(
        ["bash", str(root / "benchmarks/device/session.sh")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    log = (tmp_path / "run.log").read_text()
    assert "import_cold: exit 0 torch+torchvision import" in log
    assert "datagen: exit 0 datagen: 8 rows (parquet, seed 0)" in log
    assert "loop_vs_infer" not in log and "all done" in log
    listing = subprocess.run(
        ["tar", "-tzf", str(tmp_path / "res.tgz")], capture_output=True, text=True, check=True
    )
    assert {"./import_cold.log", "./datagen.log"} <= set(listing.stdout.split())
