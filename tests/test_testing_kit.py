"""The plugin test kit (framework.testing) on the built-ins and on a broken plugin."""

from __future__ import annotations

import numpy as np
import pytest

from framework.plugins import load_registry
from framework.testing import assert_conformant, conformance_problems
from tests.plugins import broken, careless

pytest_plugins = ["pytester"]

SAMPLE = {"id": np.array(["a", "b", "c"], dtype=object), "x": np.array([1.0, 2.0, 3.0])}


@pytest.mark.parametrize(
    ("kind", "name", "params"),
    [
        ("preprocessor", "select_columns", {"columns": ["x"]}),
        ("preprocessor", "rename_columns", {"mapping": {"x": "y"}}),
        ("model", "echo", {"scale": 2.0}),
        ("writer", "parquet", {"path": "/tmp/never-written"}),
        ("writer", "jsonl", {"path": "/tmp/never-written"}),
        ("writer", "csv", {"path": "/tmp/never-written"}),
    ],
)
def test_built_in_plugins_conform(kind, name, params):
    assert_conformant(kind, name, params=params, batch=SAMPLE)


def test_broken_plugin_fails_with_every_reason():
    problems = conformance_problems(
        "preprocessor", "broken", batch=SAMPLE, registry=load_registry([broken])
    )
    assert problems == [
        "preprocessor 'broken': column 'id' has 2 rows for 3",
        "preprocessor 'broken': column 'score' has 2 rows for 3",
        "preprocessor 'broken': ids changed or were reordered",
        "preprocessor 'broken': column 'score' has dtype int64, declared float32",
        "preprocessor 'broken': declared output column 'label' is missing",
        "preprocessor 'broken': the same input gave a different output the second time",
        "preprocessor 'broken' on an empty batch: column 'score' has dtype int64, declared float32",
        "preprocessor 'broken' on an empty batch: declared output column 'label' is missing",
    ]


def test_unknown_params_and_names_are_reported():
    assert conformance_problems("model", "echo", params={"scael": 1}, batch=SAMPLE) == [
        "model 'echo': scael: unknown parameter for model 'echo' - did you mean 'scale'?"
    ]
    assert conformance_problems("model", "ecoh") == ["unknown model 'ecoh' - did you mean 'echo'?"]


def test_run_spec_fixture_runs_through_the_cli(run_spec, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ["a", "b"], "x": [1.0, 2.0]}), tmp_path / "in.parquet")
    result = run_spec(
        {
            "reader": {"type": "parquet", "path": str(tmp_path / "in.parquet")},
            "models": [{"type": "echo", "scale": 10}],
            "writer": {"type": "parquet", "path": "ignored"},
        }
    )
    assert result.code == 0
    assert sorted((r["id"], r["x_echo"]) for r in result.rows()) == [("a", 10.0), ("b", 20.0)]
    assert result.report["rows_written"] == 2


