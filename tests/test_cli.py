from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from framework.cli import main
from framework.cli_parser import run_parser
from framework.errors import ExitCode
from tests.helpers import ROOT, run_cli


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    data = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "x": np.arange(2.0)}), data)
    path = tmp_path / "spec.yaml"
    path.write_text(
        f"""
reader:
  type: parquet
  path: {data}
  storage: {{secret_access_key: "${{oc.env:INFER_TEST_SECRET,hunter2}}", region: eu-west-1}}
models:
  - {{type: echo, resources: {{actors: [1, 2], batch_size: 16}}}}
writer: {{type: parquet, path: {tmp_path / "out"}}}
"""
    )
    return path


def test_validate(spec, capsys):
    assert main([str(spec), "--validate"]) == ExitCode.OK
    assert capsys.readouterr().out == f"{spec}: valid (3 stages: reader, 1 model, writer)\n"
    more = [
        "preprocessors=[{type: select_columns, columns: [x]}]",
        "models=[{type: echo}, {type: echo}]",
    ]
    assert main([str(spec), "--validate", *more]) == ExitCode.OK
    assert capsys.readouterr().out == (
        f"{spec}: valid (5 stages: reader, 1 preprocessor, 2 models, writer)\n"
    )


def test_print_spec_is_resolved_yaml_without_secrets(spec, capsys, tmp_path):
    assert main([str(spec), "--print-spec", "run.limit=3", "--limit", "4"]) == ExitCode.OK
    out = capsys.readouterr().out
    printed = yaml.safe_load(out)
    assert printed["run"]["limit"] == 4  # flags apply after key=value overrides
    assert printed["reader"]["storage"] == {"secret_access_key": "***", "region": "eu-west-1"}
    assert "hunter2" not in out
    # A key pasted in place of the storage mapping is masked too (validation refuses it).
    assert main([str(spec), "--print-spec", "reader.storage=AKIAHUNTER2"]) == ExitCode.OK
    out = capsys.readouterr().out
    assert yaml.safe_load(out)["reader"]["storage"] == "***" and "AKIAHUNTER2" not in out


