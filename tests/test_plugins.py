from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from framework.cli import main
from framework.errors import ExitCode, PluginError
from framework.plugins import build_registry, load_registry, make_plugin_manager
from tests.plugins import misspelt_hook, second_echo, upper

BUILT_INS = {
    ("reader", "parquet"),
    ("reader", "jsonl"),
    ("preprocessor", "select_columns"),
    ("preprocessor", "rename_columns"),
    ("model", "echo"),
    ("writer", "parquet"),
    ("writer", "jsonl"),
}


def test_built_ins_come_through_the_entry_point_group():
    registry = load_registry()
    found = {(e.kind, e.name): e for e in registry.all()}
    assert set(found) >= BUILT_INS
    echo = found[("model", "echo")]
    assert echo.plugin == "echo"
    assert echo.distribution == "infer-run"
    assert echo.version


def make_distribution(
    root: Path, name: str, module: str, body: str, entry_point: str | None = None
) -> None:
    """A real installed distribution: a module plus a dist-info with entry_points.txt;
    its entry point is named ``entry_point``, else after the module."""
    (root / f"{module}.py").write_text(body)
    info = root / f"{name.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(f"[infer_run]\n{entry_point or module} = {module}\n")


@pytest.fixture
def on_sys_path(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in list(sys.modules):
        if name.startswith(("infer_shout", "infer_squat")):
            del sys.modules[name]


def test_third_party_plugin_is_found_through_its_entry_point(on_sys_path):
    make_distribution(
        on_sys_path,
        "infer-shout",
        "infer_shout",
        "from framework import Preprocessor, hookimpl\n"
        "class Shout(Preprocessor):\n"
        "    def __call__(self, batch):\n"
        "        return batch\n"
        "@hookimpl\n"
        "def register_preprocessors(register):\n"
        "    register('shout', Shout)\n",
    )
    entry = load_registry().find("preprocessor", "shout")
    assert entry is not None
    assert (entry.plugin, entry.distribution, entry.version) == (
        "infer_shout",
        "infer-shout",
        "1.2.3",
    )


def test_plugin_that_fails_to_import_is_named_with_its_cause(on_sys_path):
    make_distribution(on_sys_path, "infer-shout", "infer_shout", "import no_such_module_here\n")
    with pytest.raises(PluginError) as info:
        load_registry()
    assert str(info.value) == (
        "error importing plugin 'infer_shout' (infer_shout) from infer-shout 1.2.3: "
        "ModuleNotFoundError: No module named 'no_such_module_here'"
    )


SHOUT_ECHO = (
    "from framework import Model, hookimpl\n"
    "class LoudEcho(Model):\n"
    "    def __call__(self, batch):\n"
    "        return batch\n"
    "@hookimpl\n"
    "def register_models(register):\n"
    "    register('echo', LoudEcho)\n"
)


def test_a_clash_names_the_distribution_of_each_plugin(on_sys_path):
    # Which package to uninstall: the built-in says so, the other names its distribution.
    make_distribution(on_sys_path, "infer-shout", "infer_shout", SHOUT_ECHO)
    with pytest.raises(PluginError) as info:
        load_registry()
    assert str(info.value) == (
        "model 'echo' is registered twice: by plugin 'echo' (plugins.echo.EchoModel, built-in) "
        "and by plugin 'infer_shout' (infer_shout.LoudEcho, from infer-shout 1.2.3)"
    )


def test_two_entry_points_of_one_name_name_both_distributions(on_sys_path, monkeypatch):
    # Two folders: the first on sys.path is found, and registered, first.
    first, second = on_sys_path / "a", on_sys_path / "b"
    for folder in (second, first):
        folder.mkdir()
        monkeypatch.syspath_prepend(str(folder))
    make_distribution(first, "infer-shout", "infer_shout", SHOUT_ECHO, entry_point="loud")
    make_distribution(second, "infer-shout-too", "infer_shout_too", SHOUT_ECHO, "loud")
    with pytest.raises(PluginError) as info:
        load_registry()
    assert str(info.value) == (
        "two plugins are named 'loud': infer_shout (from infer-shout 1.2.3) "
        "and infer_shout_too (from infer-shout-too 1.2.3)"
    )
    make_distribution(on_sys_path, "infer-squat", "infer_squat", SHOUT_ECHO, entry_point="echo")
    with pytest.raises(PluginError) as info:
        make_plugin_manager(env={"INFER_DISABLE_PLUGINS": "loud"})
    assert str(info.value) == (
        "two plugins are named 'echo': infer_squat (from infer-squat 1.2.3) "
        "and plugins.echo (built-in)"
    )


def test_duplicate_names_name_both_plugins():
    with pytest.raises(PluginError) as info:
        load_registry([second_echo])
    assert str(info.value) == (
        "model 'echo' is registered twice: by plugin 'echo' (plugins.echo.EchoModel, built-in) "
        "and by plugin 'tests.plugins.second_echo' (tests.plugins.second_echo.OtherEcho)"
    )


def test_misspelt_hook_fails_at_start_up():
    with pytest.raises(PluginError) as info:
        make_plugin_manager([misspelt_hook])
    assert str(info.value) == (
        "plugin 'tests.plugins.misspelt_hook': unknown hook 'register_model' - did you mean "
        "'register_models'? (hooks: register_models, register_preprocessors, register_readers, "
        "register_writers)"
    )


def test_load_only_named_plugins():
    pm = make_plugin_manager(env={"INFER_LOAD_PLUGINS": "parquet,echo"})
    names = {(e.kind, e.name) for e in build_registry(pm).all()}
    assert names == {("reader", "parquet"), ("writer", "parquet"), ("model", "echo")}


def test_disable_a_plugin():
    pm = make_plugin_manager(env={"INFER_DISABLE_PLUGINS": "jsonl"})
    registry = build_registry(pm)
    assert registry.find("writer", "jsonl") is None
    assert registry.find("writer", "parquet") is not None


def test_trace_prints_every_hook_call(capsys):
    pm = make_plugin_manager([upper], env={"INFER_TRACE_PLUGINS": "1"})
    build_registry(pm)
    err = capsys.readouterr().err
    assert "[infer-run trace] register_preprocessors -> tests.plugins.upper" in err
    assert "[infer-run trace] register_models -> echo" in err


def test_unknown_name_suggests_close_registered_names():
    registry = load_registry([upper])
    assert registry.unknown_message("preprocessor", "uper") == (
        "unknown preprocessor 'uper' - did you mean 'upper'?"
    )
    assert registry.unknown_message("writer", "zzz") == (
        "unknown writer 'zzz' - registered writers: csv, jsonl, parquet"
    )


def test_infer_plugins_registers_a_module_by_import_path():
    registry = build_registry(make_plugin_manager(env={"INFER_PLUGINS": "tests.plugins.upper"}))
    entry = registry.find("preprocessor", "upper")
    assert entry is not None
    assert (entry.plugin, entry.distribution) == ("tests.plugins.upper", None)
    with pytest.raises(PluginError) as info:
        make_plugin_manager(env={"INFER_PLUGINS": "tests.plugins.nope"})
    assert str(info.value) == (
        "error importing plugin 'tests.plugins.nope' (from INFER_PLUGINS): "
        "ModuleNotFoundError: No module named 'tests.plugins.nope'"
    )


LAZY_SHOUT = """
from framework import hookimpl


@hookimpl
def register_preprocessors(register):
    register("shout", "infer_shout_stage:Shout")
"""
SHOUT_STAGE = """
from framework import Batch, Preprocessor


class Shout(Preprocessor):
    def __call__(self, batch: Batch) -> Batch:
        return batch
"""


def test_a_class_registered_by_path_is_imported_when_first_needed(on_sys_path, capsys):
    make_distribution(on_sys_path, "infer-shout", "infer_shout", LAZY_SHOUT)
    (on_sys_path / "infer_shout_stage.py").write_text(SHOUT_STAGE)
    assert main(["plugins", "--json"]) == ExitCode.OK
    rows = json.loads(capsys.readouterr().out)
    assert {
        "kind": "preprocessor",
        "name": "shout",
        "class": "infer_shout_stage.Shout",
        "plugin": "infer_shout",
        "distribution": "infer-shout",
        "version": "1.2.3",
    } in rows
    assert "infer_shout_stage" not in sys.modules  # listed without importing it
    entry = load_registry().find("preprocessor", "shout")
    assert entry is not None and entry.cls.__module__ == "infer_shout_stage"
    assert entry.cls is sys.modules["infer_shout_stage"].Shout


def test_loading_every_plugin_imports_no_torch():
    # Every run loads every installed plugin: one that uses no model must not pay seconds
    # for torch because the vision plugin (or the example's model) is installed beside it.
    code = (
        "import sys; from framework.plugins import load_registry; registry = load_registry(); "
        "print(len(registry.all()), [m for m in ('torch', 'torchvision', 'timm') if m in sys.modules])"
    )
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        check=True,
    )
    count, imported = done.stdout.split(" ", 1)
    assert int(count) >= len(BUILT_INS) + 6 and imported.strip() == "[]", done.stdout


