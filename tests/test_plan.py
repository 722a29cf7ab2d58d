"""Plan shape, automatic sizing and feasibility for several specs, without starting Ray."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf

from framework.cluster import Cluster, Node
from framework.compile import EMITTERS, compile_plan
from framework.feasibility import ResourceError, _placed, check_feasible, infeasible
from framework.plan import MapNode, Plan, ReadNode, WriteNode, build_plan
from framework.plugins import load_registry
from framework.spec import validate_spec
from tests.plugins import upper

GPU_BOX = Cluster((Node("n1", "10.0.0.1", cpus=8, gpus=2, custom={"gpu_node": 1}),), "test")
LAPTOP = Cluster((Node("n1", "10.0.0.1", cpus=2, spare_cpus=1),), "test")
MIXED = Cluster(
    (
        Node("c1", "10.0.0.1", cpus=16),
        Node("c2", "10.0.0.2", cpus=16),
        Node("g1", "10.0.0.3", cpus=8, gpus=4, custom={"accelerator_type:A100": 1}),
    ),
    "test",
)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("plan") / "in.parquet"
    pq.write_table(pa.table({"id": ["a"], "x": np.arange(1.0), "text": ["t"]}), path)
    return str(path)


def plan_for(spec: dict, extra=(), cluster: Cluster = GPU_BOX) -> Plan:
    registry = load_registry(extra)
    return build_plan(validate_spec(OmegaConf.create(spec), registry), cluster)


def simple(data: str, **model: object) -> dict:
    return {
        "reader": {"type": "parquet", "path": data},
        "preprocessors": [{"type": "select_columns"}],
        "models": [{"type": "echo", **model}],
        "writer": {"type": "parquet", "path": "/tmp/o"},
    }


def shape(plan: Plan) -> list[tuple]:
    out = []
    for node in plan.nodes:
        if isinstance(node, MapNode):
            out.append(("map", node.name, node.compute, node.pool, node.batch_size, node.ray_args))
        else:
            out.append((type(node).__name__, node.stage.type, node.num_cpus))
    return out


def test_every_stage_kind_with_explicit_resources(data):
    plan = plan_for(
        {
            "run": {"limit": 10},
            "reader": {"type": "parquet", "path": data, "resources": {"num_cpus": 0.5}},
            "preprocessors": [
                {"type": "upper", "resources": {"num_cpus": 0.5, "batch_size": 16}},
                {"type": "select_columns", "columns": ["text_upper"], "resources": {"num_cpus": 1}},
            ],
            "models": [
                {
                    "type": "echo",
                    "resources": {
                        "actors": [2, 4],
                        "num_cpus": 1,
                        "num_gpus": 0.25,
                        "memory": 1_000_000,
                        "accelerator_type": "A100",
                        "custom": {"gpu_node": 1},
                        "batch_size": 8,
                        "max_tasks_in_flight_per_actor": 3,
                    },
                }
            ],
            "postprocessors": [
                {"type": "rename_columns", "mapping": {"x_echo": "y"}, "resources": {"num_cpus": 2}}
            ],
            "writer": {"type": "jsonl", "path": "/tmp/o", "resources": {"num_cpus": 1}},
        },
        [upper],
    )
    assert plan.nodes[0].limit == 10
    assert shape(plan) == [
        ("ReadNode", "parquet", 0.5),
        ("map", "preprocessors_0:upper", "tasks", None, 16, {"num_cpus": 0.5}),
        ("map", "preprocessors_1:select_columns", "tasks", None, None, {"num_cpus": 1.0}),
        (
            "map",
            "models_0:echo",
            "actors",
            (2, 4),
            8,
            {
                "num_cpus": 1.0,
                "num_gpus": 0.25,
                "memory": 1_000_000,
                "accelerator_type": "A100",
                "resources": {"gpu_node": 1.0},
            },
        ),
        ("map", "postprocessors_0:rename_columns", "tasks", None, None, {"num_cpus": 2.0}),
        ("WriteNode", "jsonl", 1.0),
    ]
    assert plan.nodes[3].max_tasks_in_flight_per_actor == 3
    assert all(node.reason == "as the spec says" for node in plan.nodes)


def test_gpu_cluster_one_actor_per_gpu_and_one_cpu_per_task(data):
    plan = plan_for(simple(data), cluster=GPU_BOX)
    assert shape(plan) == [
        ("ReadNode", "parquet", 1.0),
        ("map", "preprocessors_0:select_columns", "tasks", None, None, {"num_cpus": 1.0}),
        ("map", "models_0:echo", "actors", (2, 2), 64, {"num_cpus": 1.0, "num_gpus": 1.0}),
        ("WriteNode", "parquet", 0.0),
    ]
    assert plan.nodes[2].reason == (
        "auto (actors, num_cpus, num_gpus): 1 GPU per actor, 2 actor(s) for the cluster's 2 GPUs"
    )


def test_stages_after_the_models_ask_for_no_cpu_unless_told(data):
    # Ray Data sets aside CPUs for every operator by what its tasks ask: 1 CPU per write
    # task held back cores from the decoding a GPU model waits for.
    spec = simple(data)
    spec["preprocessors"].append({"type": "rename_columns", "mapping": {"x": "z"}})
    spec["postprocessors"] = [
        {"type": "rename_columns", "mapping": {"z_echo": "y"}},
        {"type": "select_columns", "resources": {"num_cpus": 2}},
    ]
    plan = plan_for(spec, cluster=GPU_BOX)
    cpus = {
        n.stage.path: n.num_cpus if not isinstance(n, MapNode) else n.ray_args["num_cpus"]
        for n in plan.nodes
    }
    assert cpus == {
        "reader": 1.0,
        "preprocessors[0]": 1.0,
        "preprocessors[1]": 1.0,
        "models[0]": 1.0,
        "postprocessors[0]": 0.0,
        "postprocessors[1]": 2.0,
        "writer": 0.0,
    }
    assert plan.nodes[4].reason.startswith("auto (num_cpus): no CPU asked")


def test_tasks_asking_no_cpu_run_two_per_node_at_once(data):
    # Uncapped, Ray Data started a write task per block at once, and Ray a process for
    # each: on a 2-CPU node beside a GPU node, 16 processes starting together held a
    # 800-row run for minutes.
    spec = simple(data)
    spec["postprocessors"] = [
        {"type": "rename_columns", "mapping": {"x_echo": "y"}},
        {"type": "select_columns", "resources": {"num_cpus": 2}},
    ]
    cpu_and_gpu = Cluster((Node("c", "h1", cpus=2), Node("g", "h2", cpus=2, gpus=1)), "test")
    plan = plan_for(spec, cluster=cpu_and_gpu)
    caps = {n.stage.path: getattr(n, "max_tasks", None) for n in plan.nodes}
    assert caps == {
        "reader": None,
        "preprocessors[0]": None,
        "models[0]": None,
        "postprocessors[0]": 4,
        "postprocessors[1]": None,
        "writer": 4,
    }
    described = plan.describe()
    assert "postprocessors[0]" in described and "tasks<=4" in described
    assert "num_cpus=0 tasks<=4 ->" in described


def test_beside_cpu_models_reading_and_cpu_stages_start_two_tasks_per_node(data):
    # Uncapped, Ray Data started a read task per block at once, each a new process
    # importing torch on the model's cores.
    spec = simple(data)
    spec["postprocessors"] = [{"type": "rename_columns", "mapping": {"x_echo": "y"}}]
    two_nodes = Cluster((Node("a", "h1", cpus=4), Node("b", "h2", cpus=4)), "test")
    caps = {
        n.stage.path: getattr(n, "max_tasks", None) for n in plan_for(spec, cluster=two_nodes).nodes
    }
    assert caps == {
        "reader": 4,
        "preprocessors[0]": 4,
        "models[0]": None,
        "postprocessors[0]": None,
        "writer": None,
    }
    # On GPUs the CPU stages are the work: uncapped (the no-CPU ones after the models are
    # capped, see above). A num_cpus the spec sets: uncapped.
    on_gpus = plan_for(spec, cluster=GPU_BOX).nodes[:3]
    assert {getattr(n, "max_tasks", None) for n in on_gpus} == {None}
    spec["preprocessors"][0]["resources"] = {"num_cpus": 0.5}
    caps = {
        n.stage.path: getattr(n, "max_tasks", None) for n in plan_for(spec, cluster=two_nodes).nodes
    }
    assert (caps["reader"], caps["preprocessors[0]"]) == (4, None)


def test_without_models_the_writer_is_part_of_the_work(data):
    plan = plan_for(
        {
            "reader": {"type": "parquet", "path": data},
            "preprocessors": [{"type": "select_columns"}],
            "writer": {"type": "parquet", "path": "/tmp/o"},
        },
        cluster=GPU_BOX,
    )
    assert [n.num_cpus for n in plan.nodes if isinstance(n, WriteNode)] == [1.0]


def test_two_models_share_the_gpus(data):
    spec = simple(data)
    spec["models"].append({"type": "echo", "scale": 2})
    plan = plan_for(spec, cluster=Cluster((Node("n", "h", cpus=8, gpus=1),), "test"))
    models = [n for n in plan.nodes if isinstance(n, MapNode) and n.stage.kind == "model"]
    assert [(m.pool, m.ray_args["num_gpus"]) for m in models] == [((1, 1), 0.5), ((1, 1), 0.5)]


def test_cpu_only_model_gets_most_cores(data):
    plan = plan_for(simple(data), cluster=LAPTOP)
    assert shape(plan) == [
        ("ReadNode", "parquet", 0.25),
        ("map", "preprocessors_0:select_columns", "tasks", None, None, {"num_cpus": 0.25}),
        ("map", "models_0:echo", "actors", (1, 1), 64, {"num_cpus": 1.5}),
        # Beside a CPU model the writer keeps its share: freed, it let more read tasks
        # start at once, each a process importing torch on the model's cores.
        ("WriteNode", "parquet", 0.25),
    ]
    assert "0.5 CPU per node kept for reading, CPU stages and writing" in plan.nodes[2].reason


def test_small_node_without_a_spare_cpu_keeps_one_for_ray_data(data):
    # An external cluster: Ray's logical CPUs are all there is, and listing needs one.
    plan = plan_for(simple(data), cluster=Cluster((Node("n1", "h", cpus=2),), "test"))
    assert plan.nodes[2].ray_args == {"num_cpus": 1.0}
    assert plan.nodes[1].ray_args == {"num_cpus": 0.5}
    assert infeasible(plan) == []


def test_large_cpu_nodes_get_several_model_actors(data):
    big = Cluster((Node("a", "h1", cpus=32), Node("b", "h2", cpus=32)), "test")
    plan = plan_for(simple(data), cluster=big)
    model = plan.nodes[2]
    # 32 CPUs, 3 kept: 29 over ceil(29 / 8) = 4 actors per node, on 2 nodes.
    assert (model.pool, model.ray_args) == ((8, 8), {"num_cpus": 7.25})
    assert plan.nodes[1].ray_args == {"num_cpus": 1.5}


def test_spec_values_win_over_sizing(data):
    plan = plan_for(simple(data, resources={"num_gpus": 0, "num_cpus": 1}), cluster=GPU_BOX)
    model = plan.nodes[2]
    # As many 1-CPU actors as fit beside the CPU kept for Ray Data: 7 of the 8.
    assert (model.pool, model.ray_args) == ((7, 7), {"num_cpus": 1.0})
    assert model.reason.startswith("auto (actors):")
    # Counted as Ray counts (units of 1e-4 CPU): 7 // 0.1 is 69.0 in floats, 70 actors fit.
    tenth = plan_for(simple(data, resources={"num_gpus": 0, "num_cpus": 0.1})).nodes[2]
    assert tenth.pool == (70, 70)


def test_a_cpu_models_pool_from_the_spec_shares_the_cores_it_leaves_out(data):
    eight = Cluster((Node("n", "h", cpus=8),), "test")
    model = plan_for(simple(data, resources={"actors": 2}), cluster=eight).nodes[2]
    # 8 CPUs, 1 kept for Ray Data: 3.5 for each of the 2 actors the spec asks for.
    assert (model.pool, model.ray_args) == ((2, 2), {"num_cpus": 3.5})
    assert model.reason.startswith("auto (num_cpus, num_gpus): no GPU: 2 actor(s) of 3.5 CPUs")
    pool = plan_for(simple(data, resources={"actors": [1, 3]}), cluster=LAPTOP).nodes[2]
    assert pool.ray_args == {"num_cpus": 0.5}  # 1.5 CPUs for the pool's maximum of 3
    given = simple(data, resources={"actors": 3, "num_cpus": 1})
    fixed = plan_for(given, cluster=LAPTOP).nodes[2]
    assert "no GPU: 3 actor(s) of 1 CPUs" in fixed.reason  # the pool asked for, not another
    assert infeasible(plan_for(simple(data, resources={"actors": 2}), cluster=LAPTOP)) == []
    idle = plan_for(simple(data, resources={"num_cpus": 0}), cluster=eight).nodes[2]
    assert (idle.pool, idle.ray_args) == ((1, 1), {"num_cpus": 0})
    assert "1 actor(s) of 0 CPUs" in idle.reason


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
    # A fixed pool reads as the spec says it; a range as min..max.
    assert "select_columns  actors=3 batch_size=" in plan.describe()
    ranged = plan_for(simple(data, resources={"actors": [1, 3]}), cluster=LAPTOP)
    assert "echo  actors=1..3 batch_size=" in ranged.describe()


def test_describe_lists_each_stage_with_resources_and_why(data):
    plan = plan_for(simple(data, resources={"batch_size": 32}), cluster=LAPTOP)
    assert plan.describe().splitlines() == [
        "cluster: test: 1 node: 10.0.0.1 (2 CPUs, 0 GPUs)",
        "0. reader       reader             parquet  num_cpus=0.25 tasks<=2",
        "   auto (num_cpus): 0.25 CPU per task, to fit beside the model actors; 2 at once",
        "1. preprocessor preprocessors[0]   select_columns  tasks<=2 batch_size=ray-default "
        "num_cpus=0.25",
        "   auto (num_cpus): 0.25 CPU per task, to fit beside the model actors; 2 at once",
        "2. model        models[0]          echo  actors=1 batch_size=32 block_rows<=128 "
        "num_cpus=1.5",
        "   auto (actors, num_cpus, num_gpus): no GPU: 1 actor(s) of 1.5 CPUs (torch threads "
        "follow), 0.5 CPU per node kept for reading, CPU stages and writing",
        "3. writer       writer             parquet  num_cpus=0.25 -> /tmp/o",
        "   auto (num_cpus): 0.25 CPU per task, to fit beside the model actors",
    ]


@pytest.mark.parametrize(
    ("resources", "expected"),
    [
        (
            {"num_gpus": 1},
            "models[0]: asks for num_cpus=1, num_gpus=1 per actor, which no node has "
            "- test: 1 node: 10.0.0.1 (2 CPUs, 0 GPUs)",
        ),
        (
            {"num_cpus": 4},
            "models[0]: asks for num_cpus=4 per actor, which no node has "
            "- test: 1 node: 10.0.0.1 (2 CPUs, 0 GPUs)",
        ),
        (
            {"custom": {"tpu_pod": 1}},
            "models[0]: asks for num_cpus=1.5, tpu_pod=1 per actor, which no node has "
            "- test: 1 node: 10.0.0.1 (2 CPUs, 0 GPUs)",
        ),
        (
            {"accelerator_type": "H100"},
            "models[0]: asks for num_cpus=1.5, accelerator_type=H100 per actor, which no node "
            "has - test: 1 node: 10.0.0.1 (2 CPUs, 0 GPUs)",
        ),
        (
            {"num_cpus": 1.5, "actors": 2},
            "models[0]: the actor pools hold 3 of the cluster's 3 logical CPUs, leaving less "
            "than the 1 CPU that Ray Data's read, CPU-stage and write tasks need - lower the "
            "actors' num_cpus or pool size",
        ),
    ],
)
def test_infeasible_stage_is_named_with_what_it_asked_and_what_exists(data, resources, expected):
    plan = plan_for(simple(data, resources=resources), cluster=LAPTOP)
    assert infeasible(plan) == [expected]
    with pytest.raises(ResourceError) as info:
        check_feasible(plan)
    assert str(info.value) == expected


@pytest.mark.parametrize(("minimum", "problem"), [(2, False), (3, True)])
def test_a_minimum_pool_must_fit_node_by_node(data, minimum, problem):
    # 6 GPUs in all, but a 2-GPU actor cannot span nodes: 3 GPUs each hold only one.
    nodes = tuple(Node(f"g{i}", f"10.0.0.{i}", cpus=8, gpus=3) for i in (1, 2))
    resources = {"num_gpus": 2, "num_cpus": 1, "actors": [minimum, 4]}
    plan = plan_for(simple(data, resources=resources), cluster=Cluster(nodes, "test"))
    expected = [
        f"models[0]: its pool needs at least {minimum} actors asking for num_cpus=1, "
        "num_gpus=2 each, and the nodes have room for 2 - lower the pool's minimum or the "
        "per-actor ask - test: 2 nodes: 10.0.0.1 (8 CPUs, 3 GPUs); 10.0.0.2 (8 CPUs, 3 GPUs)"
    ]
    assert infeasible(plan) == (expected if problem else [])


def test_a_pool_of_gpu_fractions_fills_its_gpu(data):
    resources = {"num_gpus": 0.1, "num_cpus": 0.1, "actors": 10}  # in floats, 1 // 0.1 is 9
    cluster = Cluster((Node("g", "10.0.0.1", cpus=8, gpus=1),), "test")
    assert infeasible(plan_for(simple(data, resources=resources), cluster=cluster)) == []


def test_accelerator_type_found_on_a_mixed_cluster(data):
    plan = plan_for(simple(data, resources={"accelerator_type": "A100"}), cluster=MIXED)
    assert infeasible(plan) == []
    model = plan.nodes[2]
    assert (model.pool, model.ray_args["num_gpus"]) == ((4, 4), 1.0)


def test_every_plan_node_kind_has_a_ray_data_translation():
    assert set(EMITTERS) == {ReadNode, MapNode, WriteNode}


def test_building_a_plan_does_not_start_ray(data):
    # A fresh interpreter: this test session may already have Ray running.
    code = (
        "import ray; from tests.test_plan import plan_for, simple; "
        f"plan_for(simple({data!r})); "
        "assert not ray.is_initialized(), 'Ray started'"
    )
    root = Path(__file__).parent.parent
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_unknown_node_kind_is_named(data):
    plan = plan_for(simple(data))
    bogus = Plan(("not a node",), plan.spec, plan.cluster)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="no Ray Data translation for plan node 'not a node'"):
        compile_plan(bogus)


def test_inflight_budget_grows_with_the_nodes_cpus():
    from framework.sizing import inflight_bytes
    from framework.spec.schema import RunSection

    mb = 1024**2
    gpu_box = Cluster((Node("n", "h", cpus=16, gpus=1),), "test")
    assert inflight_bytes(RunSection(), LAPTOP) == 512 * mb  # 2 CPUs: the per-node floor
    assert inflight_bytes(RunSection(), gpu_box) == 16 * 128 * mb
    # What the CPUs add stops at the share of the object store Ray Data takes by itself,
    assert inflight_bytes(RunSection(), gpu_box, object_store_bytes=2000 * mb) == 1000 * mb
    # but not below the per-node floor.
    assert inflight_bytes(RunSection(), gpu_box, object_store_bytes=600 * mb) == 512 * mb
    assert inflight_bytes(RunSection(inflight_mb_per_cpu=512), gpu_box) == 16 * 512 * mb
    assert inflight_bytes(RunSection(inflight_mb_per_cpu=0), gpu_box) == 512 * mb
    assert inflight_bytes(RunSection(inflight_mb_per_node=None), gpu_box) is None
    assert inflight_bytes(RunSection(), Cluster((), "none yet")) == 512 * mb


def _pinned(data: str, pre: dict, model: dict) -> dict:
    spec = simple(data, resources=model)
    spec["preprocessors"] = [{"type": "select_columns", "resources": pre}]
    return spec


@pytest.mark.parametrize(("foo", "problem"), [(2, True), (3, False)])
def test_a_task_stage_left_no_room_by_the_pools_is_refused(data, foo, problem):
    # Ray Data starts the pool first; it held all of foo, and the preprocessing waited forever.
    cluster = Cluster((Node("n1", "10.0.0.1", cpus=4, custom={"foo": foo}),), "test")
    spec = _pinned(data, {"custom": {"foo": 1}}, {"custom": {"foo": 2}, "actors": 1})
    expected = [
        "preprocessors[0]: asks for num_cpus=0.5, foo=1 per task, and once the actor pools of "
        "models[0] hold their minimum of actors no node has room for one, so the run would "
        "wait forever - lower the actors' asks or pool minimum, or this stage's ask - "
        "test: 1 node: 10.0.0.1 (4 CPUs, 0 GPUs, foo=2)"
    ]
    assert infeasible(plan_for(spec, cluster=cluster)) == (expected if problem else [])


def test_a_gpu_task_before_a_pool_holding_every_gpu_is_refused(data):
    spec = _pinned(data, {"num_gpus": 1, "batch_size": 16}, {})
    problems = infeasible(plan_for(spec, cluster=GPU_BOX))  # the model's auto pool: 2 GPUs
    assert [p.split(" per task")[0] for p in problems] == [
        "preprocessors[0]: asks for num_cpus=1, num_gpus=1"
    ]
    spec = _pinned(data, {"num_gpus": 1, "batch_size": 16}, {"num_gpus": 1, "actors": 1})
    assert infeasible(plan_for(spec, cluster=GPU_BOX)) == []


def test_room_for_tasks_is_counted_node_by_node(data):
    # 3 CPU-model actors fill the CPU node that the preprocessing is pinned to.
    cluster = Cluster(
        (
            Node("c", "10.0.0.1", cpus=3, custom={"cpu_node": 3}),
            Node("g", "10.0.0.2", cpus=2, gpus=2),
        ),
        "test",
    )
    model = {"num_gpus": 0, "num_cpus": 1, "actors": 3, "custom": {"cpu_node": 1}}
    spec = _pinned(data, {"custom": {"cpu_node": 0.5}}, model)
    problems = infeasible(plan_for(spec, cluster=cluster))
    assert [p.split(":")[0] for p in problems] == ["preprocessors[0]"]
    model["actors"] = [2, 3]
    assert infeasible(plan_for(spec, cluster=cluster)) == []


def test_auto_gpu_share_counts_what_the_spec_gave_other_models(data):
    spec = simple(data, resources={"num_gpus": 0.5})
    spec["models"].append({"type": "echo"})
    one_gpu = Cluster((Node("g", "10.0.0.1", cpus=8, gpus=1),), "test")
    plan = plan_for(spec, cluster=one_gpu)
    auto = plan.nodes[3]
    assert (auto.ray_args["num_gpus"], auto.pool) == (0.5, (1, 1))
    assert infeasible(plan) == []


def test_auto_gpu_pool_is_held_to_the_cpus_its_actors_need(data):
    box = Cluster((Node("g", "10.0.0.1", cpus=4, gpus=2),), "test")
    plan = plan_for(simple(data, resources={"num_gpus": 0.25}), cluster=box)
    model = plan.nodes[2]
    assert model.pool == (3, 3)  # 8 quarter-GPU actors would need 8 CPUs; 1 is left to tasks
    assert "held to 3 by the GPU nodes' CPUs" in model.reason
    assert infeasible(plan) == []


def test_gpus_the_spec_gave_away_leave_none_for_an_auto_model_and_the_line_says_so(data):
    spec = simple(data, resources={"num_gpus": 2})
    spec["models"].append({"type": "echo"})
    assert infeasible(plan_for(spec, cluster=GPU_BOX)) == [
        "models[0], models[1]: the actor pools' minimum sizes need 3 GPUs together, the "
        "cluster has 2 - models[1] sized automatically: give them num_gpus (0 runs a model "
        "on CPUs) or the others fewer"
    ]


def test_pools_that_cannot_run_at_once_are_a_warning_not_a_refusal(data, caplog):
    # Ray Data ran the second pool after the first let go: slow, but it finishes.
    cluster = Cluster((Node("n1", "10.0.0.1", cpus=4, custom={"foo": 2}),), "test")
    spec = simple(data, resources={"custom": {"foo": 2}, "actors": 1})
    spec["models"].append({"type": "echo", "resources": {"custom": {"foo": 2}, "actors": 1}})
    assert infeasible(plan_for(spec, cluster=cluster)) == []
    assert "models[0], models[1]: the actor pools' minimum sizes do not fit" in caplog.text


def test_a_model_given_gpus_and_an_auto_model_share_the_gpus_without_overbooking(data):
    four = Cluster((Node("g", "10.0.0.1", cpus=16, gpus=4),), "test")
    spec = simple(data, resources={"num_gpus": 1})
    spec["models"].append({"type": "echo"})
    plan = plan_for(spec, cluster=four)
    pools = [(n.ray_args["num_gpus"], n.pool) for n in plan.nodes[2:4]]
    assert pools == [(1, (2, 2)), (1.0, (2, 2))]  # 4 GPUs, not 5
    assert infeasible(plan) == []


def test_the_gpu_nodes_cpus_are_shared_among_the_gpu_models(data):
    box = Cluster((Node("g", "10.0.0.1", cpus=4, gpus=2),), "test")
    spec = simple(data, resources={"num_gpus": 0.25})
    spec["models"].append({"type": "echo", "resources": {"num_gpus": 0.25}})
    plan = plan_for(spec, cluster=box)
    assert [n.pool for n in plan.nodes[2:4]] == [(1, 1), (1, 1)]  # 3 spare CPUs, 2 models
    assert infeasible(plan) == []


def test_a_stage_with_a_batch_size_gets_blocks_of_a_few_batches_where_cutting_is_free(data):
    # Cut in the task before the stage: the reader's, or a CPU stage's before a model pool;
    # never between two CPU stages (which Ray Data fuses into one task) or two models.
    spec = {
        "reader": {"type": "parquet", "path": data},
        "preprocessors": [
            {"type": "select_columns", "resources": {"batch_size": 16}},
            {"type": "upper", "resources": {"batch_size": 8}},
        ],
        "models": [
            {"type": "echo", "resources": {"batch_size": 32}},
            {"type": "echo", "resources": {"batch_size": 10}},
        ],
        "postprocessors": [
            {"type": "rename_columns", "mapping": {"x": "y"}, "resources": {"batch_size": 5}}
        ],
        "writer": {"type": "parquet", "path": "/tmp/o"},
    }
    plan = plan_for(spec, [upper])
    cuts = [node.block_rows for node in plan.nodes if isinstance(node, MapNode)]
    assert cuts == [64, None, 128, None, None]
    # Without a batch size a stage takes whole blocks, as the spec's Ray Data default says.
    del spec["preprocessors"][0]["resources"]
    assert plan_for(spec, [upper]).nodes[1].block_rows is None


def test_a_huge_pool_is_placed_at_once_not_actor_by_actor(data):
    # `ray.num_cpus=100000000000000000000` made --plan and --validate hang: the model's
    # pool of ~1e19 actors was placed one actor at a time.
    huge = Cluster((Node("n1", "h", cpus=1e20, spare_cpus=1),), "test")
    plan = plan_for(simple(data), cluster=huge)
    assert plan.nodes[2].pool[0] > 10**18
    assert infeasible(plan) == []
    # Placed in bulk, exactly as many as one by one: 3 actors of 1 CPU fit 3 CPUs, not 4.
    three = Cluster((Node("n1", "h", cpus=3),), "test")
    resources = {"num_cpus": 1, "actors": [4, 4]}
    plan = plan_for(simple(data, resources=resources), cluster=three)
    assert not _placed(list(three.nodes), [plan.nodes[2]])
    resources = {"num_cpus": 0.75, "actors": [4, 4]}
    plan = plan_for(simple(data, resources=resources), cluster=three)
    assert _placed(list(three.nodes), [plan.nodes[2]])


def test_auto_gpu_shares_pack_onto_whole_gpus(data):
    # Ray places a fraction of a GPU on one GPU: three 0.66 actors need three GPUs.
    spec = simple(data)
    spec["models"] += [{"type": "echo", "scale": 2}, {"type": "echo", "scale": 3}]
    plan = plan_for(spec, cluster=GPU_BOX)
    models = [(n.ray_args["num_gpus"], n.pool) for n in plan.nodes[2:5]]
    assert models == [(0.5, (1, 1))] * 3
    assert infeasible(plan) == []


def test_a_pool_of_gpu_fractions_is_counted_gpu_by_gpu(data):
    # 0.4 GPU each: two on each GPU (a third would span two), 4 on 2 GPUs, not 5.
    box = Cluster((Node("g", "10.0.0.1", cpus=16, gpus=2),), "test")
    plan = plan_for(simple(data, resources={"num_gpus": 0.4}), cluster=box)
    assert plan.nodes[2].pool == (4, 4)
    assert infeasible(plan) == []
    five = plan_for(simple(data, resources={"num_gpus": 0.4, "actors": 5}), cluster=box)
    assert infeasible(five) == [
        "models[0]: its pool needs at least 5 actors asking for num_cpus=1, num_gpus=0.4 "
        "each, and the nodes have room for 4 - lower the pool's minimum or the per-actor "
        "ask - test: 1 node: 10.0.0.1 (16 CPUs, 2 GPUs)"
    ]


def test_an_auto_pool_of_multi_gpu_actors_fits_node_by_node(data):
    # 6 GPUs on 2 nodes hold two 2-GPU actors, not three: the plan must not ask for three.
    nodes = tuple(Node(f"g{i}", f"10.0.0.{i}", cpus=8, gpus=3) for i in (1, 2))
    plan = plan_for(simple(data, resources={"num_gpus": 2}), cluster=Cluster(nodes, "test"))
    assert plan.nodes[2].pool == (2, 2)
    assert infeasible(plan) == []


def test_pools_of_gpu_fractions_that_only_fit_one_after_another_are_a_warning(data, caplog):
    # 1.98 GPUs of 2 in all, but no two 0.66 actors share a GPU: the third pool waits.
    spec = simple(data, resources={"num_gpus": 0.66, "actors": 1})
    for scale in (2, 3):
        spec["models"].append(
            {"type": "echo", "scale": scale, "resources": {"num_gpus": 0.66, "actors": 1}}
        )
    assert infeasible(plan_for(spec, cluster=GPU_BOX)) == []
    assert "models[0], models[1], models[2]: the actor pools' minimum sizes do not fit" in (
        caplog.text
    )


def test_this_machine_offers_its_gpus_accelerator_type_as_ray_will(data, monkeypatch):
    # --plan and --validate size a local run before Ray starts: a model asking the
    # machine's own GPU type was refused (exit 7) though the run, on Ray, would start it.
    # No GPU here: the GPU count and the name Ray reads from NVML stand in for one.
    from ray._private.accelerators import NvidiaGPUAcceleratorManager

    from framework import cluster as cluster_module

    monkeypatch.setattr(cluster_module, "_local_gpus", lambda: 1)
    monkeypatch.setattr(
        NvidiaGPUAcceleratorManager,
        "get_current_node_accelerator_type",
        staticmethod(lambda: "A100"),
    )
    local = cluster_module.local_cluster(num_cpus=8)
    assert local.nodes[0].accelerator_types == {"A100"}
    asks = {"num_gpus": 1, "accelerator_type": "A100"}
    assert infeasible(plan_for(simple(data, resources=asks), cluster=local)) == []
    wrong = {"num_gpus": 1, "accelerator_type": "H100"}
    assert infeasible(plan_for(simple(data, resources=wrong), cluster=local))
