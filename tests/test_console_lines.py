"""What the console shows when a run stops on the user's data, through the real CLI: Ray
Data's progress, then the one line that says why - no traceback, no banner asking for a
Ray issue, nothing after it. A bug keeps its traceback (test_plugin_mistakes)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import skimage

from framework.errors import ExitCode
from framework.failures import USER_CODE_LINES, _said_by_the_cli
from tests.helpers import run_cli
from tests.test_bad_inputs import damaged_past_the_footer, table_spec

pytestmark = pytest.mark.ray

RAY_DATA_LINES = ("Traceback", "Exception occurred in", "An exception was raised from a task")


def stderr_of_a_stopped_run(spec: Path, code: ExitCode) -> list[str]:
    done = run_cli(str(spec))
    assert done.returncode == code, done.stderr[-3000:]
    for line in RAY_DATA_LINES:
        assert line not in done.stderr, done.stderr[-3000:]
    return done.stderr.splitlines()


def test_a_damaged_file_under_fail_is_one_line_at_the_end(tmp_path):
    # It is met in Ray Data's read code, whose errors it takes for its own bugs: 319 lines.
    damaged = damaged_past_the_footer(tmp_path / "data")
    lines = stderr_of_a_stopped_run(
        table_spec(tmp_path, tmp_path / "data", "fail"), ExitCode.INPUT_ERROR
    )
    assert lines[-1].startswith(f"infer-run: error: reader: cannot read {damaged}: OSError: ")
    assert sum(str(damaged) in line for line in lines) == 1


def test_a_bad_row_under_fail_is_named_once_at_the_end(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(Path(skimage.data_dir) / "camera.png", images / "a.png")
    (images / "b.png").write_text("not an image")
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"errors: {{policy: fail}}\nreader: {{type: image_folder, path: {images}}}\n"
        f"preprocessors: [{{type: decode_image}}]\nwriter: {{type: parquet, path: {tmp_path / 'out'}}}\n"
    )
    lines = stderr_of_a_stopped_run(spec, ExitCode.RUN_FAILED)
    # The worker's warning on the row said it too, and reached the console after this.
    assert lines[-1].startswith("infer-run: error: row 'b.png' failed in preprocessors[0]: ")
    assert sum("'b.png'" in line for line in lines) == 1


def record(name: str, message: str, error: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(error), error, None) if error is not None else None
    return logging.LogRecord(name, logging.ERROR, "f", 1, message, None, exc_info)


def test_only_ray_datas_lines_on_a_map_functions_error_are_left_out():
    for name, start in USER_CODE_LINES.items():
        assert not _said_by_the_cli(record(name, start + " ... abort."))
        # Ray Data's own error: with its traceback, kept.
        assert _said_by_the_cli(record(name, start + " ... abort.", OSError("internal")))
        assert _said_by_the_cli(record(name, "Exception occurred in Ray Data or Ray Core"))
    assert _said_by_the_cli(record("ray.data.other", next(iter(USER_CODE_LINES.values()))))
