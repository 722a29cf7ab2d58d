"""``infer-run bench`` and ``pytest --infer-specs``: spec-driven throughput tests.

No timing is asserted: the expectations here are either trivially met (a ratio of
0.0001) or impossible (1000), so only the mechanics are tested, never this machine.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf

from framework.bench import _time_models, evaluate, figures
from framework.cli import main
from framework.components import ID_COLUMN, Batch, Model
from framework.errors import ExitCode, SpecError
from framework.plan import MapNode
from framework.plugins import load_registry
from framework.spec import load_spec, validate_spec
from framework.spec.schema import BenchmarkSection, Resources, StageConfig

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parent.parent
MET = {"min_model_ratio": 0.0001, "max_outside_model_share": 1.0}
EXTRA_INFO = ("rows_per_s", "model_only_rows_per_s", "model_ratio", "outside_model_share")


def echo_spec(data: Path, benchmark: dict[str, Any] | None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "reader": {"type": "parquet", "path": str(data)},
        "models": [{"type": "echo", "delay_s": 0.01, "resources": {"batch_size": 16}}],
        "writer": {"type": "parquet", "path": str(data.parent / "never-written")},
    }
    if benchmark is not None:
        spec["benchmark"] = benchmark
    return spec


def write_spec(path: Path, spec: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(spec), path)
    return path


@pytest.fixture
def table(tmp_path: Path) -> Path:
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(64)], "x": list(range(64))}), path)
    return path


def test_benchmark_block_is_validated(table: Path, tmp_path: Path) -> None:
    bad = {
        "rounds": 0,
        "sample_rows": 0,
        "min_model_ratio": -1,
        "max_outside_model_share": 1.5,
        "floors": {"ci": 0},
        "round": 2,
    }
    path = write_spec(tmp_path / "bad.yaml", echo_spec(table, bad))
    with pytest.raises(SpecError) as caught:
        validate_spec(load_spec(path), load_registry(), str(path))
    assert caught.value.problems == [
        "benchmark.round: unknown key - did you mean 'rounds'?",
        "benchmark.rounds: must be at least 1, got 0",
        "benchmark.sample_rows: must be at least 1, got 0",
        "benchmark.min_model_ratio: must be positive, got -1.0",
        "benchmark.max_outside_model_share: must be between 0 and 1, got 1.5",
        "benchmark.floors.ci: must be positive rows/s, got 0.0",
    ]


def test_figures_count_every_actor_of_the_model_pools() -> None:
    report = {
        "rows_per_s": 40.0,
        "rows_written": 80,
        "wall_time_s": 2.0,
        "stages": {
            "preprocessors[0]": {"busy_s": 0.5, "rows_in": 80, "workers": []},
            "models[0]": {"busy_s": 1.0, "rows_in": 80, "workers": [{"pid": 1}, {"pid": 2}]},
        },
    }
    got = figures(report, ["models[0]"])
    assert got["model_actors"] == 2
    assert got["outside_model_share"] == 0.75  # 1 s busy of 2 s x 2 actors
    assert got["stage_busy_s"] == {"preprocessors[0]": 0.5, "models[0]": 1.0}


@pytest.mark.parametrize("rounds", ["0", "-2"])
def test_rounds_below_one_is_a_bad_flag_value(
    table: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], rounds: str
) -> None:
    """The flag is named, not a benchmark.rounds the spec never set (a spec error)."""
    path = write_spec(tmp_path / "echo.yaml", echo_spec(table, MET))
    with pytest.raises(SystemExit) as exited:
        main(["bench", str(path), "--rounds", rounds])
    assert exited.value.code == ExitCode.USAGE_ERROR
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"infer-run bench: error: argument --rounds: must be at least 1, got {rounds}"
    )


class LookedUp(Model):
    """Resolves ``name`` once on the driver (``worker_params``); workers get ``resolved``."""

    def __init__(self, resolved: str) -> None:
        self.resolved = resolved

    @classmethod
    def worker_params(cls, params: Mapping[str, Any]) -> dict[str, Any]:
        return {"resolved": str(params["name"]).upper()}

    def __call__(self, batch: Batch) -> Batch:
        batch["resolved"] = np.full(len(batch[ID_COLUMN]), self.resolved, dtype=object)
        return batch


def test_model_only_builds_the_models_from_their_worker_params() -> None:
    """As the run's actors and --calibrate's probes do: the ceiling times the same model."""
    stage = StageConfig("models[0]", "model", "looked_up", LookedUp, {"name": "r18"}, Resources())
    node = MapNode(stage=stage, compute="actors", batch_size=2, pool=(1, 1))
    ceiling = _time_models([node], {ID_COLUMN: np.array(["a", "b", "c"], dtype=object)})
    assert (ceiling["rows"], ceiling["batch_size"], ceiling["gpu_stages"]) == (3, 2, [])


def test_evaluate_passes_fails_and_skips_with_one_line_each() -> None:
    best = {"rows_per_s": 20.0, "outside_model_share": 0.5, "model_busy_s": 1.0}
    best |= {"wall_time_s": 2.0, "model_actors": 1}
    ceiling = {"rows_per_s": 100.0, "gpu_stages": []}
    both = BenchmarkSection(min_model_ratio=0.1, max_outside_model_share=0.4)
    checks = evaluate(both, best, ceiling, None)
    assert [(c["name"], c["status"]) for c in checks] == [
        ("min_model_ratio", "pass"),
        ("max_outside_model_share", "FAIL"),
    ]
    assert checks[1]["line"] == (
        "max_outside_model_share: 0.5 (model stages busy 1.00s of 2.00s x 1 actor(s)), "
        "expected <= 0.4"
    )
    no_models = evaluate(both, {**best, "outside_model_share": None}, None, None)
    assert [c["line"] for c in no_models] == [
        "min_model_ratio: skipped - the spec has no models",
        "max_outside_model_share: skipped - the spec has no models",
    ]
    on_gpu = evaluate(both, best, {**ceiling, "gpu_stages": ["models[0]"]}, None)
    assert on_gpu[0]["status"] == "skip" and "models[0] run on GPUs" in on_gpu[0]["line"]

    floors = BenchmarkSection(floors={"ci-2core": 50.0})
    assert evaluate(floors, best, ceiling, "ci-2core")[0]["status"] == "miss"  # advisory
    assert evaluate(floors, best, ceiling, "ci-2core", strict_floors=True)[0]["status"] == "FAIL"
    assert evaluate(floors, best, ceiling, "laptop")[0]["line"] == (
        "floors: skipped - no floor for machine label 'laptop' (floors for: ci-2core)"
    )
    assert "INFER_MACHINE_LABEL is not set" in evaluate(floors, best, ceiling, None)[0]["line"]


@pytest.mark.ray
@pytest.mark.slow
def test_bench_exit_codes_json_and_no_output_left(
    ray_session: None,
    table: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = write_spec(tmp_path / "echo.yaml", echo_spec(table, {"sample_rows": 32, **MET}))
    out = tmp_path / "ok.json"
    assert main(["bench", str(spec), "--rounds", "2", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert [c["status"] for c in doc["checks"]] == ["pass", "pass"]
    assert doc["failures"] == []
    assert (doc["status"], doc["error"]) == ("passed", None)
    assert len(doc["rounds"]) == 2
    assert doc["model_only"]["rows"] == 32
    assert doc["model_only"]["batch_size"] == 16
    assert doc["rows_written"] == 64
    assert set(doc["stage_busy_s"]) == {"models[0]", "writer"}
    assert doc["model_ratio"] > 0 and 0 <= doc["outside_model_share"] <= 1
    # Rounds write to a temporary directory, never to the spec's writer path.
    assert not (tmp_path / "never-written").exists()

    capsys.readouterr()
    impossible = ["benchmark.min_model_ratio=1000", "--json", str(tmp_path / "miss.json")]
    assert main(["bench", str(spec), *impossible]) == 8
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("infer-run bench: missed: min_model_ratio: ")
    assert err[0].endswith("expected >= 1000")
    missed = err[0].removeprefix("infer-run bench: missed: ")
    miss_doc = json.loads((tmp_path / "miss.json").read_text())
    assert miss_doc["failures"] == [missed]
    assert (miss_doc["status"], miss_doc["error"]) == ("missed", None)

    # A --json path that passed the up-front check but cannot be written after the rounds.
    blocked = tmp_path / "blocked"
    monkeypatch.setattr("framework.bench.writable_file", str)
    blocked.write_text("a file where the JSON's folder should be")
    capsys.readouterr()
    assert main(["bench", str(spec), "--json", str(blocked / "b.json")]) == 5
    printed = capsys.readouterr()
    assert json.loads(printed.out[printed.out.index("{") : printed.out.rindex("}") + 1])["rounds"]
    assert printed.err.strip().startswith(f"infer-run: error: --json: cannot write {blocked}")


def test_a_spec_that_cannot_run_still_writes_the_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A CI job uploads the JSON whatever happened: a run that cannot start says why."""
    spec = write_spec(tmp_path / "gone.yaml", echo_spec(tmp_path / "gone.parquet", MET))
    out = tmp_path / "artifacts" / "bench.json"
    assert main(["bench", str(spec), "--json", str(out)]) == ExitCode.SPEC_ERROR
    doc = json.loads(out.read_text())
    message = f"spec {spec}: 1 problem; reader.path: no parquet data at {tmp_path}/gone.parquet"
    assert doc["status"] == "failed"
    assert doc["error"] == {"type": "SpecError", "message": message, "exit_code": 3}
    assert doc["failures"] == [message]
    assert (doc["spec"], doc["rounds"], doc["checks"], doc["model_only"]) == (
        str(spec),
        [],
        [],
        None,
    )
    assert doc["rows_per_s"] is None
    # The error is said on stderr as for any run; stdout names the JSON.
    printed = capsys.readouterr()
    assert printed.err.startswith(f"infer-run: error: spec {spec}: 1 problem")
    assert f"json: {out}" in printed.out.splitlines()