def test_plan_prints_stages_with_resources_and_why(spec, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # pin the local cluster: 4 CPUs, no GPU
    assert main([str(spec), "--plan", "ray.num_cpus=4"]) == ExitCode.OK
    assert capsys.readouterr().out.splitlines() == [
        f"cluster: this machine: 1 node: localhost (4 CPUs, 0 GPUs, {MEMORY})",
        "0. reader       reader             parquet  num_cpus=0.25 tasks<=2",
        "   auto (num_cpus): 0.25 CPU per task, to fit beside the model actors; 2 at once",
        # The pool's 2 actors share the 3.5 CPUs (each sized for the whole, the second
        # could never start).
        "1. model        models[0]          echo  actors=1..2 batch_size=16 block_rows<=64 "
        "num_cpus=1.75",
        "   auto (num_cpus, num_gpus): no GPU: 2 actor(s) of 1.75 CPUs (torch threads follow), "
        "0.5 CPU per node kept for reading, CPU stages and writing",
        "2. writer       writer             parquet  num_cpus=0.25 -> " + str(tmp_path / "out"),
        "   auto (num_cpus): 0.25 CPU per task, to fit beside the model actors",
    ]


def test_plan_refuses_what_the_cluster_cannot_run(spec, capsys, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    code = main([str(spec), "--validate", "ray.num_cpus=2", "models.0.resources.num_gpus=1"])
    assert code == ExitCode.RESOURCE_ERROR
    assert capsys.readouterr().err == (
        "infer-run: error: models[0]: asks for num_cpus=1, num_gpus=1 per actor, which no node "
        f"has - this machine: 1 node: localhost (2 CPUs, 0 GPUs, {MEMORY})\n"
    )


def test_validate_refuses_memory_this_machine_could_never_grant(spec, capsys):
    code = main([str(spec), "--validate", "models.0.resources.memory=100000000000000"])
    assert code == ExitCode.RESOURCE_ERROR
    err = capsys.readouterr().err
    assert "models[0]: asks for num_cpus=" in err
    assert "memory=9.31e+04 GiB per actor, which no node has - this machine" in err
    assert MEMORY in err


MEMORY = f"{psutil.virtual_memory().total / 2**30:.3g} GiB memory"


def test_plugins_lists_kind_name_and_distribution(capsys):
    assert main(["plugins"]) == ExitCode.OK
    lines = capsys.readouterr().out.splitlines()
    echo = next(line for line in lines if line.startswith("model"))
    assert echo.split() == ["model", "echo", "infer-run", "0.1.0", "plugins.echo.EchoModel"]
    assert main(["plugins", "--json"]) == ExitCode.OK
    rows = json.loads(capsys.readouterr().out)
    assert {
        "kind": "writer",
        "name": "jsonl",
        "class": "plugins.jsonl_writer.JsonlWriter",
        "plugin": "jsonl",
        "distribution": "infer-run",
        "version": "0.1.0",
    } in rows


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["@SPEC@", "--valdiate"],
            "infer-run: error: unrecognized arguments: --valdiate - did you mean '--validate'?",
        ),
        (
            ["@SPEC@", "--overwite"],
            "infer-run: error: unrecognized arguments: --overwite - did you mean '--overwrite'?",
        ),
        (
            ["@SPEC@", "--print_spec=1"],
            "infer-run: error: unrecognized arguments: --print_spec=1 - did you mean '--print-spec'?",
        ),
        (
            ["k8s", "@SPEC@", "--imgae=x"],
            "infer-run k8s: error: unrecognized arguments: --imgae=x - did you mean '--image'?",
        ),
        # A flag's first letters no longer run it: --over ran as --overwrite.
        (
            ["@SPEC@", "--over"],
            "infer-run: error: unrecognized arguments: --over - did you mean '--overwrite'?",
        ),
        (
            ["datagen", "@OUT@", "--rows", "2", "--over"],
            "infer-run datagen: error: unrecognized arguments: --over - did you mean '--overwrite'?",
        ),
        # No spec, no key=value: the hint that spec values are set as key=value is nonsense.
        (
            ["plugins", "--jsn"],
            "infer-run plugins: error: unrecognized arguments: --jsn - did you mean '--json'?",
        ),
        (["plugins", "extra"], "infer-run plugins: error: unrecognized arguments: extra"),
        (
            ["datagen", "@OUT@", "--rows", "2", "--zzz"],
            "infer-run datagen: error: unrecognized arguments: --zzz",
        ),
    ],
)
def test_an_unknown_flag_gets_a_did_you_mean_and_only_fitting_hints(
    spec, tmp_path, capsys, argv, expected
):
    argv = [a.replace("@SPEC@", str(spec)).replace("@OUT@", str(tmp_path / "gen")) for a in argv]
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == ExitCode.USAGE_ERROR
    assert capsys.readouterr().err == expected + "\n"
    assert not (tmp_path / "gen").exists()


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--limit", "0", "argument --limit: must be at least 1, got 0"),
        ("--limit", "-3", "argument --limit: must be at least 1, got -3"),
        ("--limit", "x", "argument --limit: expected a whole number, got 'x'"),
        ("--calibrate", "0", "argument --calibrate: must be at least 1, got 0"),
        ("--calibrate", "-1", "argument --calibrate: must be at least 1, got -1"),
    ],
)
def test_a_bad_numeric_flag_is_a_usage_error_naming_the_flag(spec, capsys, flag, value, expected):
    """Not a spec error about a run.limit the spec never set: both flags exit as argparse's
    own mistakes do."""
    with pytest.raises(SystemExit) as exited:
        main([str(spec), "--validate", f"{flag}={value}"])
    assert exited.value.code == ExitCode.USAGE_ERROR
    assert capsys.readouterr().err == f"infer-run: error: {expected}\n"