def test_plugins_table_columns_align_for_long_names(on_sys_path, capsys):
    make_distribution(
        on_sys_path,
        "infer-shout-with-a-distribution-name-longer-than-any-column",
        "infer_shout",
        SHOUT_ECHO.replace("'echo'", "'loud_echo_with_a_name_longer_than_twenty'"),
    )
    assert main(["plugins", "--json"]) == ExitCode.OK
    rows = json.loads(capsys.readouterr().out)
    assert main(["plugins"]) == ExitCode.OK
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(rows)
    starts = set()
    for line, row in zip(lines, rows, strict=True):
        source = f"{row['distribution']} {row['version']}" if row["distribution"] else row["plugin"]
        name_at = line.index(row["name"], len(row["kind"]))
        source_at = line.index(source, name_at + len(row["name"]))
        class_at = line.index(row["class"], source_at + len(source))
        assert line.startswith(row["kind"]) and line.endswith(row["class"])
        starts.add((name_at, source_at, class_at))
    assert len(starts) == 1, "\n".join(lines)


# What CONTRIBUTING lets a plugin import: ``framework`` and the helpers imported on their own.
PUBLIC_MODULES = {"framework", "framework.torch_runtime", "framework.file_filter"}


def test_built_ins_import_only_the_public_framework_api():
    import ast

    import framework

    root = Path(__file__).resolve().parent.parent / "plugins"
    internal = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("framework"):
                names = [alias.name for alias in node.names]
                if node.module not in PUBLIC_MODULES:
                    internal.append(f"{path.relative_to(root)}: {node.module}")
                elif node.module == "framework":
                    internal += [
                        f"{path.relative_to(root)}: framework.{n}"
                        for n in names
                        if n not in framework.__all__
                    ]
            elif isinstance(node, ast.Import):
                internal += [
                    f"{path.relative_to(root)}: {a.name}"
                    for a in node.names
                    if a.name.startswith("framework") and a.name not in PUBLIC_MODULES
                ]
    assert internal == []


