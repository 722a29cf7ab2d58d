"""Id types a text writer reads back as the same values, as ``--resume`` and ``--replay``
need: a timestamp id went into JSON as epoch milliseconds and came back an int, so every
resume wrote its rows again; in CSV it made every file look cut short. And ids a JSON
reader cannot take as the same values."""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa
import pyarrow.compute as pc

from framework import ID_COLUMN, JSON_IDS, RunError, id_type_kept

# CSV writes a float32 in its own shortest form, which reads back as another float64.
CSV_IDS = (*JSON_IDS[:3], pa.types.is_float64, pa.types.is_boolean, pa.types.is_null)


def check_id_type(
    table: pa.Table, kinds: tuple[Callable[[pa.DataType], bool], ...], what: str
) -> None:
    """Stop the run, before a file is written, when ``what`` cannot give the ids back."""
    if ID_COLUMN not in table.column_names:
        return
    found = table.schema.field(ID_COLUMN).type
    if not id_type_kept(found, kinds):
        raise RunError(
            f"writer: the 'id' column is {found}, which {what} cannot give back as the same "
            "values, so --resume and --replay would miss or repeat rows - give the rows "
            "string or integer ids, or write parquet"
        )


class IdsPastInt64(ValueError):
    """Arrow reads an integer past int64 as a double: 12345678901234567890 and ...891 both
    become 1.2345678901234567e19, one id for two rows."""

    def __init__(self, example: float) -> None:
        super().__init__(
            f"integer ids past int64 ({example!r}) lose digits as JSON numbers, and distinct "
            "ones become one - write the ids as strings"
        )


def check_id_digits(table: pa.Table, id_column: str) -> pa.Table:
    """``table``, unless its ids are doubles past int64, where Arrow's integers end."""
    ids = table[id_column]
    if pa.types.is_floating(ids.type):
        big = pc.max(pc.abs(ids)).as_py()
        if big is not None and big >= 2.0**63:
            raise IdsPastInt64(big)
    return table