@pytest.mark.ray
def test_a_run_that_fails_writes_the_rounds_before_it_and_the_error(
    ray_session: None,
    table: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The second round stops on a row the first one saw: exit 6, round 1's figures kept."""
    monkeypatch.setenv("INFER_PLUGINS", "tests.plugins.once_only")
    markers = tmp_path / "markers"
    markers.mkdir()
    spec = echo_spec(table, {"sample_rows": 32, **MET})
    spec["postprocessors"] = [{"type": "once_only", "markers": str(markers)}]
    path = write_spec(tmp_path / "once.yaml", spec)
    out = tmp_path / "bench.json"
    assert main(["bench", str(path), "--rounds", "2", "--json", str(out)]) == ExitCode.RUN_FAILED
    doc = json.loads(out.read_text())
    assert doc["status"] == "failed" and doc["error"]["exit_code"] == 6
    assert doc["error"]["type"] == "RunError"
    assert "failed in postprocessors[0]: ValueError: " in doc["error"]["message"]
    assert "was seen by an earlier run" in doc["error"]["message"]
    assert doc["failures"] == [doc["error"]["message"]] and doc["checks"] == []
    assert len(doc["rounds"]) == 1 and doc["rows_written"] == 64
    assert doc["model_only"]["rows"] == 32 and doc["model_ratio"] > 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"infer-run: error: {doc['error']['message']}"
    assert not (tmp_path / "never-written").exists()


def test_model_only_sample_is_read_as_the_rounds_read(
    ray_session: None, table: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray.data

    import framework.bench
    from framework.ray_session import FOOTER_ACTORS

    seen: dict[str, Any] = {}
    real = framework.bench.read_sample

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen["footer_actors"] = os.environ.get(FOOTER_ACTORS)
        seen["max_errored_blocks"] = ray.data.DataContext.get_current().max_errored_blocks
        return real(*args, **kwargs)

    monkeypatch.setattr(framework.bench, "read_sample", spy)
    monkeypatch.delenv(FOOTER_ACTORS, raising=False)
    spec = echo_spec(table, {"sample_rows": 32, **MET})
    spec["run"] = {"data_context": {"max_errored_blocks": 7}}
    path = write_spec(tmp_path / "echo.yaml", spec)
    assert main(["bench", str(path), "--rounds", "1", "--json", str(tmp_path / "b.json")]) == 0
    # Footer readers sized to the cluster (not Ray Data's 32); the spec's DataContext applied.
    assert seen["footer_actors"] is not None and seen["max_errored_blocks"] == 7


@pytest.mark.ray
def test_bench_times_a_torch_model_on_every_core(ray_session: None, tmp_path: Path) -> None:
    from framework.datagen import generate

    generate(tmp_path / "photos", 16, workers=1)
    spec = {
        "benchmark": {"sample_rows": 16, **MET},
        "reader": {"type": "image_parquet", "path": str(tmp_path / "photos")},
        "preprocessors": [{"type": "image_transform", "resize_size": 64, "crop_size": 64}],
        "models": [
            {
                "type": "torchvision",
                "name": "resnet18",
                "weights": "random",
                "resources": {"batch_size": 8},
            }
        ],
        "postprocessors": [{"type": "topk", "k": 2}],
        "writer": {"type": "parquet", "path": str(tmp_path / "never-written")},
    }
    out = tmp_path / "bench.json"
    assert main(["bench", str(write_spec(tmp_path / "r18.yaml", spec)), "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["model_only"]["torch_threads"] == len(os.sched_getaffinity(0))
    assert doc["model_only"]["rows"] == 16 and doc["model_only"]["gpu_stages"] == []
    assert doc["stage_rows"]["models[0]"] == 16 and doc["stage_busy_s"]["models[0]"] > 0
    assert [c["status"] for c in doc["checks"]] == ["pass", "pass"]


def test_specs_are_collected_only_with_a_benchmark_block(
    pytester: pytest.Pytester, table: Path
) -> None:
    specs = pytester.path / "specs"
    write_spec(specs / "fast.yaml", echo_spec(table, MET))
    write_spec(specs / "nested" / "deep.yml", echo_spec(table, {}))
    write_spec(specs / "plain.yaml", echo_spec(table, None))
    # Kubernetes manifests beside the specs (`infer-run k8s SPEC > ...`): a stream of
    # documents, no spec, and no reason to stop the collection of the others.
    (specs / "job.yaml").write_text("kind: ConfigMap\n---\nkind: Job\nbenchmark: {}\n")
    pytester.makepyfile(test_unit="def test_unit():\n    pass\n")
    pytester.makeini("[pytest]\ntestpaths = test_unit.py\n")

    # On the command line without test paths: the specs instead of testpaths.
    result = pytester.runpytest("--infer-specs", "specs", "--collect-only", "-q")
    assert result.ret == pytest.ExitCode.OK, result.outlines[-20:]
    assert sorted(line for line in result.outlines if "::" in line) == [
        "specs/fast.yaml::fast",
        "specs/nested/deep.yml::deep",
    ]
    # In the ini file: the specs beside the tests.
    pytester.makeini("[pytest]\ntestpaths = test_unit.py\ninfer_specs = specs\n")
    result = pytester.runpytest("--collect-only", "-q")
    assert sorted(line for line in result.outlines if "::" in line) == [
        "specs/fast.yaml::fast",
        "specs/nested/deep.yml::deep",
        "test_unit.py::test_unit",
    ]


@pytest.mark.ray
@pytest.mark.slow
def test_plugin_runs_specs_under_pytest_benchmark(
    pytester: pytest.Pytester, table: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    specs = pytester.path / "specs"
    write_spec(specs / "fast.yaml", echo_spec(table, {"rounds": 2, "sample_rows": 32, **MET}))
    monkeypatch.setenv("INFER_MACHINE_LABEL", "qa")
    write_spec(specs / "floor.yaml", echo_spec(table, {"sample_rows": 32, "floors": {"qa": 1e9}}))
    impossible = {"sample_rows": 32, "min_model_ratio": 1000}
    write_spec(specs / "impossible.yaml", echo_spec(table, impossible))
    write_spec(specs / "plain.yaml", echo_spec(table, None))

    result = pytester.runpytest_subprocess(
        "--infer-specs", "specs", "--benchmark-json", "bench.json", "-p", "no:cacheprovider"
    )
    result.assert_outcomes(passed=2, failed=1)
    # An advisory floor's miss passes, and says so in the warnings summary.
    result.stdout.fnmatch_lines(["*FloorMissed: *floor.yaml: floors.qa: * expected >= 1e+09*"])
    # The failure's whole report is the missed expectation's line.
    result.stdout.fnmatch_lines(["min_model_ratio: * expected >= 1000", "*= short test summary*"])
    result.stdout.fnmatch_lines(["FAILED specs/impossible.yaml::impossible - Failed: *"])
    doc = json.loads((pytester.path / "bench.json").read_text())
    runs = {b["fullname"]: b for b in doc["benchmarks"]}
    assert set(runs) == {
        "specs/fast.yaml::fast",
        "specs/floor.yaml::floor",
        "specs/impossible.yaml::impossible",
    }
    assert runs["specs/fast.yaml::fast"]["stats"]["rounds"] == 2
    for run in runs.values():
        info = run["extra_info"]
        assert all(info[key] > 0 for key in EXTRA_INFO[:3]), info
        assert 0 <= info["outside_model_share"] <= 1
        assert info["stage_busy_s"]["models[0]"] > 0
    assert runs["specs/impossible.yaml::impossible"]["extra_info"]["failures"][0].startswith(
        "min_model_ratio: "
    )


def test_ci_specs_are_valid_and_cover_every_reader_and_model_kind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from framework.datagen import FORMATS, generate

    for layout in FORMATS:
        generate(tmp_path / layout, 4, format=layout, workers=1)
    # CI scripts the real one; check() wants a file that is a zip archive, as jit.save writes.
    with zipfile.ZipFile(tmp_path / "resnet18.torchscript.pt", "w") as archive:
        archive.writestr("resnet18/data.pkl", b"")
    monkeypatch.setenv("INFER_CI_DATA", str(tmp_path))
    registry = load_registry()
    readers, models = set(), set()
    for path in sorted((REPO / "specs" / "ci").glob("*.yaml")):
        spec = validate_spec(load_spec(path), registry, str(path))
        assert spec.benchmark is not None, path
        assert spec.benchmark.min_model_ratio and spec.benchmark.max_outside_model_share, path
        readers.add(spec.reader.type)
        models.update(m.type for m in spec.models)
        # Image inputs come from the data directory CI fills, nothing else.
        assert str(spec.reader.params["path"]).startswith(str(tmp_path)), path
    assert readers == {"image_parquet", "image_folder", "webdataset", "parquet"}
    assert models == {"torchvision", "timm", "torchscript", "echo"}
