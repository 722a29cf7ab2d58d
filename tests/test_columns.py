"""The column housekeeping stages on one small batch."""

from __future__ import annotations

import numpy as np
import pytest

from plugins.columns import RenameColumns, SelectColumns


def batch() -> dict[str, np.ndarray]:
    return {"id": np.array(["r1", "r2"]), "a": np.array([1, 2]), "b": np.array([3, 4])}


@pytest.mark.parametrize(
    ("mapping", "problem"),
    [
        (
            {"a": "c", "b": "c"},
            "mapping: 'a' and 'b' are both renamed to 'c', and one would be lost",
        ),
        ({"id": "key"}, "mapping: 'id' names the rows and cannot be renamed"),
        ({"a": "id"}, "mapping: 'a' cannot be renamed to 'id', which names the rows"),
    ],
)
def test_a_mapping_that_would_lose_a_column_or_the_ids_is_a_spec_problem(mapping, problem):
    assert RenameColumns.check({"mapping": mapping}) == [problem]


def test_a_rename_onto_a_column_kept_stops_instead_of_losing_one():
    # {a: b} beside a b not renamed away kept one of the two columns under "b".
    with pytest.raises(ValueError, match="renames 'a' to 'b', a column the batch already has"):
        RenameColumns({"a": "b"})(batch())
    swapped = RenameColumns({"a": "b", "b": "a"})(batch())
    assert swapped["a"].tolist() == [3, 4] and swapped["b"].tolist() == [1, 2]


def test_dropping_the_ids_is_a_spec_problem():
    assert SelectColumns.check({"drop": ["a", "id"]}) == [
        "drop: 'id' names the rows and cannot be dropped"
    ]
    assert SelectColumns.check({"columns": ["a"], "drop": ["b"]}) == []
