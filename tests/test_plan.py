"""Plan shape for several specs, without starting Ray."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf

from framework.compile import EMITTERS, compile_plan
from framework.plan import MapNode, Plan, ReadNode, WriteNode, build_plan
from framework.plugins import load_registry
from framework.spec import validate_spec
from tests.plugins import upper


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("plan") / "in.parquet"
    pq.write_table(pa.table({"id": ["a"], "x": np.arange(1.0), "text": ["t"]}), path)
    return str(path)


def plan_for(spec: dict, extra=()) -> Plan:
    registry = load_registry(extra)
    return build_plan(validate_spec(OmegaConf.create(spec), registry))


def shape(plan: Plan) -> list[tuple]:
    out = []
    for node in plan.nodes:
        if isinstance(node, MapNode):
            out.append(("map", node.name, node.compute, node.pool, node.batch_size, node.ray_args))
        else:
            out.append((type(node).__name__, node.stage.type))
    return out


def test_reader_model_writer(data):
    plan = plan_for(
        {
            "reader": {"type": "parquet", "path": data},
            "models": [{"type": "echo"}],
            "writer": {"type": "parquet", "path": "/tmp/o"},
        }
    )
    assert shape(plan) == [
        ("ReadNode", "parquet"),
        ("map", "models_0:echo", "actors", (1, 1), 64, {"num_cpus": 1}),
        ("WriteNode", "parquet"),
    ]


def test_every_stage_kind_with_resources(data):
    plan = plan_for(
        {
            "run": {"limit": 10},
            "reader": {"type": "parquet", "path": data},
            "preprocessors": [
                {"type": "upper", "resources": {"num_cpus": 0.5, "batch_size": 16}},
                {"type": "select_columns", "columns": ["text_upper"]},
            ],
            "models": [
                {
                    "type": "echo",
                    "resources": {
                        "actors": [2, 4],
                        "num_gpus": 0.25,
                        "memory": 1_000_000,
                        "accelerator_type": "A100",
                        "custom": {"gpu_node": 1},
                        "batch_size": 8,
                        "max_tasks_in_flight_per_actor": 3,
                    },
                }
            ],
            "postprocessors": [{"type": "rename_columns", "mapping": {"x_echo": "y"}}],
            "writer": {"type": "jsonl", "path": "/tmp/o"},
        },
        [upper],
    )
    assert plan.nodes[0] == ReadNode(plan.spec.reader, 10)
    assert shape(plan)[1:] == [
        ("map", "preprocessors_0:upper", "tasks", None, 16, {"num_cpus": 0.5}),
        ("map", "preprocessors_1:select_columns", "tasks", None, None, {"num_cpus": 1}),
        (
            "map",
            "models_0:echo",
            "actors",
            (2, 4),
            8,
            {
                "num_cpus": 1,
                "num_gpus": 0.25,
                "memory": 1_000_000,
                "accelerator_type": "A100",
                "resources": {"gpu_node": 1.0},
            },
        ),
        ("map", "postprocessors_0:rename_columns", "tasks", None, None, {"num_cpus": 1}),
        ("WriteNode", "jsonl"),
    ]
    assert plan.nodes[3].max_tasks_in_flight_per_actor == 3


def test_stateless_stage_with_actors_runs_as_a_pool(data):
    plan = plan_for(
        {
            "reader": {"type": "parquet", "path": data},
            "preprocessors": [{"type": "select_columns", "resources": {"actors": 3}}],
            "writer": {"type": "parquet", "path": "/tmp/o"},
        }
    )
    node = plan.nodes[1]
    assert (node.compute, node.pool) == ("actors", (3, 3))


def test_describe_lists_each_stage_with_resources(data):
    plan = plan_for(
        {
            "reader": {"type": "parquet", "path": data},
            "models": [{"type": "echo", "resources": {"actors": [1, 2], "batch_size": 32}}],
            "writer": {"type": "parquet", "path": "/tmp/o"},
        }
    )
    assert plan.describe().splitlines() == [
        "0. reader       reader             parquet",
        "1. model        models[0]          echo  actors=1..2 batch_size=32 num_cpus=1",
        "2. writer       writer             parquet  -> /tmp/o",
    ]


def test_every_plan_node_kind_has_a_ray_data_translation():
    assert set(EMITTERS) == {ReadNode, MapNode, WriteNode}


def test_building_a_plan_does_not_start_ray(data):
    # A fresh interpreter: this test session may already have Ray running.
    code = (
        "import ray; from tests.test_plan import plan_for; "
        f"plan_for({{'reader': {{'type': 'parquet', 'path': {data!r}}}, "
        "'models': [{'type': 'echo'}], 'writer': {'type': 'parquet', 'path': '/tmp/o'}}); "
        "assert not ray.is_initialized(), 'Ray started'"
    )
    root = Path(__file__).parent.parent
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_unknown_node_kind_is_named(data):
    plan = plan_for(
        {
            "reader": {"type": "parquet", "path": data},
            "writer": {"type": "parquet", "path": "/tmp/o"},
        }
    )
    bogus = Plan(("not a node",), plan.spec)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="no Ray Data translation for plan node 'not a node'"):
        compile_plan(bogus)
