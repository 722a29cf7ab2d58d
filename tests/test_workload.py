"""The reference workload through the real CLI: datagen → specs/resnet50_imagenet.yaml → writers."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pytest

from framework.cli import main
from framework.datagen import generate
from framework.errors import ExitCode

pytestmark = pytest.mark.ray
ROOT = Path(__file__).parent.parent
SPEC = str(ROOT / "specs" / "resnet50_imagenet.yaml")
ROWS = 24
# resnet18 with random weights keeps the run short; the spec's pipeline is unchanged.
FAST = ["models.0.name=resnet18", "models.0.weights=random", "models.0.resources.batch_size=8"]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("workload") / "imagenet-like"
    generate(out, ROWS, "parquet", seed=3)
    return out


def ids_of(images: Path) -> list[str]:
    return sorted(pads.dataset(images, format="parquet").to_table(columns=["id"])["id"].to_pylist())


def test_resnet_spec_parquet_output_and_report(ray_session, images, tmp_path, capsys):
    out = tmp_path / "out"
    code = main([SPEC, f"vars.input={images}", f"vars.output={out}", *FAST])
    assert code == ExitCode.OK
    rows = pads.dataset(out, format="parquet").to_table().to_pylist()
    assert sorted(r["id"] for r in rows) == ids_of(images)
    for row in rows:
        assert len(row["top_ids"]) == len(row["top_scores"]) == len(row["top_labels"]) == 5
        assert all(0 <= i < 1000 for i in row["top_ids"])
        scores = [float(v) for v in row["top_scores"]]
        assert scores == sorted(scores, reverse=True)
        assert all(isinstance(label, str) and label for label in row["top_labels"])
    assert set(rows[0]) == {"id", "top_ids", "top_scores", "top_labels"}

    report = json.loads((out / "_infer_run_report.json").read_text())
    assert (report["rows_read"], report["rows_written"], report["rows_failed"]) == (ROWS, ROWS, 0)
    model = next(c for c in report["components"] if c["kind"] == "model")
    assert model["weights"] == "random"
    assert report["warnings"] == [
        "models[0]: weights: random - the predictions are meaningless (throughput runs only)"
    ]
    assert "weights: random" in capsys.readouterr().out


@pytest.mark.parametrize("writer", ["jsonl", "csv"])
def test_other_writers_read_back(ray_session, images, tmp_path, writer):
    out = tmp_path / "out"
    code = main(
        [SPEC, f"vars.input={images}", f"vars.output={out}", f"writer.type={writer}", *FAST]
    )
    assert code == ExitCode.OK
    files = sorted(p for p in out.iterdir() if not p.name.startswith("_"))
    if writer == "jsonl":
        rows = [json.loads(line) for f in files for line in f.read_text().splitlines()]
        assert all(len(r["top_labels"]) == 5 for r in rows)
    else:
        rows = [r for f in files for r in csv.DictReader(f.open())]
        assert all(int(r["top_ids_0"]) >= 0 and json.loads(r["top_labels"]) for r in rows)
    assert sorted(r["id"] for r in rows) == ids_of(images)


def test_s3_in_and_out(ray_session, images, s3_server, s3_bucket):
    s3_server.upload_tree(images, s3_bucket, "in")
    storage = s3_server.storage
    store = [f"reader.storage.{k}={v}" for k, v in storage.items()]
    store += [f"writer.storage.{k}={v}" for k, v in storage.items()]
    code = main(
        [
            SPEC,
            f"vars.input=s3://{s3_bucket}/in",
            f"vars.output=s3://{s3_bucket}/out",
            *FAST,
            *store,
        ]
    )
    assert code == ExitCode.OK
    fs = pafs.S3FileSystem(
        endpoint_override=storage["endpoint_url"].split("://")[1],
        scheme="http",
        region=storage["region"],
        access_key=storage["access_key_id"],
        secret_key=storage["secret_access_key"],
    )
    table = pads.dataset(f"{s3_bucket}/out", format="parquet", filesystem=fs).to_table()
    assert sorted(table["id"].to_pylist()) == ids_of(images)
    with fs.open_input_stream(f"{s3_bucket}/out/_infer_run_report.json") as f:
        report = json.loads(f.read())
    assert report["rows_written"] == ROWS
    # The credentials never reach the report.
    assert storage["secret_access_key"] not in json.dumps(report)


def test_offline_weights_fail_before_ray_starts(images, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    # A proxy on a closed port: the download fails here even where the internet is reachable.
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    code = main([SPEC, f"vars.input={images}", f"vars.output={tmp_path / 'out'}"])
    assert code == ExitCode.SPEC_ERROR
    err = capsys.readouterr().err
    wanted = tmp_path / "torch-home" / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth"
    assert "https://download.pytorch.org/models/resnet50-11ad3fa6.pth" in err
    assert str(wanted) in err
    assert "weights: /path/to/checkpoint.pth" in err and "weights: random" in err
    assert not (tmp_path / "out").exists()
