"""Small builders shared by the tests."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

ROOT = Path(__file__).parent.parent


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


def run_cli(
    *args: str, plugins: str | None = None, cwd: Path = ROOT, timeout: float = 300
) -> subprocess.CompletedProcess:
    """``infer-run ARGS`` in a fresh process (its own local Ray, unless ``--address``);
    ``plugins`` is registered through ``INFER_PLUGINS``, importable from this checkout."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if plugins:
        env["INFER_PLUGINS"] = plugins
    return subprocess.run(
        [sys.executable, "-m", "framework.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
    )


def timestamp_id_spec(tmp_path: Path, writer: str) -> Path:
    """A spec reading two rows with timestamp ids through ``echo`` into ``writer``."""
    data = tmp_path / "in.parquet"
    ids = pa.array([0, 60_000_000], pa.timestamp("us"))
    pq.write_table(pa.table({"id": ids, "x": [1.0, 2.0]}), data)
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"reader: {{type: parquet, path: {data}}}\n"
        "models: [{type: echo}]\n"
        f"writer: {{type: {writer}, path: {tmp_path / 'out'}}}\n"
    )
    return spec


@contextlib.contextmanager
def ray_cluster(nodes: list[dict[str, Any]]) -> Iterator[str]:
    """A multi-node Ray cluster of ``nodes`` (``add_node`` kwargs, the first the head) in a
    process of its own, as a user's cluster is; yields its address for ``--address``."""
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "ray_cluster_proc.py"), json.dumps(nodes)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None and proc.stdin is not None
    try:
        address = proc.stdout.readline().strip()
        assert address, "the cluster process did not start"
        yield address
    finally:
        proc.stdin.close()
        proc.wait(timeout=120)