def test_console_script_exit_codes_and_no_traceback(spec, tmp_path):
    exe = str(Path(sys.executable).parent / "infer-run")  # the installed console script
    ok = subprocess.run([exe, str(spec), "--validate"], capture_output=True, text=True)
    assert ok.returncode == ExitCode.OK, ok.stderr
    bad = subprocess.run(
        [exe, str(spec), "--validate", "models.0.type=ecko"], capture_output=True, text=True
    )
    assert bad.returncode == ExitCode.SPEC_ERROR
    assert bad.stderr == (
        f"infer-run: error: spec {spec}: 1 problem\n"
        "  models[0].type: unknown model 'ecko' - did you mean 'echo'?\n"
    )
    missing = subprocess.run([exe, str(tmp_path / "x.yaml")], capture_output=True, text=True)
    assert missing.returncode == ExitCode.INPUT_ERROR
    assert "Traceback" not in missing.stderr


def test_a_cluster_address_nobody_answers_at_fails_in_seconds(spec):
    with socket.socket() as probe:  # a port nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = run_cli(str(spec), "--address", f"127.0.0.1:{port}", timeout=60)
    assert done.returncode == ExitCode.INPUT_ERROR, done.stderr[-2000:]
    assert done.stderr.startswith(
        f"infer-run: error: ray.address: nothing answers at 127.0.0.1:{port} ("
    )
    assert "Traceback" not in done.stderr


def test_a_run_that_cannot_start_keeps_the_old_output_and_leaves_no_new_one(spec, tmp_path):
    assert main([str(spec)]) == ExitCode.OK
    before = sorted(p.name for p in (tmp_path / "out").iterdir())
    unreachable = run_cli(str(spec), "--overwrite", "ray.address=127.0.0.1:1")
    assert unreachable.returncode == ExitCode.INPUT_ERROR, unreachable.stderr
    infeasible = run_cli(str(spec), "--overwrite", "models.0.resources.custom={decoder: 1}")
    assert infeasible.returncode == ExitCode.RESOURCE_ERROR, infeasible.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == before
    # A fresh output path: nothing is created, so the next run is not refused.
    fresh = run_cli(
        str(spec), f"writer.path={tmp_path / 'fresh'}", "models.0.resources.custom={decoder: 1}"
    )
    assert fresh.returncode == ExitCode.RESOURCE_ERROR, fresh.stderr
    assert not (tmp_path / "fresh").exists()


def test_an_address_that_is_not_rays_gcs_fails_in_seconds(spec, tmp_path):
    web = subprocess.Popen(
        [sys.executable, "-m", "http.server", "0", "--bind", "127.0.0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=tmp_path,
    )
    try:
        assert web.stdout is not None
        port = web.stdout.readline().split("port ")[1].split()[0]  # "Serving HTTP on ... port N"
        done = run_cli(str(spec), "--address", f"127.0.0.1:{port}", timeout=60)
    finally:
        web.kill()
    assert done.returncode == ExitCode.INPUT_ERROR, done.stderr[-2000:]
    assert done.stderr.startswith(
        f"infer-run: error: ray.address: 127.0.0.1:{port} is not Ray's GCS"
    )
    assert "not the dashboard's (8265)" in done.stderr


def test_sigterm_stops_a_join_that_hangs(spec):
    with socket.socket() as silent:  # accepts connections and never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        run = subprocess.Popen(
            [sys.executable, "-m", "framework.cli", str(spec), "--address", f"127.0.0.1:{port}"],
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(8)  # past the checks, inside Ray's join, which retries for minutes
        assert run.poll() is None
        run.terminate()
        _, err = run.communicate(timeout=10)
    assert run.returncode == ExitCode.TERMINATED, err[-2000:]
    assert err.endswith(f"infer-run: stopped while joining the Ray cluster at 127.0.0.1:{port}\n")


@pytest.mark.slow
def test_joining_a_cluster_that_wants_a_token_says_so(spec, tmp_path):
    cluster = subprocess.Popen(
        [sys.executable, "tests/ray_cluster_proc.py", '[{"num_cpus": 1}]'],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "t" * 32},
    )
    try:
        assert cluster.stdout is not None
        address = cluster.stdout.readline().strip()
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
        done = subprocess.run(
            [sys.executable, "-m", "framework.cli", str(spec), "--address", address],
            capture_output=True,
            text=True,
            env=env,
            timeout=180,
        )
    finally:
        assert cluster.stdin is not None
        cluster.stdin.close()
        cluster.wait(timeout=120)
    assert done.returncode == ExitCode.INPUT_ERROR, done.stderr[-2000:]
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith(
        f"infer-run: error: ray.address: could not join the Ray cluster at {address}"
    )
    assert "RAY_AUTH_MODE=token" in line and "Traceback" not in done.stderr


