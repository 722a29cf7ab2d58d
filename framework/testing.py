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

import numpy as np
import pytest

from framework.components import ID_COLUMN, Batch
from framework.errors import InferError
from framework.plugins import load_registry
from framework.registry import Registry
from framework.spec.params import bind_params


def conformance_problems(
    kind: str,
    name: str,
    params: Mapping[str, Any] | None = None,
    batch: Batch | None = None,
    registry: Registry | None = None,
) -> list[str]:
    """Everything ``name`` does that breaks the contract, one line each; [] when it conforms.

    Stages (preprocessors, models) need a sample ``batch`` with an ``id`` column and are
    checked for row count, ``id`` alignment, declared output columns and dtypes, an
    empty batch, and determinism. Readers and writers are checked for their class and
    parameters; run them through ``run_spec`` for an end-to-end check.
    """
    registry = registry or load_registry()  # raises on clashes and misspelt hooks
    entry = registry.find(kind, name)
    if entry is None:
        return [registry.unknown_message(kind, name)]
    where = f"{kind} {name!r}"
    bound, problems = bind_params(entry.cls, dict(params or {}), where)
    if problems:
        return [f"{where}: {p}" for p in problems]
    problems = _check_problems(entry.cls, bound, where)
    if problems or kind in ("reader", "writer"):
        return problems
    if batch is None or ID_COLUMN not in batch:
        return [f"{where}: conformance needs a sample batch with an {ID_COLUMN!r} column"]
    stage = _build(entry.cls, bound, where, problems)
    if stage is None:
        return problems
    first = _call(stage, _copy(batch), where, problems)
    if first is not None:
        problems.extend(_output_problems(stage, batch, first, where))
    # Only two dicts compare: a list or a DataFrame is reported above, once.
    if isinstance(first, dict):
        again = _call(stage, _copy(batch), where, problems)
        if again is not None and not _same(first, again):
            problems.append(f"{where}: the same input gave a different output the second time")
    empty = {k: v[:0] for k, v in batch.items()}
    out = _call(stage, empty, f"{where} on an empty batch", problems)
    if out is not None:
        problems.extend(_output_problems(stage, empty, out, f"{where} on an empty batch"))
    return problems


def assert_conformant(kind: str, name: str, **kwargs: Any) -> None:
    problems = conformance_problems(kind, name, **kwargs)
    assert not problems, "\n".join(problems)


def _check_problems(cls: type, bound: dict[str, Any], where: str) -> list[str]:
    """``check()``'s lines, held to its contract as validation holds it (which stops on a
    break): a returned string was iterated, one problem per character."""
    try:
        found = cls.check(bound)
    except Exception as exc:
        return [f"{where}: check() raised {type(exc).__name__}: {exc}"]
    if not isinstance(found, list | tuple) or not all(isinstance(p, str) for p in found):
        return [
            f"{where}: check() returned {type(found).__name__}, expected a list of problem lines"
        ]
    return [f"{where}: check(): {p}" for p in found]


def _build(cls: type, bound: dict[str, Any], where: str, problems: list[str]) -> Any:
    """The stage as a run's workers build it: from ``worker_params``, whose result binding
    and ``check()`` never see (a renamed key passed them and failed every worker)."""
    try:
        return cls(**cls.worker_params(bound))
    except Exception as exc:
        problems.append(
            f"{where}: {cls.__name__}(**worker_params(params)) raised {type(exc).__name__}: {exc}"
        )
        return None


def _call(stage: Any, batch: Batch, where: str, problems: list[str]) -> Batch | None:
    try:
        return stage(batch)
    except Exception as exc:  # the kit reports a plugin's crash instead of stopping
        problems.append(f"{where}: raised {type(exc).__name__}: {exc}")
        return None


def _output_problems(stage: Any, batch: Batch, out: Any, where: str) -> list[str]:
    # The instance's output_columns: what a stage adds can depend on its parameters.
    if not isinstance(out, dict):
        return [f"{where}: returned {type(out).__name__}, expected dict[str, numpy.ndarray]"]
    problems = []
    rows = len(batch[ID_COLUMN])
    for column, values in out.items():
        if not isinstance(values, np.ndarray):
            problems.append(f"{where}: column {column!r} is {type(values).__name__}, not ndarray")
        elif len(values) != rows:
            problems.append(f"{where}: column {column!r} has {len(values)} rows for {rows}")
    if ID_COLUMN not in out:
        problems.append(f"{where}: dropped the {ID_COLUMN!r} column")
    elif not np.array_equal(np.asarray(out[ID_COLUMN]), np.asarray(batch[ID_COLUMN])):
        problems.append(f"{where}: ids changed or were reordered")
    for column, dtype in getattr(stage, "output_columns", {}).items():
        if column not in out:
            problems.append(f"{where}: declared output column {column!r} is missing")
        elif isinstance(out[column], np.ndarray) and out[column].dtype.kind != np.dtype(dtype).kind:
            problems.append(
                f"{where}: column {column!r} has dtype {out[column].dtype}, declared {dtype}"
            )
    return problems


def _copy(batch: Batch) -> Batch:
    return {k: v.copy() for k, v in batch.items()}


def _same(a: Batch, b: Any) -> bool:
    if not isinstance(b, dict) or a.keys() != b.keys():
        return False
    for key in a:
        x, y = np.asarray(a[key]), np.asarray(b[key])
        if x.dtype.kind in "fc":
            if x.shape != y.shape or not np.allclose(x, y, equal_nan=True):
                return False
        elif x.shape != y.shape or not all(
            np.array_equal(i, j) if isinstance(i, np.ndarray) else i == j
            for i, j in zip(x.ravel(), y.ravel(), strict=True)
        ):
            return False
    return True


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
        fmt = "parquet" if any(self.output.glob("*.parquet")) else "json"
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
