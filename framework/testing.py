"""The plugin test kit: a pytest plugin (entry point ``pytest11``) for plugin authors.

Fixtures: ``infer_registry`` (the components every installed plugin registers),
``infer_ray`` (a local Ray for the session) and ``run_spec`` (run a spec end to end
and get its report and output rows). ``conformance_problems`` / ``assert_conformant``
check any reader, preprocessor, model or writer against the framework's contract.
``pytest --infer-specs DIR`` (or the ``infer_specs`` ini option) turns every spec under DIR
with a ``benchmark:`` block into a pytest-benchmark throughput test.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from framework.conformance import assert_conformant, conformance_problems
from framework.errors import InferError
from framework.plugins import load_registry
from framework.registry import Registry

__all__ = ["SpecRun", "assert_conformant", "conformance_problems"]


@pytest.fixture
def infer_registry() -> Registry:
    """Every component the installed plugins register (fails on clashes)."""
    return load_registry()


@pytest.fixture(scope="session")
def infer_ray() -> Iterator[None]:
    """A local Ray for the test session (reuses one already started)."""
    import ray

    from framework.ray_session import start_local_ray

    started = False
    if not ray.is_initialized():
        start_local_ray()
        started = True
    yield
    if started:
        ray.shutdown()


class SpecRun:
    """What ``run_spec`` returns: the exit code, the report and the output rows."""

    def __init__(self, code: int, output: Path | None) -> None:
        self.code = code
        self.output = output
        report = output / "_infer_run_report.json" if output else None
        self.report = json.loads(report.read_text()) if report and report.exists() else None

    def rows(self) -> list[dict[str, Any]]:
        import pyarrow.dataset as pads

        assert self.output is not None
        # By the built-in writers' file endings; the run's own files start with "_", which
        # pyarrow skips.
        formats = {".parquet": "parquet", ".csv": "csv"}
        suffixes = {p.suffix for p in self.output.iterdir() if not p.name.startswith("_")}
        fmt = next((formats[s] for s in formats if s in suffixes), "json")
        return pads.dataset(self.output, format=fmt).to_table().to_pylist()


@pytest.fixture
def run_spec(infer_ray: None, tmp_path: Path) -> Callable[..., SpecRun]:
    """Run a spec (a path or a dict) through the real CLI on the local Ray.

    The writer's path defaults to a fresh temporary directory.
    """
    from omegaconf import OmegaConf

    from framework.cli import main

    def run(spec: str | Path | Mapping[str, Any], overrides: Sequence[str] = ()) -> SpecRun:
        if not isinstance(spec, (str, Path)):
            path = tmp_path / "spec.yaml"
            OmegaConf.save(OmegaConf.create(dict(spec)), path)
            spec = path
        output = tmp_path / "output"
        args = [str(spec), f"writer.path={output}", "writer.overwrite=true", *overrides]
        code = main(args)
        return SpecRun(code, output if output.exists() else None)

    return run


# -- throughput tests from specs: pytest --infer-specs DIR -------------------------------

SPEC_DIRS = pytest.StashKey[list[Path]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("infer-run", "infer-run spec throughput tests")
    group.addoption(
        "--infer-specs",
        action="append",
        default=[],
        metavar="DIR",
        help="run every spec with a benchmark: block under DIR as a throughput test; "
        "without test paths on the command line, only these are collected",
    )
    group.addoption(
        "--infer-strict-floors",
        action="store_true",
        default=False,
        help="a missed benchmark.floors entry fails the test (advisory otherwise)",
    )
    parser.addini("infer_specs", "spec directories collected beside the tests", type="paths")
    parser.addini("infer_strict_floors", "as --infer-strict-floors", type="bool", default=False)


def pytest_configure(config: pytest.Config) -> None:
    given = config.getoption("infer_specs")
    here = config.invocation_params.dir
    dirs = [(here / d).resolve() for d in given] or [
        p.resolve() for p in config.getini("infer_specs")
    ]
    config.stash[SPEC_DIRS] = dirs
    if given and config.args_source != pytest.Config.ArgsSource.ARGS:
        # `pytest --infer-specs specs/ci` asks for the specs, not the testpaths too.
        config.args = []
    collected = [(here / arg.split("::")[0]).resolve() for arg in config.args]
    config.args.extend(str(d) for d in dirs if not _within(d, collected))


def _within(path: Path, roots: Iterable[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix in (".yaml", ".yml") and _within(
        file_path.resolve(), parent.config.stash.get(SPEC_DIRS, [])
    ):
        return SpecFile.from_parent(parent, path=file_path)
    return None


class SpecFile(pytest.File):
    """A spec under ``--infer-specs``: one throughput test if it has a ``benchmark:`` block."""

    def collect(self) -> Iterator[pytest.Item]:
        import yaml

        try:
            documents = list(yaml.safe_load_all(self.path.read_text()))
        except yaml.YAMLError as exc:
            raise self.CollectError(f"{self.path}: invalid YAML: {exc}") from None
        # A stream of several documents (Kubernetes manifests, `infer-run k8s`'s output)
        # is no spec: skipped like any other YAML without a benchmark: block.
        data = documents[0] if len(documents) == 1 else None
        if isinstance(data, dict) and data.get("benchmark") is not None:
            if not self.config.pluginmanager.hasplugin("benchmark"):
                raise self.CollectError("--infer-specs needs pytest-benchmark: pip install it")
            test = _throughput_test(self.path)
            yield pytest.Function.from_parent(self, name=self.path.stem, callobj=test)


class FloorMissed(UserWarning):
    """A spec's advisory ``floors`` entry for this machine label was missed."""


def _throughput_test(path: Path) -> Callable[..., None]:
    def throughput(benchmark: Any, infer_ray: None, pytestconfig: pytest.Config) -> None:
        """The model-only ceiling, then the timed end-to-end rounds, then the checks."""
        from framework.bench import LABEL_ENV, Bench  # imports Ray: only when a spec runs

        strict = pytestconfig.getoption("infer_strict_floors") or pytestconfig.getini(
            "infer_strict_floors"
        )
        try:
            bench = Bench(path)
            try:
                bench.measure_ceiling()
                benchmark.pedantic(
                    bench.run_round,
                    setup=bench.prepare_round,  # untimed: the previous round's output goes
                    rounds=bench.settings.rounds,
                    warmup_rounds=bench.settings.warmup_rounds,
                )
                result = bench.result(os.environ.get(LABEL_ENV), bool(strict))
            finally:
                bench.close()
        except InferError as exc:
            pytest.fail(f"{path}: {exc}", pytrace=False)
        benchmark.extra_info.update(result)
        for check in result["checks"]:
            if check["status"] == "miss":  # advisory: shown in the warnings summary, not failed
                warnings.warn(FloorMissed(f"{path}: {check['line']}"), stacklevel=1)
        if result["failures"]:
            pytest.fail("\n".join(result["failures"]), pytrace=False)

    return throughput
