from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from framework.cli import main
from framework.errors import ExitCode, InputError, SpecError
from framework.plugins import load_registry
from framework.spec import load_spec, validate_spec
from tests.plugins import upper


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": ["a", "b", "c"], "x": np.arange(3.0)}), path)
    return path


def write_spec(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(textwrap.dedent(text))
    return path


GOOD = """\
vars:
  root: {root}
reader: {{type: parquet, path: "${{vars.root}}/in.parquet"}}
models:
  - type: echo
    scale: 2
writer: {{type: parquet, path: "${{oc.env:INFER_TEST_OUT,{root}/out}}"}}
"""


def test_interpolation_env_default_and_overrides(tmp_path, data, monkeypatch):
    path = write_spec(tmp_path, GOOD.format(root=tmp_path))
    registry = load_registry()
    spec = validate_spec(load_spec(path), registry)
    assert spec.reader.params["path"] == f"{tmp_path}/in.parquet"
    assert spec.writer.params["path"] == f"{tmp_path}/out"
    assert spec.models[0].params == {"columns": None, "scale": 2.0, "delay_s": 0.0}

    monkeypatch.setenv("INFER_TEST_OUT", "/elsewhere")
    overrides = ["models.0.scale=3.5", "models.0.resources.actors=[1,2]", "run.limit=2"]
    spec = validate_spec(load_spec(path, overrides), registry)
    assert spec.writer.params["path"] == "/elsewhere"
    assert spec.models[0].params["scale"] == 3.5
    assert spec.models[0].resources.actors == [1, 2]
    assert spec.run.limit == 2


def test_tilde_deletes_keys_and_list_items(tmp_path, data):
    path = write_spec(tmp_path, GOOD.format(root=tmp_path))
    cfg = load_spec(path, ["~models.0.scale", "~vars"])
    assert "scale" not in cfg.models[0]
    assert "vars" not in cfg
    cfg = load_spec(path, ["~models.0"])
    assert len(cfg.models) == 0
    # Problems name list items as models[0]: that form, copied back, works for ~ as for =.
    cfg = load_spec(path, ["models[0].scale=4", "~models[0].scale"])
    assert "scale" not in cfg.models[0]
    assert len(load_spec(path, ["~models[0]"]).models) == 0


def test_override_can_add_a_whole_stage(tmp_path, data):
    path = write_spec(tmp_path, GOOD.format(root=tmp_path))
    spec = validate_spec(
        load_spec(path, ["preprocessors=[{type: select_columns, columns: [x]}]"]), load_registry()
    )
    assert spec.preprocessors[0].type == "select_columns"
    assert spec.preprocessors[0].params["columns"] == ["x"]


def test_a_node_in_flow_form_replaces_the_old_node_and_a_dotted_key_sets_one_key(tmp_path, data):
    path = write_spec(tmp_path, GOOD.format(root=tmp_path))
    cfg = load_spec(path, ["models.0={type: upper, column: x}", "reader.columns=[x]"])
    # The echo node's scale is gone with it (merged, it stayed and failed validation).
    assert dict(cfg.models[0]) == {"type": "upper", "column": "x"}
    assert list(cfg.reader.columns) == ["x"]
    assert cfg.reader.path == f"{tmp_path}/in.parquet"  # a dotted key sets one key only
    cfg = load_spec(path, ["writer={type: jsonl, path: /elsewhere}", "vars.root=[a, b]"])
    assert dict(cfg.writer) == {"type": "jsonl", "path": "/elsewhere"}
    assert list(cfg.vars.root) == ["a", "b"]
    cfg = load_spec(path, ["models.0.resources={actors: 2}", "models.0.resources={batch_size: 4}"])
    assert dict(cfg.models[0].resources) == {"batch_size": 4}
    assert cfg.models[0].scale == 2


def test_defaults_from_plugin_are_overridden_key_by_key(tmp_path, data):
    path = write_spec(tmp_path, GOOD.format(root=tmp_path))
    overrides = ["preprocessors=[{type: upper, column: x}]", "preprocessors.0.resources.num_cpus=2"]
    spec = validate_spec(load_spec(path, overrides), load_registry([upper]))
    resources = spec.preprocessors[0].resources
    assert resources.batch_size == 8  # from Upper.default_resources
    assert resources.num_cpus == 2  # the spec wins


def yaml_says(libyaml: str, pure_python: str) -> tuple[str, str]:
    """A YAML syntax problem in the words of either PyYAML parser, the same place either way.

    OmegaConf 2.4 parses with libyaml where PyYAML has it; 2.3 (our floor) always with the
    pure-Python parser, which words the same mistake differently.
    """
    return (libyaml, pure_python)


BAD_SPECS = [
    pytest.param(
        "reader: {type: parquett, path: @IN@}\nwriter: {type: parquet, path: @OUT@}\n",
        [],
        ["reader.type: unknown reader 'parquett' - did you mean 'parquet'?"],
        id="unknown-reader",
    ),
    pytest.param(
        "reader: {type: parquet, path: @IN@}\nmodel: []\nwriter: {type: parquet, path: @OUT@}\n",
        [],
        ["model: unknown section - did you mean 'models'?"],
        id="unknown-section",
    ),
    pytest.param(
        "reader: {type: parquet, path: @IN@}\nrun: {limt: 3}\nwriter: {type: parquet, path: @OUT@}\n",
        [],
        ["run.limt: unknown key - did you mean 'limit'?"],
        id="unknown-key",
    ),
    pytest.param(
        "reader: {type: parquet, path: @IN@}\nmodels: [{type: echo, scael: 2}]\n"
        "writer: {type: parquet, path: @OUT@}\n",
        [],
        ["models[0].scael: unknown parameter for model 'echo' - did you mean 'scale'?"],
        id="unknown-param",
    ),
    pytest.param(
        "reader: {type: parquet, path: @IN@}\nmodels: [{type: echo, batch_size: 4}]\n"
        "writer: {type: parquet, path: @OUT@}\n",
        [],
        [
            "models[0].batch_size: unknown parameter for model 'echo' - did you mean resources.batch_size?"
        ],
        id="resource-key-beside-type",
    ),
    pytest.param(
        "reader: {type: parquet, path: @IN@}\n"
        "models: [{type: torchscript, path: m.pt, batch_size: 4, num_cpus: 2}]\n"
        "writer: {type: parquet, path: @OUT@}\n",
        [],
        [
            "models[0].batch_size: unknown parameter for model 'torchscript' - did you mean resources.batch_size?",
            "models[0].num_cpus: unknown parameter for model 'torchscript' - did you mean resources.num_cpus?",
            "models[0].path: file m.pt does not exist",
        ],
        id="resource-key-close-to-a-parameter",
    ),
    pytest.param(
        "reader: {type: parquet, path: @IN@}\nwriter: {type: parquet}\n",
        [],
        ["writer.path: missing required parameter for writer 'parquet'"],
        id="missing-param",
    ),
    pytest.param(
        "reader: {type: parquet, path: @IN@}\nmodels: [{type: echo, scale: big}]\n"
        "writer: {type: parquet, path: @OUT@}\n",
        [],
        ["models[0].scale: expected float, got str 'big'"],
        id="wrong-param-type",
    ),
    pytest.param(
        # A wrong type hides none of the node's other problems, and is told in the
        # plugin's own words where its check() has some. YAML's yes is true.
        "reader: {type: parquet, path: @IN@}\n"
        "models: [{type: torchvision, name: resnet18, weights: random, precision: fp64,"
        " compile: fast, micro_batch: 0, fold_batch_norm: 1, decode_on_device: 'yes',"
        " keep_image: yes, micro_batch_max: [2], wieghts: x}]\n"
        "writer: {type: parquet, path: @OUT@}\n",
        [],
        [
            "models[0].fold_batch_norm: expected true, false or 'auto', got 1",
            "models[0].decode_on_device: expected true or false, got 'yes'",
            "models[0].micro_batch_max: expected a number of rows >= 1, got [2]",
            "models[0].wieghts: unknown parameter for model 'torchvision' - did you mean 'weights'?",
            "models[0].precision: 'fp64' is not one of auto, fp32, fp16, bf16",
            "models[0].compile: expected false, true or one of default, reduce-overhead, "
            "max-autotune, max-autotune-no-cudagraphs, got 'fast'",
            "models[0].micro_batch: expected null (the whole batch), a number of rows >= 1 or "
            "'auto', got 0",
        ],
        id="a-wrong-type-hides-no-other-problem",
    ),
    pytest.param(
        # check() is left out when a required parameter is missing or wrongly typed: a
        # plugin's check may rely on it. Where its check() has no words, the type's stay.
        "reader: {type: parquet, path: @IN@, id_column: key, columns: 5}\n"
        "writer: {type: parquet, path: 7}\n",
        [],
        [
            "reader.columns: expected list[str] | None, got int 5",
            "reader.id_column: @IN@ has no column 'key' (columns: id, x)",
            "writer.path: expected str, got int 7",
        ],
        id="wrong-types-beside-check-problems",
    ),
    pytest.param(
        "reader: {type: parquet, path: @IN@}\nmodels: [{type: echo}]\nwriter: {type: parquet, path: @OUT@}\n",
        ["models.0.resources.num_gpu=1", "models.0.resources.actors=[4,2]", "run.limit=ten"],
        [
            "run.limit: expected int | None, got str 'ten'",
            "models[0].resources.num_gpu: unknown key - did you mean 'num_gpus'?",
            "models[0].resources.actors: expected a pool size n >= 1 or [min, max] with min <= max, got [4, 2]",
        ],
        id="resources-and-types",
    ),
    pytest.param(
        "reader: {type: parquet, path: @IN@}\nwriter: {type: parquet, path: @OUT@}\n",
        ["run.inflight_mb_per_node=-5", "run.inflight_mb_per_cpu=-1", "run.block_mb=0"],
        [
            "run.block_mb: must be positive, got 0.0",
            "run.inflight_mb_per_node: must be positive (null: Ray Data's default), got -5.0",
            "run.inflight_mb_per_cpu: must not be negative, got -1.0",
        ],
        id="run-budgets",
    ),
    pytest.param(
        "reader: {type: parquet, path: @IN@}\nwriter: {type: parquet, path: @OUT@}\n",
        [
            "run.data_context.downstream_capacity_backpresure_ratio=4",
            "run.data_context.target_max_block_size=1000",
            "run.data_context.max_errored_blocks=3",
        ],
        [
            "run.data_context.downstream_capacity_backpresure_ratio: not a setting of Ray "
            "Data's DataContext - did you mean 'downstream_capacity_backpressure_ratio'?",
            "run.data_context.target_max_block_size: set by infer-run; use run.block_mb",
        ],
        id="data-context",
    ),
    pytest.param(
        "reader: {type: parquet, path: @IN@/missing.parquet}\nwriter: {type: parquet, path: @OUT@}\n",
        [],
        ["reader.path: no parquet data at @IN@/missing.parquet"],
        id="missing-input",
    ),
    pytest.param(
        "reader: {type: parquet, path: @IN@, id_column: key}\nwriter: {type: parquet, path: @OUT@}\n",
        [],
        ["reader.id_column: @IN@ has no column 'key' (columns: id, x)"],
        id="missing-id-column",
    ),
    pytest.param(
        "reader: {type: parquet, path: '${oc.env:INFER_NO_SUCH_VAR}'}\nwriter: {type: parquet, path: @OUT@}\n",
        [],
        ["reader.path: Environment variable 'INFER_NO_SUCH_VAR' not found"],
        id="missing-env-var",
    ),
    pytest.param(
        "reader: {type: parquet, path: @IN@}\nwriter: {type: parquet, path: @OUT@}\n",
        ["run.limit", "~nothing.here"],
        [
            "override 'run.limit': expected key=value or ~key",
            "override '~nothing.here': no such key in the spec",
        ],
        id="bad-overrides",
    ),
    pytest.param(
        "reader: {type: parquet, path: @IN@}\nwriter: {type: parquet, path: @OUT@}\nmodels:\n - type: echo\n  bad",
        [],
        [
            yaml_says(
                "line 5, column 3: invalid YAML: did not find expected '-' indicator",
                "line 5, column 3: invalid YAML: expected <block end>, but found '<scalar>'",
            )
        ],
        id="yaml-syntax",
    ),
    pytest.param(
        "writer: {type: parquet, path: @OUT@}\npreprocessors: {type: select_columns}\n",
        [],
        [
            "reader: missing - every spec needs a reader",
            "preprocessors: expected a list of preprocessor nodes, got a mapping",
        ],
        id="structure",
    ),
    pytest.param(
        # An empty mapping, string or false counted as no models: the run had none.
        "reader: {type: parquet, path: @IN@}\nwriter: {type: parquet, path: @OUT@}\n"
        "models: {}\npreprocessors: ''\npostprocessors: false\n",
        [],
        [
            "preprocessors: expected a list of preprocessor nodes, got str",
            "models: expected a list of model nodes, got a mapping",
            "postprocessors: expected a list of preprocessor nodes, got bool",
        ],
        id="empty-non-lists",
    ),
    pytest.param(
        "reader: {type: parquet, path: @IN@}\nwriter: {type: parquet, path: @OUT@}\n",
        ["ray.address=ray://head:10001"],
        [
            "ray.address: ray://head:10001 is a Ray Client address, and Ray Data does not run "
            "over Ray Client - run infer-run on a node of the cluster with --address auto, or "
            "submit it as a Ray Job: ray job submit --working-dir . -- infer-run SPEC --address auto"
        ],
        id="ray-client",
    ),
    pytest.param(
        "reader: {type: parquet, path: @IN@}\nwriter: {type: parquet, path: @OUT@}\n",
        [
            "errors.retries=-1",
            "errors.retry_backoff_s=-2",
            "errors.retry_on=[ConnectionError,'a b']",
            "errors.batch_timeout_s=0",
        ],
        [
            "errors.retries: must not be negative, got -1",
            "errors.retry_backoff_s: must not be negative, got -2.0",
            "errors.batch_timeout_s: must be positive or null, got 0.0",
            "errors.retry_on: exception class names expected, got 'a b'",
        ],
        id="retries",
    ),
    pytest.param(
        "reader: {type: parquet, path: @IN@}\nmodels: [{type: echo}]\nwriter: {type: parquet, path: @OUT@}\n",
        [
            "models.0.resources.batch_size=abc",
            "run.limt=3",
            "~nosuch",
            "models.x.type=echo",
            "reader.path=: x",
            "~models.x.type",
            "models.0.resources.actors=[1, ${run.limit}]",
        ],
        [
            "override '~nosuch': no such key in the spec",
            "override 'models.x.type=echo': Index 'x' (str) is not an int",
            yaml_says(
                "override 'reader.path=: x': invalid YAML value: did not find expected key",
                "override 'reader.path=: x': invalid YAML value: expected <block end>, but found ':'",
            ),
            "override '~models.x.type': no such key in the spec",
            yaml_says(
                "override 'models.0.resources.actors=[1, ${run.limit}]': invalid YAML value: did "
                "not find expected ',' or ']' - quote an interpolation inside [...] or {...}: \"${...}\"",
                "override 'models.0.resources.actors=[1, ${run.limit}]': invalid YAML value: "
                "expected ',' or ']', but got '{' - quote an interpolation inside [...] or {...}: \"${...}\"",
            ),
            "run.limt: unknown key - did you mean 'limit'?",
            "models[0].resources.batch_size: expected int | None, got str 'abc'",
        ],
        id="bad-overrides-beside-other-problems",
    ),
    pytest.param(
        "reader: {type: parquet, path: @IN@, resources: {batch_size: 7, num_gpus: 1}}\n"
        "preprocessors: [{type: select_columns, resources: {max_tasks_in_flight_per_actor: 2}}]\n"
        "models: [{type: echo, resources: 5}, {type: echo, resources: {max_tasks_in_flight_per_actor: 0}}]\n"
        "writer: {type: parquet, path: @OUT@, resources: {actors: 2}}\n",
        [],
        [
            "reader.resources.batch_size: not used by a reader, whose Ray Data tasks take only num_cpus",
            "reader.resources.num_gpus: not used by a reader, whose Ray Data tasks take only num_cpus",
            "writer.resources.actors: not used by a writer, whose Ray Data tasks take only num_cpus",
            "preprocessors[0].resources.max_tasks_in_flight_per_actor: only for stages in actor "
            "pools (models, or a CPU stage given actors)",
            "models[0].resources: expected a mapping, got int",
            "models[1].resources.max_tasks_in_flight_per_actor: must be at least 1, got 0",
        ],
        id="resources-a-stage-never-uses",
    ),
    pytest.param(
        "reader: {type: parquet, path: @IN@}\nwriter: {type: parquet, path: @OUT@}\n",
        [
            "ray.address=nonsense",
            "ray.num_cpus=0",
            "ray.object_store_memory=5",
            "errors.policy=skipp",
            "run.report=@IN@/report.json",
        ],
        [
            "errors.policy: expected one of fail, skip, got 'skipp' - did you mean 'skip'?",
            "ray.address: expected auto or the head node's host:port (e.g. 10.0.0.5:6379), "
            "got 'nonsense'",
            "ray.num_cpus: must be at least 1, got 0",
            "ray.object_store_memory: at least 78643200 bytes (75 MiB, Ray's minimum), got 5",
            "run.report: cannot write @IN@/report.json: @IN@ is a file, not a directory",
        ],
        id="ray-errors-and-report-path",
    ),
]


BAD_SPECS.append(
    pytest.param(
        # A key with an empty part made a key '' (under vars, silently; elsewhere an
        # "unknown key" named `run.`).
        "reader: {type: parquet, path: @IN@}\nmodels: [{type: echo}]\nwriter: {type: parquet, path: @OUT@}\n",
        [
            "vars..root=x",
            "run.=x",
            ".run.limit=3",
            "models.0..scale=2",
            "~models[3]",
            "~run..limit",
        ],
        [
            "override 'vars..root=x': a key part is empty - keys are dotted names, e.g. "
            "models.0.resources.batch_size",
            "override 'run.=x': a key part is empty - keys are dotted names, e.g. "
            "models.0.resources.batch_size",
            "override '.run.limit=3': a key part is empty - keys are dotted names, e.g. "
            "models.0.resources.batch_size",
            "override 'models.0..scale=2': a key part is empty - keys are dotted names, e.g. "
            "models.0.resources.batch_size",
            "override '~models[3]': no such key in the spec",
            "override '~run..limit': a key part is empty - keys are dotted names, e.g. "
            "models.0.resources.batch_size",
        ],
        id="empty-key-parts",
    )
)
SHAPE = "the spec must be a mapping of sections (reader, models, writer, ...)"
BAD_SPECS += [
    # A YAML document that is one number or boolean broke OmegaConf with an assertion (a
    # traceback, exit code 1); one string became a section of that name.
    pytest.param("42\n", [], [f"{SHAPE}, got int 42"], id="a-number"),
    pytest.param("true\n", [], [f"{SHAPE}, got bool True"], id="a-boolean"),
    pytest.param("reader parquet\n", [], [f"{SHAPE}, got str 'reader parquet'"], id="a-string"),
    pytest.param("- reader\n- writer\n", [], [f"{SHAPE}, got a list"], id="a-list"),
    pytest.param(
        # Every broken interpolation by its key, on one line each: OmegaConf told only the
        # first, over three lines ("full_key: ...").
        "vars: {a: [1, '${oc.env:X,${}']}\nreader: {type: parquet, path: '${vars.x'}\n"
        "writer: {type: parquet, path: '@OUT@/${'}\n",
        [],
        [
            "vars.a[1]: invalid interpolation '${oc.env:X,${}': no viable alternative at "
            "input '${}'",
            "reader.path: invalid interpolation '${vars.x': no viable alternative at input "
            "'${vars.x'",
            "writer.path: invalid interpolation '@OUT@/${': no viable alternative at input '${'",
        ],
        id="interpolation-syntax",
    ),
]

BAD_SPECS += [
    pytest.param(
        # Infinite or huge values passed every "must be positive" check, then the run
        # stopped with a traceback (int(inf) for the block size; time.sleep and
        # Event.wait overflow past threading.TIMEOUT_MAX, in the workers).
        "reader: {type: parquet, path: @IN@}\nwriter: {type: parquet, path: @OUT@}\n",
        [
            "run.block_mb=.inf",
            "run.inflight_mb_per_node=.inf",
            "run.inflight_mb_per_cpu=.inf",
            "errors.batch_timeout_s=1e10",
            "errors.retries=5000",
        ],
        [
            "errors.retry_backoff_s: 0.5 s, doubled for each of 5000 retries, waits longer "
            "than Python can (9223372036 s) - lower errors.retries or errors.retry_backoff_s",
            "errors.batch_timeout_s: at most 9223372036 s (the longest wait Python takes), "
            "got 10000000000.0",
            "run.block_mb: must be a finite number, got inf",
            "run.inflight_mb_per_node: must be a finite number (null: Ray Data's default), got inf",
            "run.inflight_mb_per_cpu: must be a finite number, got inf",
        ],
        id="infinite-and-huge-numbers",
    ),
    pytest.param(
        # A misspelt storage key got the list of known keys, not the one it is close to.
        "reader: {type: parquet, path: @IN@, storage: {regoin: eu-west-1, secret: x}}\n"
        "writer: {type: parquet, path: @OUT@}\n",
        [],
        [
            "reader.storage.regoin: unknown key - did you mean 'region'?",
            "reader.storage.secret: unknown key (known: endpoint_url, region, access_key_id, "
            "secret_access_key, session_token, anonymous)",
        ],
        id="storage-key-misspelt",
    ),
    pytest.param(
        # A control character (a terminal colour pasted in) was told over two lines, the
        # second a character offset ("in "<unicode string>", position 96"), not a line.
        "reader: {type: parquet, path: @IN@}\nwriter: {type: parquet, path: @OUT@}\n"
        'run: {name: "\x1b[31mred"}\n',
        [],
        [
            yaml_says(
                "line 3, column 14: invalid YAML: unacceptable character #x001b: control "
                "characters are not allowed",
                "line 3, column 14: invalid YAML: unacceptable character #x001b: special "
                "characters are not allowed",
            )
        ],
        id="control-character",
    ),
    pytest.param(
        "reader: {type: parquet, path: @IN@}\nwriter: {type: parquet, path: @OUT@}\n",
        ["run.name=\x1b[31mred"],
        [
            yaml_says(
                "override 'run.name=\\x1b[31mred': invalid YAML value: unacceptable character "
                "#x001b: control characters are not allowed",
                "override 'run.name=\\x1b[31mred': invalid YAML value: unacceptable character "
                "#x001b: special characters are not allowed",
            )
        ],
        id="control-character-in-an-override",
    ),
    pytest.param(
        # A stray "-" (an empty item) was dropped without a word: the model after it ran as
        # models[0] under the path models[1], and ${models.0} found nothing.
        "reader: {type: parquet, path: @IN@}\nwriter: {type: parquet, path: @OUT@}\n"
        "models:\n  -\n  - type: echo\npostprocessors: [{type: select_columns}, null]\n",
        [],
        [
            "models[0]: expected a mapping with a 'type' key, got null",
            "postprocessors[1]: expected a mapping with a 'type' key, got null",
        ],
        id="an-empty-list-item",
    ),
    pytest.param(
        # Ray Data refuses a count below 1 only when the run reads or writes: a traceback.
        "reader: {type: parquet, path: @IN@, num_blocks: 0}\n"
        "writer: {type: parquet, path: @OUT@, rows_per_file: -1}\n",
        [],
        [
            "reader.num_blocks: must be at least 1 (null: Ray Data's choice), got 0",
            "writer.rows_per_file: must be at least 1 (null: Ray Data's choice), got -1",
        ],
        id="counts-below-one",
    ),
    pytest.param(
        # Validation passed; the run then stopped on a "plugin bug" once the id was gone.
        "reader: {type: parquet, path: @IN@}\nwriter: {type: parquet, path: @OUT@}\n"
        "postprocessors:\n  - {type: select_columns, drop: [x, id]}\n"
        "  - {type: rename_columns, mapping: {id: key, x: id, y: y2}}\n",
        [],
        [
            "postprocessors[0].drop: 'id' names the rows and cannot be dropped",
            "postprocessors[1].mapping: 'id' names the rows and cannot be renamed",
            "postprocessors[1].mapping: 'x' cannot be renamed to 'id', which names the rows",
        ],
        id="the-id-column-dropped-or-renamed",
    ),
    pytest.param(
        # A list where a section key wants a mapping, or a mapping where it wants a list,
        # broke OmegaConf's merge with a TypeError: a traceback, exit code 1.
        "reader: {type: parquet, path: @IN@}\nwriter: {type: parquet, path: @OUT@}\n"
        "models: [{type: echo, resources: {custom: [gpu_node]}}]\n",
        [
            "run.data_context=[a]",
            "ray.runtime_env=[x]",
            "benchmark.floors=[1]",
            "errors.retry_on={ConnectionError: 1}",
        ],
        [
            "ray.runtime_env: expected dict[str, Any], got a list ['x']",
            "run.data_context: expected dict[str, Any], got a list ['a']",
            "errors.retry_on: expected list[str], got a mapping {'ConnectionError': 1}",
            "benchmark.floors: expected dict[str, float], got a list [1]",
            "models[0].resources.custom: expected dict[str, float], got a list ['gpu_node']",
        ],
        id="a-list-for-a-mapping-and-back",
    ),
    pytest.param(
        # "reader.type: missing" sent the user looking for a key that is there, misspelt.
        "reader: {Type: parquet, path: @IN@}\nwriter: {type: parquet, path: @OUT@}\n"
        "models: [{typ: echo}]\n",
        [],
        [
            "reader.Type: unknown key - did you mean 'type'?",
            "models[0].typ: unknown key - did you mean 'type'?",
        ],
        id="type-misspelt",
    ),
    pytest.param(
        # OmegaConf's "Incompatible key type 'NoneType'" named no place.
        "reader: {type: parquet, path: @IN@}\nwriter: {type: parquet, path: @OUT@}\n"
        "models:\n  - type: echo\n    null: 3\nvars: {~: 1}\n",
        [],
        [
            "models[0]: a key is null (null: or ~:) - keys are names",
            "vars: a key is null (null: or ~:) - keys are names",
        ],
        id="a-null-key",
    ),
    pytest.param(
        # ${oc.env:...} gives a string, which a number parameter refuses: say how to read
        # it as YAML, as storage.anonymous does.
        "reader: {type: parquet, path: @IN@}\nwriter: {type: parquet, path: @OUT@}\n"
        "models: [{type: echo, scale: '${oc.env:INFER_NO_SUCH_VAR,2}', delay_s: 'no'}]\n",
        [],
        [
            "models[0].scale: expected float, got str '2' - a number in quotes, or from "
            "${oc.env:VAR} (a string): ${oc.decode:${oc.env:VAR}} reads it as YAML",
            "models[0].delay_s: expected float, got str 'no'",
        ],
        id="a-number-as-a-string",
    ),
    pytest.param(
        # time.sleep refused them in the model's actors: the run failed on every batch.
        "reader: {type: parquet, path: @IN@}\nwriter: {type: parquet, path: @OUT@}\n"
        "models: [{type: echo, delay_s: -1}, {type: echo, delay_s: .inf}]\n",
        [],
        [
            "models[0].delay_s: must be from 0 to 9223372036 s, got -1",
            "models[1].delay_s: must be from 0 to 9223372036 s, got inf",
        ],
        id="echo-delay",
    ),
    pytest.param(
        # The resize size made from the crop was blamed: "resize_size: ... got [-2]".
        "reader: {type: parquet, path: @IN@}\nwriter: {type: parquet, path: @OUT@}\n"
        "preprocessors: [{type: image_transform, crop_size: -1}, "
        "{type: image_transform, resize_size: 0}]\n",
        [],
        [
            "preprocessors[0].crop_size: sizes must be positive, got [-1, -1]",
            "preprocessors[1].resize_size: sizes must be positive, got [0]",
        ],
        id="image-transform-sizes",
    ),
    pytest.param(
        # An index into a list the spec does not have made a mapping {"0": ...} of it,
        # told as "models: expected a list of model nodes, got a mapping".
        "reader: {type: parquet, path: @IN@}\nwriter: {type: parquet, path: @OUT@}\n",
        ["models.0.resources.batch_size=8", "vars.x=1", "vars.y.0=2"],
        [
            "override 'models.0.resources.batch_size=8': the spec has no models to index - "
            "set the whole list: 'models=[{type: ...}]'",
        ],
        id="an-index-into-a-missing-list",
    ),
    pytest.param(
        # OmegaConf said only "list index out of range".
        "reader: {type: parquet, path: @IN@}\nmodels: [{type: echo}]\n"
        "writer: {type: parquet, path: @OUT@}\n",
        ["models.1.scale=2", "models.0.scale=2", "preprocessors.0.x=1"],
        [
            "override 'models.1.scale=2': models has 1 stage (models.0) - to add one, set "
            "the whole list: 'models=[{type: ...}, ...]'",
            "override 'preprocessors.0.x=1': the spec has no preprocessors to index - set the "
            "whole list: 'preprocessors=[{type: ...}]'",
        ],
        id="an-index-past-the-end-of-a-list",
    ),
]


@pytest.mark.parametrize(("text", "overrides", "expected"), BAD_SPECS)
def test_bad_spec_reports_every_problem_and_exits_with_spec_code(
    tmp_path, data, capsys, text, overrides, expected
):
    text = text.replace("@IN@", str(data)).replace("@OUT@", str(tmp_path / "out"))
    path = write_spec(tmp_path, text)
    overrides = [o.replace("@IN@", str(data)) for o in overrides]
    code = main([str(path), "--validate", *overrides])
    err = capsys.readouterr().err
    count = len(expected)
    head = f"infer-run: error: spec {path}: {count} problem{'s' if count > 1 else ''}"
    places = {"@IN@": str(data), "@OUT@": str(tmp_path / "out")}
    expected = [
        _the_one_printed(line, err).replace("@IN@", str(data)).replace("@OUT@", places["@OUT@"])
        for line in expected
    ]
    assert err.splitlines() == [head, *(f"  {line}" for line in expected)]
    assert code == ExitCode.SPEC_ERROR
    assert "Traceback" not in err


def _the_one_printed(line: str | tuple[str, ...], err: str) -> str:
    """``line``, or of ``yaml_says`` wordings the one in ``err`` (else the first, for the diff)."""
    if isinstance(line, str):
        return line
    return next((alt for alt in line if alt in err), line[0])


def test_missing_spec_file_is_an_input_error(tmp_path, capsys):
    code = main([str(tmp_path / "nope.yaml")])
    assert code == ExitCode.INPUT_ERROR
    assert (
        capsys.readouterr().err == f"infer-run: error: spec file not found: {tmp_path}/nope.yaml\n"
    )


def test_a_misspelt_spec_file_gets_a_did_you_mean(tmp_path, capsys):
    (tmp_path / "resnet50_imagenet.yaml").write_text("{}\n")
    (tmp_path / "other.yaml").write_text("{}\n")
    assert main([str(tmp_path / "resnet50_imagenet.yml")]) == ExitCode.INPUT_ERROR
    assert capsys.readouterr().err == (
        f"infer-run: error: spec file not found: {tmp_path}/resnet50_imagenet.yml - did you "
        f"mean '{tmp_path}/resnet50_imagenet.yaml'?\n"
    )


def test_unknown_flag_points_to_key_value_form(tmp_path, data, capsys):
    path = write_spec(tmp_path, GOOD.format(root=tmp_path))
    with pytest.raises(SystemExit) as info:
        main([str(path), "--batch-size", "3"])
    assert info.value.code == ExitCode.USAGE_ERROR
    err = capsys.readouterr().err
    assert "unrecognized arguments: --batch-size" in err
    assert "spec values are set as key=value (e.g. run.limit=10)" in err


def test_spec_error_lists_all_lines():
    err = SpecError(["a: x", "b: y"], "s.yaml")
    assert str(err) == "spec s.yaml: 2 problems\n  a: x\n  b: y"


def test_writer_path_holding_or_inside_the_input_is_refused_before_anything_is_deleted(
    tmp_path, capsys
):
    inputs = tmp_path / "photos"
    inputs.mkdir()
    pq.write_table(pa.table({"id": ["a"], "x": [1.0]}), inputs / "part-0.parquet")
    (tmp_path / "notes.txt").write_text("keep me")
    spec = write_spec(
        tmp_path,
        f"reader: {{type: parquet, path: {inputs}}}\nwriter: {{type: parquet, path: {tmp_path}}}\n",
    )
    assert main([str(spec), "--overwrite"]) == ExitCode.SPEC_ERROR
    err = capsys.readouterr().err
    assert f"writer.path: {tmp_path} holds the input {inputs} (reader.path)" in err
    assert (inputs / "part-0.parquet").exists() and (tmp_path / "notes.txt").exists()

    assert main([str(spec), "--validate", f"writer.path={inputs}/predictions"]) == 3
    err = capsys.readouterr().err
    assert f"writer.path: {inputs}/predictions is inside the input {inputs} (reader.path)" in err
    # A glob names files, not the folder: predictions beside them are not read back...
    pattern = [f"reader.path={inputs}/*.parquet", f"writer.path={inputs}/predictions"]
    assert main([str(spec), "--validate", *pattern]) == ExitCode.OK
    (inputs / "sub").mkdir()
    pq.write_table(pa.table({"id": ["b"], "x": [2.0]}), inputs / "sub" / "part-1.parquet")
    assert main([str(spec), "--validate", f"reader.path={inputs}/s*/*.parquet", pattern[1]]) == 0
    # ... unless the pattern matches the files the writer would put there.
    for glob in (f"{inputs}/**/*.parquet", f"{inputs}/*/*.parquet", f"{inputs}/[ps]*/*"):
        capsys.readouterr()
        assert main([str(spec), "--validate", f"reader.path={glob}", pattern[1]]) == 3, glob
        assert (
            f"writer.path: the input pattern {glob} (reader.path) matches the files "
            f"{inputs}/predictions would hold: the next read, or --resume, would take the "
            "predictions for input" in capsys.readouterr().err
        )
    records = [f"reader.path={inputs}/**/*.jsonl", "reader.type=jsonl", f"writer.path={tmp_path}/o"]
    assert main([str(spec), "--validate", *records, f"errors.dead_letter={inputs}/dl"]) == 3
    assert "would take the records for input" in capsys.readouterr().err
    assert main([str(spec), "--validate", f"writer.path={tmp_path}/out"]) == ExitCode.OK

    # Dead letters: --replay moves every record file of their folder aside, --resume reads
    # the output's files, and a read of the input folder reads what lies in it.
    out = f"writer.path={tmp_path}/out"
    clashes = {
        str(inputs): f"errors.dead_letter: {inputs} holds the input {inputs} (reader.path), "
        "which --replay would move away",
        f"{inputs}/dl": f"errors.dead_letter: {inputs}/dl is inside the input {inputs} "
        "(reader.path): the next read of it, or --resume, would take the records for input",
        f"{tmp_path}/out": f"errors.dead_letter: {tmp_path}/out is the output folder "
        "(writer.path): records and predictions would mix",
    }
    capsys.readouterr()
    for dead_letter, expected in clashes.items():
        done = main([str(spec), "--validate", out, f"errors.dead_letter={dead_letter}"])
        assert done == ExitCode.SPEC_ERROR, dead_letter
        assert expected in capsys.readouterr().err
    assert main([str(spec), "--validate", out, f"errors.dead_letter={tmp_path}/dl"]) == 0


def test_nan_is_refused_wherever_it_is_written(tmp_path, data):
    path = write_spec(tmp_path, GOOD.format(root=tmp_path))
    nans = [
        "models.0.resources={num_cpus: .nan}",
        "errors.max_fraction=.nan",
        "benchmark={min_model_ratio: .nan, max_outside_model_share: .nan}",
        "models.0.scale=.nan",
    ]
    with pytest.raises(SpecError) as caught:
        validate_spec(load_spec(path, nans), load_registry())
    # One line per NaN, and no second line from the key's own range check.
    assert sorted(caught.value.problems) == sorted(
        f"{key}: NaN is not a usable number"
        for key in (
            "models[0].resources.num_cpus",
            "errors.max_fraction",
            "benchmark.min_model_ratio",
            "benchmark.max_outside_model_share",
            "models[0].scale",
        )
    )


@pytest.mark.parametrize("blank", ["''", "' '", "file://"])
def test_an_empty_path_is_refused_not_taken_for_the_current_folder(
    tmp_path, data, capsys, monkeypatch, blank
):
    # An empty path is the current folder to pyarrow: --overwrite emptied it.
    here = tmp_path / "here"
    here.mkdir()
    (here / "precious.txt").write_text("keep me")
    monkeypatch.chdir(here)
    path = write_spec(tmp_path, GOOD.format(root=tmp_path))
    shown = blank.strip("'")
    for key in ("writer.path", "reader.path", "reader.path=[x, {}]"):
        override = key.format(blank) if "=" in key else f"{key}={blank}"
        assert main([str(path), "--validate", "--overwrite", override]) == ExitCode.SPEC_ERROR
        err = capsys.readouterr().err
        where = key.split("=")[0] + ("[1]" if "=" in key else "")
        assert f"  {where}: {shown!r} is empty - name " in err, err
    assert (here / "precious.txt").exists()


@pytest.mark.parametrize("reader", ["parquet", "jsonl", "image_parquet", "webdataset"])
def test_an_empty_list_of_paths_is_a_spec_problem(tmp_path, data, capsys, reader):
    # The parquet reader's check() took the first path (IndexError: a plugin bug, exit 4);
    # the jsonl reader passed validation with nothing to read.
    path = write_spec(tmp_path, GOOD.format(root=tmp_path))
    assert main([str(path), "--validate", f"reader.type={reader}", "reader.path=[]"]) == 3
    err = capsys.readouterr().err
    assert "  reader.path: expected a path or a non-empty list of paths, got []" in err
    assert "1 problem" in err


def test_a_reader_column_the_data_does_not_have_is_named_with_a_suggestion(tmp_path, data):
    # Ray Data read the columns it found: the run went on without the misspelt one.
    path = write_spec(tmp_path, GOOD.format(root=tmp_path))
    with pytest.raises(SpecError) as caught:
        validate_spec(load_spec(path, ["reader.columns=[xx, id]"]), load_registry())
    assert caught.value.problems == [
        f"reader.columns: {data} has no column 'xx' - did you mean 'x'? (columns: id, x)"
    ]
    validate_spec(load_spec(path, ["reader.columns=[x]"]), load_registry())


def test_a_writer_given_an_empty_path_deletes_nothing(tmp_path, monkeypatch):
    from plugins.parquet import ParquetWriter

    monkeypatch.chdir(tmp_path)
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(InputError, match=r"writer\.path: '' is empty"):
        ParquetWriter(path="", overwrite=True).prepare()
    assert (tmp_path / "precious.txt").exists()


def test_a_type_reads_the_same_on_python_3_10():
    # 3.10's type hints made a parameter defaulting to None Optional[list[str]], and the
    # spec problem said so ("expected Optional[list[str]]") where 3.11 said list[str] | None.
    import typing

    from framework.spec.params import type_name

    assert type_name(typing.Optional[list[str]]) == "list[str] | None"  # noqa: UP045
    assert type_name(list[str] | None) == "list[str] | None"
    assert type_name(typing.Union[int, str, None]) == "int | str | None"  # noqa: UP007
    assert type_name(int) == "int"


@pytest.mark.parametrize("where", ["reader", "writer"])
def test_a_storage_that_is_no_mapping_is_named_without_its_value(tmp_path, data, capsys, where):
    """A secret key pasted as the whole ``storage:`` value must not be printed back."""
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    text = f"reader: {{type: parquet, path: {data}}}\nwriter: {{type: parquet, path: {tmp_path / 'out'}}}\n"
    path = write_spec(tmp_path, text)
    code = main([str(path), "--validate", f"{where}.storage={secret}"])
    err = capsys.readouterr().err
    assert code == ExitCode.SPEC_ERROR
    assert err.splitlines()[1:] == [
        f"  {where}.storage: expected a mapping of endpoint_url, region, access_key_id, "
        "secret_access_key, session_token, anonymous, got str"
    ]
    assert secret not in err and "EXAMPLEKEY" not in err


@pytest.mark.parametrize(
    ("flag", "place"),
    [
        ("--report", "/proc/report.json"),
        ("--report", "/proc/infer-run/reports/report.json"),
        ("--report", "@IN@/report.json"),
        ("--timeline", "/proc/timeline.json"),
    ],
)
def test_a_report_path_that_cannot_be_created_fails_validation_even_as_root(
    tmp_path, data, capsys, flag, place
):
    """Tried by creating it, not read from permission bits, which root passes: /proc
    took the run to its end and failed there."""
    place = place.replace("@IN@", str(data))
    text = f"reader: {{type: parquet, path: {data}}}\nwriter: {{type: parquet, path: {tmp_path / 'out'}}}\n"
    path = write_spec(tmp_path, text)
    code = main([str(path), "--validate", flag, place])
    err = capsys.readouterr().err.splitlines()
    assert code == ExitCode.SPEC_ERROR
    assert len(err) == 2, err
    assert err[1].startswith(f"  run.{flag[2:]}: cannot write {place}: "), err


def test_a_dead_letter_folder_that_cannot_be_made_fails_validation(tmp_path, data, capsys):
    # The workers make it at the first bad row: the run stopped there, as a bug.
    (tmp_path / "a-file").write_text("")
    text = f"reader: {{type: parquet, path: {data}}}\nwriter: {{type: parquet, path: {tmp_path / 'out'}}}\n"
    path = write_spec(tmp_path, text)
    code = main([str(path), "--validate", f"errors.dead_letter={tmp_path / 'a-file' / 'dead'}"])
    assert code == ExitCode.SPEC_ERROR
    assert capsys.readouterr().err.splitlines()[1] == (
        f"  errors.dead_letter: cannot write to {tmp_path / 'a-file' / 'dead'}: "
        f"{tmp_path / 'a-file'} is a file, not a directory"
    )
    fresh = tmp_path / "new" / "dead"
    assert main([str(path), "--validate", f"errors.dead_letter={fresh}"]) == ExitCode.OK
    assert not (tmp_path / "new").exists()  # tried, then removed


def test_a_report_path_is_tried_without_leaving_anything_behind(tmp_path, data, capsys):
    text = f"reader: {{type: parquet, path: {data}}}\nwriter: {{type: parquet, path: {tmp_path / 'out'}}}\n"
    path = write_spec(tmp_path, text)
    existing = tmp_path / "old.json"
    existing.write_text("the last run's")
    for report in (tmp_path / "new" / "deeper" / "report.json", existing):
        assert main([str(path), "--validate", "--report", str(report)]) == ExitCode.OK
    assert not (tmp_path / "new").exists()
    assert existing.read_text() == "the last run's"
