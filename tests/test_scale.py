"""Scale: 20,000 generated images stream through with every id accounted for, and a 10x
larger input does not raise peak memory by more than 1.3x (issue: bad inputs at scale;
issue: memory stays flat)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow.dataset as pads
import pytest

from framework.datagen import generate

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(1500)]
ROOT = Path(__file__).parent.parent
BIG, SMALL = 20_000, 2_000


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("scale") / "images"
    generate(out, BIG, "parquet", seed=7)
    yield out
    shutil.rmtree(out)  # hundreds of MB: gone before the next module, not at session end


def run(tmp_path: Path, images: Path, rows: int, name: str) -> dict:
    spec = tmp_path / f"{name}.yaml"
    out = tmp_path / name
    spec.write_text(
        f"""
errors: {{policy: skip}}
reader: {{type: image_parquet, path: {images}}}
preprocessors:
  - {{type: image_transform, resize_size: 36, crop_size: 32}}
  - {{type: select_columns, drop: [image]}}
writer: {{type: parquet, path: {out}}}
"""
    )
    # A fresh process per run: each gets its own local Ray, measured from its start.
    done = subprocess.run(
        [sys.executable, "-m", "framework.cli", str(spec), "--limit", str(rows)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "_infer_run_report.json").read_text())
    ids = pads.dataset(out, format="parquet").to_table(columns=["id"])["id"].to_pylist()
    assert len(ids) == len(set(ids)) == report["rows_written"]
    assert report["rows_read"] == report["rows_written"] + report["rows_failed"] == rows
    return report


def test_twenty_thousand_rows_with_flat_memory(tmp_path, images):
    small = run(tmp_path, images, SMALL, "small")
    big = run(tmp_path, images, BIG, "big")
    assert big["rows_failed"] == 0
    ratio = big["memory"]["peak_total_bytes"] / small["memory"]["peak_total_bytes"]
    assert ratio <= 1.3, (small["memory"], big["memory"])
