"""The plugin test kit (framework.testing) on the built-ins and on a broken plugin."""

from __future__ import annotations

import numpy as np
import pytest

from framework.plugins import load_registry
from framework.testing import assert_conformant, conformance_problems
from tests.plugins import broken

SAMPLE = {"id": np.array(["a", "b", "c"], dtype=object), "x": np.array([1.0, 2.0, 3.0])}


@pytest.mark.parametrize(
    ("kind", "name", "params"),
    [
        ("preprocessor", "select_columns", {"columns": ["x"]}),
        ("preprocessor", "rename_columns", {"mapping": {"x": "y"}}),
        ("model", "echo", {"scale": 2.0}),
        ("writer", "parquet", {"path": "/tmp/never-written"}),
        ("writer", "jsonl", {"path": "/tmp/never-written"}),
    ],
)
def test_built_in_plugins_conform(kind, name, params):
    assert_conformant(kind, name, params=params, batch=SAMPLE)


def test_broken_plugin_fails_with_every_reason():
    problems = conformance_problems(
        "preprocessor", "broken", batch=SAMPLE, registry=load_registry([broken])
    )
    assert problems == [
        "preprocessor 'broken': column 'id' has 2 rows for 3",
        "preprocessor 'broken': column 'score' has 2 rows for 3",
        "preprocessor 'broken': ids changed or were reordered",
        "preprocessor 'broken': column 'score' has dtype int64, declared float32",
        "preprocessor 'broken': declared output column 'label' is missing",
        "preprocessor 'broken': the same input gave a different output the second time",
        "preprocessor 'broken' on an empty batch: column 'score' has dtype int64, declared float32",
        "preprocessor 'broken' on an empty batch: declared output column 'label' is missing",
    ]


def test_unknown_params_and_names_are_reported():
    assert conformance_problems("model", "echo", params={"scael": 1}, batch=SAMPLE) == [
        "model 'echo': scael: unknown parameter for model 'echo' - did you mean 'scale'?"
    ]
    assert conformance_problems("model", "ecoh") == ["unknown model 'ecoh' - did you mean 'echo'?"]


def test_run_spec_fixture_runs_through_the_cli(run_spec, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ["a", "b"], "x": [1.0, 2.0]}), tmp_path / "in.parquet")
    result = run_spec(
        {
            "reader": {"type": "parquet", "path": str(tmp_path / "in.parquet")},
            "models": [{"type": "echo", "scale": 10}],
            "writer": {"type": "parquet", "path": "ignored"},
        }
    )
    assert result.code == 0
    assert sorted((r["id"], r["x_echo"]) for r in result.rows()) == [("a", 10.0), ("b", 20.0)]
    assert result.report["rows_written"] == 2
