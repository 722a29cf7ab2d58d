"""What --resume and --replay make of the files in an output folder, without Ray: files
an interrupted run cut short go, files no writer wrote stay and stop the run in one line."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from framework import InputError, Writer
from framework.errors import ExitCode
from plugins.csv_writer import CsvWriter
from plugins.jsonl import JsonlWriter
from plugins.parquet import ParquetWriter


def write_output(out: Path, writer: str) -> None:
    """One whole output file of ids ``a`` and ``b``, as ``writer`` writes it."""
    table = pa.table({"id": ["a", "b"], "score": [0.5, 0.25]})
    if writer == "parquet":
        pq.write_table(table, out / "part.parquet")
    elif writer == "csv":
        pcsv.write_csv(table, out / "part.csv")
    else:
        (out / "part.json").write_text('{"id":"a","score":0.5}\n{"id":"b","score":0.25}\n')


FOREIGN = {
    "parquet": ("labels.parquet", "it has no 'id' column"),
    "csv": ("labels.csv", "its first column is 'label', not 'id'"),
    "jsonl": ("metrics.json", "line 1 is not a JSON object with an 'id'"),
}
WRITERS: dict[str, type[Writer]] = {
    "parquet": ParquetWriter,
    "csv": CsvWriter,
    "jsonl": JsonlWriter,
}


def write_foreign(out: Path, writer: str) -> Path:
    """A whole file of the user's beside the output, with the output's suffix."""
    path = out / FOREIGN[writer][0]
    if writer == "parquet":
        pq.write_table(pa.table({"label": ["tabby"], "n": [3]}), path)
    elif writer == "csv":
        pcsv.write_csv(pa.table({"label": ["tabby"], "n": [3]}), path)
    else:
        path.write_text('{\n  "accuracy": 0.91\n}\n')
    return path


@pytest.mark.parametrize("writer", ["parquet", "csv", "jsonl"])
def test_a_whole_file_the_writer_did_not_write_is_kept_and_named(
    tmp_path: Path, writer: str
) -> None:
    # An eval summary saved beside the predictions was deleted, without a word, by the
    # --resume that processed new inputs, as if a killed run had cut it short.
    out = tmp_path / "out"
    out.mkdir()
    write_output(out, writer)
    foreign = write_foreign(out, writer)
    before = foreign.read_bytes()
    with pytest.raises(InputError) as stopped:
        WRITERS[writer](str(out)).committed_ids()
    assert str(stopped.value) == (
        f"--resume/--replay: {foreign} is not a file the {writer} writer wrote "
        f"({FOREIGN[writer][1]}) - move it out of {out}, then run again"
    )
    assert foreign.read_bytes() == before


@pytest.mark.parametrize("writer", ["parquet", "csv", "jsonl"])
@pytest.mark.parametrize("keep", [0, 7, -1], ids=["empty", "head", "last-newline"])
def test_files_cut_short_still_go(tmp_path: Path, writer: str, keep: int) -> None:
    out = tmp_path / "out"
    out.mkdir()
    write_output(out, writer)
    (part,) = out.iterdir()
    cut = out / f"cut{part.suffix}"
    cut.write_bytes(part.read_bytes()[:keep])
    assert sorted(WRITERS[writer](str(out)).committed_ids()) == ["a", "b"]
    assert sorted(p.name for p in out.iterdir()) == [part.name]


# Files the kernel refuses to read, root included (write-only sysfs attributes): an
# output file whose permissions went wrong, for a test that may run as root.
DENIED = ("/sys/bus/platform/uevent", "/sys/bus/platform/drivers_probe")


def unreadable_target() -> str:
    for path in DENIED:
        try:
            os.close(os.open(path, os.O_RDONLY))
        except PermissionError:
            return path
        except OSError:
            continue
    pytest.skip("no file here that every user is refused reading")


# /proc/self/mem has size 0, and a parquet file of 0 bytes is one cut short: the I/O error
# case is for the text writers, which read before they judge.
@pytest.mark.parametrize(
    ("writer", "how"),
    [
        ("parquet", "denied"),
        ("csv", "denied"),
        ("jsonl", "denied"),
        ("csv", "io-error"),
        ("jsonl", "io-error"),
    ],
)
def test_an_output_file_that_cannot_be_read_stops_the_run_and_stays(
    tmp_path: Path, writer: str, how: str
) -> None:
    # Any OSError reading an output file was taken for a file a kill cut short: parquet
    # deleted it (under --replay its rows were then in neither the output nor the
    # records), csv and jsonl ended in a traceback.
    out = tmp_path / "out"
    out.mkdir()
    write_output(out, writer)
    (part,) = out.iterdir()
    cut = out / f"cut{part.suffix}"
    cut.write_bytes(part.read_bytes()[:7])  # cut short: it goes, but not before the stop
    # /proc/self/mem opens, and reading its address 0 is an I/O error (EIO).
    target = unreadable_target() if how == "denied" else "/proc/self/mem"
    bad = out / f"bad{part.suffix}"
    bad.symlink_to(target)
    with pytest.raises(InputError) as stopped:
        WRITERS[writer](str(out)).committed_ids()
    message = str(stopped.value)
    reason = "Permission denied" if how == "denied" else "Input/output error"
    assert message.startswith(f"--resume/--replay: cannot read {bad}: "), message
    assert reason in message and "\n" not in message
    assert message.endswith(" - nothing was removed; run again once it can be read")
    assert stopped.value.exit_code == ExitCode.INPUT_ERROR
    assert sorted(p.name for p in out.iterdir()) == sorted([part.name, cut.name, bad.name])
