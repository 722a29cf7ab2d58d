"""Every hook is documented and tested, as datasette checks its own."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from framework import hookspecs

HOOKS = [
    name
    for name, fn in vars(hookspecs).items()
    if inspect.isfunction(fn) and hasattr(fn, "infer_run_spec")
]


def test_there_are_hooks():
    assert HOOKS == [
        "register_readers",
        "register_preprocessors",
        "register_models",
        "register_writers",
    ]


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_docstring_with_a_param_line_per_argument(hook):
    fn = getattr(hookspecs, hook)
    doc = inspect.getdoc(fn) or ""
    assert doc.splitlines()[0].endswith(".")
    for arg in inspect.signature(fn).parameters:
        assert f":param {arg}:" in doc


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented_in_contributing(hook):
    text = (Path(__file__).parent.parent / "CONTRIBUTING.md").read_text()
    assert re.search(rf"\b{hook}\b", text), f"{hook} is not described in CONTRIBUTING.md"