def test_a_module_in_infer_plugins_an_entry_point_loaded_is_one_line_naming_both():
    with pytest.raises(PluginError) as info:
        make_plugin_manager(env={"INFER_PLUGINS": "plugins.echo"})
    assert str(info.value) == (
        "plugin 'plugins.echo' (from INFER_PLUGINS) is already loaded as plugin 'echo' "
        "(built-in) - leave it out of INFER_PLUGINS"
    )


def test_a_plugin_implementing_no_hook_is_one_line_instead_of_registering_nothing():
    with pytest.raises(PluginError) as info:
        make_plugin_manager(env={"INFER_PLUGINS": "tests.plugins.unmarked_hook"})
    assert str(info.value) == (
        "plugin 'tests.plugins.unmarked_hook' implements no hook - mark its register_* "
        "functions with @framework.hookimpl (hooks: register_models, register_preprocessors, "
        "register_readers, register_writers)"
    )


def test_an_import_error_over_several_lines_is_still_one_line(on_sys_path):
    # As NumPy's ABI errors are: a paragraph, which must not break the one-line promise.
    source = "raise ImportError('compiled against NumPy 1.x\\n\\ncannot run on NumPy 2')\n"
    make_distribution(on_sys_path, "infer-shout", "infer_shout", source)
    with pytest.raises(PluginError) as info:
        load_registry()
    assert str(info.value) == (
        "error importing plugin 'infer_shout' (infer_shout) from infer-shout 1.2.3: "
        "ImportError: compiled against NumPy 1.x cannot run on NumPy 2"
    )


def test_a_module_in_infer_plugins_named_as_an_entry_point_is_one_line(on_sys_path):
    (on_sys_path / "echo.py").write_text("")  # a plugin under development, named as a built-in
    try:
        with pytest.raises(PluginError) as info:
            make_plugin_manager(env={"INFER_PLUGINS": "echo"})
    finally:
        sys.modules.pop("echo", None)
    assert str(info.value) == (
        "two plugins are named 'echo': plugins.echo (built-in) and echo (from INFER_PLUGINS)"
    )


def test_an_entry_point_implementing_no_hook_names_its_distribution(on_sys_path):
    make_distribution(
        on_sys_path, "infer-shout", "infer_shout", "def register_preprocessors(r):\n    pass\n"
    )
    with pytest.raises(PluginError) as info:
        load_registry()
    assert str(info.value).startswith(
        "plugin 'infer_shout' (from infer-shout 1.2.3) implements no hook - mark its register_*"
    )
