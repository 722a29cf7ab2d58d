"""Which rows a ``--resume`` or ``--replay`` runs: the reader's blocks filtered by id.

The ids marking rows done come from the output (read back by the writer) and from the
dead-letter records (JSON). Ids of a type JSON keeps come back as they went in. Others
do not: a record keeps a timestamp as text (a nanosecond one as an integer, as numpy
hands it to a stage), and a writer fed numpy batches reads back a timestamp without its
zone. A row is done when its id is there in any of these forms.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import ray

from framework.components import ID_COLUMN, JSON_IDS, id_type_kept
from framework.dead_letter import plain_id
from framework.errors import RunError

_IDS: dict[Any, frozenset[Any]] = {}


def as_recorded(value: Any) -> Any:
    """``value`` as a dead-letter record gives it back (``ErrorPolicy.write``)."""
    return json.loads(json.dumps(plain_id(value), default=str))


def id_forms(column: pa.ChunkedArray) -> list[tuple[Any, ...]]:
    """Each row's id of a type JSON does not keep, first as Arrow gives it, then as the
    places that mark it done may hold it."""
    ids = column.to_pylist()
    staged = column.to_numpy()  # as Ray Data's numpy batches hand it to the stages
    try:
        written = pa.array(staged).to_pylist()  # and as a writer of those batches reads it
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        written = ids
    return [
        # A reader's record holds Arrow's value, a stage's numpy's.
        (row_id, as_recorded(row_id), plain_id(s), as_recorded(s), w)
        for row_id, s, w in zip(ids, staged, written, strict=True)
    ]


def filter_ids(table: pa.Table, ids: Any, keep: bool) -> pa.Table:
    """The rows whose id is in ``ids`` (``keep``), or the others: replaying, resuming.

    In Arrow, so that a null among integer ids does not make them floats. A null id is
    never done (a resumed run checks and records it again); a replay keeps it when a
    record without an id (a malformed line) is among those replayed.
    """
    if keep and not id_type_kept(table.schema.field(ID_COLUMN).type, JSON_IDS):
        # The records keep such an id as text: the replay would match no row, and its
        # records would be archived, the rows neither replayed nor recorded.
        raise RunError(
            f"--replay: the 'id' column is {table.schema.field(ID_COLUMN).type}, which the "
            "dead-letter records (JSON) do not keep, so no recorded row can be found again - "
            "give the rows string or integer ids, or move their records out of the "
            "dead-letter folder and --resume runs them again"
        )
    if isinstance(ids, ray.ObjectRef):  # fetched once per worker process
        # Not setdefault(ids, ray.get(ids)): its argument fetched and unpickled the whole
        # set for every block. One run's set at a time: a worker outliving its run (a
        # driver running several) must not keep every earlier run's ids pinned.
        if ids not in _IDS:
            _IDS.clear()
            _IDS[ids] = ray.get(ids)
        ids = _IDS[ids]
    column = table[ID_COLUMN]
    if keep:
        # The reader records a NaN id as missing (null), so a NaN is looked up as None:
        # left out, its row was in neither the output nor the records after the replay.
        missing = pc.is_null(column, nan_is_null=True).to_pylist()
        wanted = [
            (None if gone else row_id) in ids
            for row_id, gone in zip(column.to_pylist(), missing, strict=True)
        ]
    elif id_type_kept(column.type, JSON_IDS):  # the usual ids: one form, one lookup a row
        wanted = [row_id is None or row_id not in ids for row_id in column.to_pylist()]
    else:
        wanted = [found[0] is None or ids.isdisjoint(found) for found in id_forms(column)]
    return table if all(wanted) else table.filter(pa.array(wanted, pa.bool_()))


def put_ids(ids: list[Any]) -> Any:
    return ray.put(frozenset(ids))
