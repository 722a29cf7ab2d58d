"""Small builders shared by the tests."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


def encode(image: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def column(values: list) -> np.ndarray:
    """An object column as Ray Data hands binary or ragged cells to a numpy batch."""
    out = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        out[i] = value
    return out


def write_id_parts(directory: Path, ids: Sequence[str], rows_per_file: int = 100) -> Path:
    """``ids`` as parquet files of ``rows_per_file`` rows each, with a float column ``x``."""
    directory.mkdir(exist_ok=True)
    for part, start in enumerate(range(0, len(ids), rows_per_file)):
        chunk = list(ids[start : start + rows_per_file])
        table = pa.table({"id": chunk, "x": np.arange(float(len(chunk)))})
        pq.write_table(table, directory / f"p{part}.parquet")
    return directory