@pytest.mark.parametrize("suffix", [".csv", ".json", ".parquet"])
def test_spec_run_reads_the_output_of_every_built_in_writer(tmp_path, suffix):
    """SpecRun.rows() read a CSV writer's files as JSON lines and failed."""
    import json

    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from framework.testing import SpecRun

    table = pa.table({"id": ["a", "b"], "x": [1.0, 2.0]})
    part = tmp_path / f"part-0{suffix}"
    if suffix == ".csv":
        pacsv.write_csv(table, part)
    elif suffix == ".json":
        part.write_text("".join(json.dumps(row) + "\n" for row in table.to_pylist()))
    else:
        pq.write_table(table, part)
    (tmp_path / "_infer_run_report.json").write_text('{"rows_written": 2}')
    run = SpecRun(0, tmp_path)
    assert run.report == {"rows_written": 2}
    assert sorted((r["id"], r["x"]) for r in run.rows()) == [("a", 1.0), ("b", 2.0)]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A real file for every built-in reader."""
    import io
    import tarfile

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    root = tmp_path_factory.mktemp("kit")
    png = io.BytesIO()
    Image.new("RGB", (8, 6), (200, 10, 10)).save(png, format="PNG")
    pq.write_table(pa.table({"id": ["a"], "x": [1.0]}), root / "rows.parquet")
    (root / "rows.jsonl").write_text('{"id": "a", "x": 1.0}\n')
    pq.write_table(pa.table({"id": ["a"], "image": [png.getvalue()]}), root / "images.parquet")
    (root / "folder").mkdir()
    (root / "folder" / "a.png").write_bytes(png.getvalue())
    with tarfile.open(root / "shard-0.tar", "w") as tar:
        info = tarfile.TarInfo("a.png")
        info.size = len(png.getvalue())
        tar.addfile(info, io.BytesIO(png.getvalue()))
    return root


READERS = {
    "parquet": "rows.parquet",
    "jsonl": "rows.jsonl",
    "image_parquet": "images.parquet",
    "image_folder": "folder",
    "webdataset": "shard-0.tar",
}


@pytest.mark.parametrize("name", sorted(READERS))
def test_built_in_readers_conform(name, inputs):
    assert_conformant("reader", name, params={"path": str(inputs / READERS[name])})


def test_every_built_in_plugin_is_covered_by_a_conformance_test():
    # Stages of the vision package are checked in test_vision.py with image batches.
    covered = {
        ("preprocessor", "select_columns"),
        ("preprocessor", "rename_columns"),
        ("model", "echo"),
        ("writer", "parquet"),
        ("writer", "jsonl"),
        ("writer", "csv"),
        *(("reader", name) for name in READERS),
        ("preprocessor", "decode_image"),
        ("preprocessor", "image_transform"),
        ("preprocessor", "topk"),
        ("model", "torchvision"),
        ("model", "timm"),
        ("model", "torchscript"),
    }
    built_in = {(e.kind, e.name) for e in load_registry().all() if e.distribution == "infer-run"}
    assert built_in == covered


def test_torchscript_model_conforms(tmp_path):
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 5),
    ).eval()
    path = tmp_path / "tiny.pt"
    torch.jit.script(net).save(str(path))
    pixels = {
        "id": np.arange(2),
        "image": np.random.default_rng(0).integers(0, 256, (2, 3, 16, 16), dtype=np.uint8),
    }
    assert_conformant("model", "torchscript", params={"path": str(path)}, batch=pixels)


@pytest.mark.parametrize(("how", "returned"), [("dataframe", "DataFrame"), ("rows", "list")])
def test_a_stage_returning_no_dict_is_reported_not_a_crash_of_the_kit(how, returned):
    problems = conformance_problems(
        "preprocessor",
        "breaks_contract",
        params={"how": how},
        batch=SAMPLE,
        registry=load_registry([careless]),
    )
    expected = f"returned {returned}, expected dict[str, numpy.ndarray]"
    assert problems == [
        f"preprocessor 'breaks_contract': {expected}",
        f"preprocessor 'breaks_contract' on an empty batch: {expected}",
    ]


def test_a_stage_is_built_from_its_worker_params_as_a_run_builds_it():
    problems = conformance_problems(
        "preprocessor", "forgets_params", batch=SAMPLE, registry=load_registry([careless])
    )
    assert problems == [
        "preprocessor 'forgets_params': ForgetsParams(**worker_params(params)) raised "
        "TypeError: ForgetsParams.__init__() got an unexpected keyword argument 'word_list'"
    ]


@pytest.mark.parametrize(
    ("name", "what"),
    [
        ("check_raises", "raised FileNotFoundError: vocab.txt"),
        ("check_returns_text", "returned str, expected a list of problem lines"),
    ],
)
def test_a_broken_check_is_one_line_as_validation_gives_it(name, what):
    problems = conformance_problems(
        "preprocessor", name, batch=SAMPLE, registry=load_registry([careless])
    )
    assert problems == [f"preprocessor {name!r}: check() {what}"]


CRASHING_PLUGIN = """
import sys

import numpy as np
import pytest

from framework import Preprocessor, hookimpl
from framework.plugins import load_registry
from framework.testing import assert_conformant


def open_vocabulary(path):
    raise FileNotFoundError(path)


class NeedsVocab(Preprocessor):
    def __init__(self, vocab: str = "vocab.txt", when: str = "built") -> None:
        self.vocab, self.when = vocab, when
        if when == "built":
            open_vocabulary(vocab)

    def __call__(self, batch):
        open_vocabulary(self.vocab)


@hookimpl
def register_preprocessors(register):
    register("needs_vocab", NeedsVocab)


@pytest.mark.parametrize("when", ["built", "called"])
def test_conforms(when):
    batch = {"id": np.array(["a"], dtype=object)}
    registry = load_registry([sys.modules[__name__]])
    assert_conformant("preprocessor", "needs_vocab", params={"when": when}, batch=batch,
                      registry=registry)
"""


def test_a_crashing_plugin_fails_the_kit_with_its_own_traceback(pytester: pytest.Pytester):
    # The one-line problem alone does not say where in the plugin's code it failed.
    pytester.makepyfile(test_kit_crash=CRASHING_PLUGIN)
    # In a process of its own: an in-process run drops the plugin modules it imported from
    # sys.modules, and importing them again (torch's extensions) fails the later tests.
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=2)
    shown: list[str] = []
    for when, line in (
        ("built", "open_vocabulary(vocab)"),
        ("called", "open_vocabulary(self.vocab)"),
    ):
        shown += [
            f"*_ test_conforms[[]{when}[]] _*",
            f">*{line}",  # the plugin's own frame, then the line that raised
            "*raise FileNotFoundError(path)",
            "E *FileNotFoundError: vocab.txt",
            "*direct cause of the following exception*",
            "E *AssertionError: preprocessor 'needs_vocab*raised FileNotFoundError: vocab.txt",
        ]
    result.stdout.fnmatch_lines(shown)


def test_a_raising_check_is_chained_too():
    with pytest.raises(AssertionError) as info:
        assert_conformant(
            "preprocessor", "check_raises", batch=SAMPLE, registry=load_registry([careless])
        )
    assert (
        str(info.value)
        == "preprocessor 'check_raises': check() raised FileNotFoundError: vocab.txt"
    )
    assert isinstance(info.value.__cause__, FileNotFoundError)


def test_a_0d_column_is_a_problem_not_a_type_error():
    problems = conformance_problems(
        "preprocessor",
        "breaks_contract",
        params={"how": "scalar_column"},
        batch=SAMPLE,
        registry=load_registry([careless]),
    )
    assert (
        "preprocessor 'breaks_contract': column 'score' is a 0-d array, not one value per row"
        in problems
    )
