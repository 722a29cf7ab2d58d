"""What plugin authors get wrong, and the one line each mistake gets instead of a traceback,
a silently wrong output, or every row blamed in the dead letters."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from framework.cli import main
from framework.contract import checked_call
from framework.errors import BrokenContract, ExitCode, PluginError
from framework.plugins import load_registry
from framework.spec import load_spec, validate_spec
from framework.storage import expand_globs
from tests.helpers import run_cli, write_id_parts
from tests.plugins import careless

BATCH = {"id": np.array(["a", "b", "c"], dtype=object), "x": np.arange(3.0)}


@pytest.mark.parametrize(
    ("how", "what"),
    [
        ("fewer_rows", "returned 2 rows in column 'id' for 3"),
        ("drop_id", "dropped the 'id' column"),
        ("dataframe", "returned DataFrame"),
        ("rows", "returned list"),
        ("list_column", "returned column 'tags' as list"),
        ("changed_ids", "changed or reordered the 'id' values"),
        ("reordered", "changed or reordered the 'id' values"),
        ("scalar_column", "returned column 'score' as a 0-d array, not one value per row"),
    ],
)
def test_each_break_of_the_batch_contract_is_named_as_a_plugin_bug(how, what):
    stage = careless.BreaksContract(how)
    with pytest.raises(BrokenContract) as info:
        checked_call(stage, {k: v.copy() for k, v in BATCH.items()}, "preprocessors[1]")
    assert str(info.value).startswith(f"preprocessors[1]: plugin bug: it {what} (a stage returns")


@pytest.mark.parametrize(
    ("plugin", "message"),
    [
        (careless.RaisingHook, "hook raised ModuleNotFoundError: No module named 'not_installed"),
        (careless.ReturningHook, "its register_models hook returned a value, which is ignored"),
        (careless.ReversedRegister, "called register(NoInit, ...): the name comes first"),
        (careless.WrongBase, "as NoInit, which is not a framework.Model"),
        (careless.Incomplete, "as NoCall, which does not define __call__"),
        (careless.MisnamedArgument, "Argument(s) {'reg'} are declared in the hookimpl"),
        (careless.ByPathWithoutColon, "give the class, or its path as 'package.module:Class'"),
    ],
)
def test_registration_mistakes_are_one_plugin_error(plugin, message):
    with pytest.raises(PluginError) as info:
        load_registry([plugin])
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("plugin", "kind", "name", "message"),
    [
        (
            careless.ByPathMissing,
            "preprocessor",
            "gone",
            "plugin 'ByPathMissing' registered preprocessor 'gone' as "
            "'tests.plugins.not_there:Gone', which cannot be imported: ModuleNotFoundError: "
            "No module named 'tests.plugins.not_there'",
        ),
        (
            careless.ByPathWrongBase,
            "model",
            "not_a_model",
            "plugin 'ByPathWrongBase' registered model 'not_a_model' "
            "as NoInit, which is not a framework.Model",
        ),
    ],
)
def test_a_class_registered_by_path_is_checked_when_a_spec_first_names_it(
    tmp_path, plugin, kind, name, message
):
    registry = load_registry([plugin])  # registering imports nothing, so it cannot tell yet
    assert registry.find(kind, name) is not None
    section = "preprocessors" if kind == "preprocessor" else "models"
    spec = spec_file(tmp_path, "{type: no_init}")
    spec.write_text(
        spec.read_text().replace(
            "preprocessors: [{type: no_init}]", f"{section}: [{{type: {name}}}]"
        )
    )
    with pytest.raises(PluginError) as info:
        validate_spec(load_spec(spec), registry)
    assert str(info.value) == message


def spec_file(tmp_path: Path, stage: str, reader: str | None = None) -> Path:
    data = write_id_parts(tmp_path / "in", [f"r{i}" for i in range(6)])
    path = tmp_path / "spec.yaml"
    path.write_text(
        f"""