def test_a_reader_that_leaves_early_is_not_an_error():
    # `infer-run plugins | head -1`: here the pipe is closed before anything is written.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "framework.cli", "plugins"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == ExitCode.OK, err
    assert "Traceback" not in err, err


@pytest.mark.parametrize("command", ["k8s", "bench"])
def test_a_command_without_its_spec_says_so(command, capsys):
    # argparse's own line named the optional overrides as required too.
    with pytest.raises(SystemExit) as info:
        main([command])
    assert info.value.code == ExitCode.USAGE_ERROR
    err = capsys.readouterr().err
    assert err == (
        f"infer-run {command}: error: a spec file is required: "
        f"infer-run {command} SPEC [key=value ...]\n"
    )


def test_the_help_of_limit_and_validate_says_what_they_do():
    # --limit said "the first N rows", which across several files it is not (README,
    # run.limit); --validate did not say that it checks resources against the cluster.
    text = " ".join(run_parser().format_help().split())
    assert (
        "--limit N process only N rows: the first the read tasks reach, not the first N in "
        "file order; same as run.limit" in text
    )
    assert (
        "--validate check the spec, its plugins and inputs, and the stages' resources "
        "against the cluster (this machine without --address); run nothing" in text
    )


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        # --print-spec printed and exited 0: the spec was neither checked nor planned.
        (["--print-spec", "--validate"], "--print-spec checks nothing: leave out --validate"),
        (["--print-spec", "--plan"], "--print-spec checks nothing: leave out --plan"),
        (
            ["--print-spec", "--calibrate", "4"],
            "--print-spec checks nothing: leave out --calibrate",
        ),
        # --validate promises to run nothing; --calibrate runs every stage on a sample.
        (
            ["--validate", "--calibrate", "4"],
            "--validate runs nothing and --calibrate runs every stage on a sample: give one",
        ),
    ],
)
def test_flags_that_would_be_ignored_are_a_usage_error(spec, capsys, flags, expected):
    with pytest.raises(SystemExit) as exited:
        main([str(spec), "models.0.type=ecko", *flags])
    assert exited.value.code == ExitCode.USAGE_ERROR
    assert capsys.readouterr().err == f"infer-run: error: {expected}\n"


@pytest.mark.parametrize(
    "override",
    [
        "reader.storage.secret_access_key=@HUNTER2",  # '@' cannot start a plain YAML value
        "reader.storage={secret_access_key: [HUNTER2}",
        "models.0.api_token=%HUNTER2",
    ],
)
def test_an_override_refused_never_echoes_a_secret_value(spec, capsys, override):
    """An override's problem quoted the whole ``key=value``: a secret pasted on the
    command line reached the terminal and the CI log."""
    assert main([str(spec), "--validate", override]) == ExitCode.SPEC_ERROR
    err = capsys.readouterr().err
    key = override.partition("=")[0]
    assert f"override '{key}=***'" in err, err
    assert "HUNTER2" not in err, err
