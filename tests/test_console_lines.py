"""What the console shows when a run stops on the user's data, through the real CLI: Ray
Data's progress, then the one line that says why - no traceback, no banner asking for a
Ray issue, nothing after it. A bug keeps its traceback (test_plugin_mistakes)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import skimage
from ray.exceptions import UserCodeException

from framework.errors import ExitCode, InputError
from framework.failures import RAY_DATA_STOP_LOGGERS, USER_CODE_ERROR_LINE, said_by_the_cli
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


@pytest.mark.slow  # the parts, quicker: test_retries (the warning), the filter's tests below
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


@pytest.mark.slow  # the damaged file above takes the same path: Ray Data's own code
def test_files_whose_types_clash_are_one_line_at_the_end(tmp_path):
    # Met where Ray Data joins blocks, in its own code: a banner and two tracebacks.
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.jsonl").write_text('{"id": "a", "x": 3}\n')
    (data / "b.jsonl").write_text('{"id": "b", "x": "four"}\n')
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"reader: {{type: jsonl, path: {data}}}\nmodels: [{{type: echo, columns: [x]}}]\n"
        f"writer: {{type: parquet, path: {tmp_path / 'out'}}}\n"
    )
    lines = stderr_of_a_stopped_run(spec, ExitCode.INPUT_ERROR)
    assert lines[-1].startswith(
        f"infer-run: error: reader: {data / 'a.jsonl'} (x: int64) and {data / 'b.jsonl'} "
    )


def record(name: str, error: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(error), error, None) if error is not None else None
    return logging.LogRecord(name, logging.ERROR, "f", 1, "Full stack trace:", None, exc_info)


def test_ray_datas_lines_on_an_error_the_cli_says_itself_are_left_out():
    name = RAY_DATA_STOP_LOGGERS[0]
    assert not said_by_the_cli(record(name, UserCodeException("UDF failed")))
    assert not said_by_the_cli(record(name, InputError("reader: cannot read b.parquet")))
    # Ray Data's own bug keeps its lines, as does a line on no error.
    assert said_by_the_cli(record(name, OSError("Ray Data's own bug")))
    assert said_by_the_cli(record(name))
    on_a_map_function = record(RAY_DATA_STOP_LOGGERS[1])
    on_a_map_function.msg = USER_CODE_ERROR_LINE + ' of operator "MapBatches(...)". ...'
    assert not said_by_the_cli(on_a_map_function)
    # Its banner line is logged without the error, in the handler of it.
    try:
        raise InputError("reader: cannot read b.parquet")
    except InputError:
        assert not said_by_the_cli(record(name))


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("str() of it fails")


def test_an_error_the_filter_cannot_read_keeps_ray_datas_lines():
    # An exception raised by the filter would replace the one Ray Data is handling.
    assert said_by_the_cli(record(RAY_DATA_STOP_LOGGERS[0], Unprintable()))