errors: {{policy: skip}}
reader: {reader or f"{{type: parquet, path: {data}}}"}
preprocessors: [{stage}]
writer: {{type: parquet, path: {tmp_path / "out"}}}
"""
    )
    return path


def test_a_class_without_init_takes_no_parameters(tmp_path):
    registry = load_registry([careless])
    spec = validate_spec(load_spec(spec_file(tmp_path, "{type: no_init}")), registry)
    assert spec.preprocessors[0].params == {}
    with pytest.raises(Exception) as info:
        validate_spec(load_spec(spec_file(tmp_path, "{type: no_init, colum: x}")), registry)
    assert "colum: unknown parameter for preprocessor 'no_init'" in str(info.value)


@pytest.mark.parametrize(
    ("stage", "message"),
    [
        ("check_raises", "raised FileNotFoundError: vocab.txt"),
        ("check_returns_text", "returned str, expected a list of problem lines"),
    ],
)
def test_a_broken_check_is_a_plugin_error_naming_the_stage(tmp_path, capsys, stage, message):
    path = spec_file(tmp_path, f"{{type: {stage}}}")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("INFER_PLUGINS", "tests.plugins.careless")
        assert main([str(path), "--validate"]) == ExitCode.PLUGIN_ERROR
    err = capsys.readouterr().err
    assert (
        err
        == f"infer-run: error: preprocessors[0]: check() of the preprocessor {stage!r} {message}\n"
    )


def test_expand_globs_takes_one_path_as_a_string(tmp_path):
    (tmp_path / "a.parquet").write_bytes(b"")
    assert expand_globs(str(tmp_path / "a.parquet")) == [str(tmp_path / "a.parquet")]
    assert expand_globs(str(tmp_path / "*.parquet")) == [str(tmp_path / "a.parquet")]


@pytest.mark.ray
def test_a_contract_break_stops_the_run_instead_of_dead_lettering_every_row(tmp_path):
    path = spec_file(tmp_path, "{type: breaks_contract, how: changed_ids}")
    done = run_cli(str(path), plugins="tests.plugins.careless")
    assert done.returncode == ExitCode.RUN_FAILED, done.stderr[-3000:]
    assert (
        "infer-run: error: preprocessors[0]: plugin bug: it changed or reordered the 'id' values"
        in done.stderr
    )
    assert "Traceback" not in done.stderr
    assert not list((tmp_path / "out" / "_dead_letter").glob("*.jsonl"))


@pytest.mark.ray
@pytest.mark.slow
def test_reader_mistakes_and_a_stage_without_init_end_to_end(tmp_path):
    plugins = "tests.plugins.careless"
    done = run_cli(str(spec_file(tmp_path, "{type: no_init}")), plugins=plugins)
    assert done.returncode == ExitCode.OK, done.stderr[-3000:]
    assert pq.read_table(tmp_path / "out")["seen"].to_pylist() == [1] * 6

    path = spec_file(tmp_path, "{type: no_init}", reader="{type: no_id_reader}")
    done = run_cli(str(path), "--overwrite", plugins=plugins)
    assert done.returncode == ExitCode.RUN_FAILED, done.stderr[-3000:]
    assert "infer-run: error: reader: plugin bug: its rows have no 'id' column (x)" in done.stderr
    report = json.loads((tmp_path / "out" / "_infer_run_report.json").read_text())
    assert report["status"] == "failed"

    path = spec_file(tmp_path, "{type: no_init}", reader="{type: list_reader}")
    done = run_cli(str(path), "--overwrite", plugins=plugins)
    assert done.returncode == ExitCode.PLUGIN_ERROR, done.stderr[-3000:]
    assert (
        "infer-run: error: reader: list_reader.read() returned list, expected a ray.data.Dataset"
        in done.stderr.splitlines()
    )


@pytest.mark.ray
def test_a_run_a_bug_stops_keeps_its_traceback_and_still_writes_its_report(tmp_path):
    path = spec_file(tmp_path, "{type: no_init}", reader="{type: buggy_reader}")
    done = run_cli(str(path), plugins="tests.plugins.careless")
    assert done.returncode == ExitCode.INTERNAL_ERROR, done.stderr[-3000:]
    assert "Traceback" in done.stderr
    assert "ZeroDivisionError" in done.stderr
    report = json.loads((tmp_path / "out" / "_infer_run_report.json").read_text())
    assert report["status"] == "failed"
    assert report["failure"].startswith("ZeroDivisionError: integer division or modulo by zero")
    assert "a bug in infer-run or a plugin, not a problem with the data" in report["failure"]
    assert report["rows_written"] == 0
    assert (tmp_path / "out" / "_infer_run_spec.yaml").exists()


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "registered a preprocessor with an empty name"),
        (5, "registered a preprocessor named 5 (int): a name is a string"),
        (None, "registered a preprocessor named None (NoneType): a name is a string"),
    ],
)
def test_a_name_that_is_not_a_string_is_named_as_such(name, message):
    from framework.registry import Entry, Registry

    with pytest.raises(PluginError) as info:
        Registry().add(Entry("preprocessor", name, careless.NoInit, "careless"))
    assert str(info.value) == f"plugin 'careless' {message}"


def test_a_check_raising_a_message_over_several_lines_is_told_on_one_line():
    from framework import Batch, Preprocessor
    from framework.spec.params import BrokenCheck, check_lines

    class Wordy(Preprocessor):
        @classmethod
        def check(cls, params: dict) -> list[str]:
            raise ValueError("bad vocabulary\n  line 3: not UTF-8")

        def __call__(self, batch: Batch) -> Batch:
            return batch

    with pytest.raises(BrokenCheck) as info:
        check_lines(Wordy, {})
    assert str(info.value) == "raised ValueError: bad vocabulary line 3: not UTF-8"


def test_a_third_argument_to_register_is_refused_not_taken_for_the_plugin_name():
    from framework import hookimpl

    class KindToo:
        @staticmethod
        @hookimpl
        def register_preprocessors(register: Callable[..., None]) -> None:
            register("no_init_3", careless.NoInit, "preprocessor")

    with pytest.raises(PluginError) as info:
        load_registry([KindToo])
    assert "its register_preprocessors hook raised TypeError" in str(info.value)
    assert "takes 2 positional arguments but 3 were given" in str(info.value)
