"""Where a run writes besides its output, and storage mistakes, against moto's S3 server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from framework.cli import main
from framework.dead_letter import ErrorPolicy, Failure
from framework.errors import ExitCode, InputError
from framework.redact import redact
from framework.resume import MANIFEST_NAME, check_resumable, manifest, write_manifest
from framework.storage import filesystem_for
from plugins.jsonl_writer import JsonlWriter

pytestmark = pytest.mark.ray

GOOD_LINES = [{"key": f"k{i}", "x": i} for i in range(6)]


def spec_file(tmp_path: Path, reader: dict[str, Any], **sections: Any) -> Path:
    spec = {
        "reader": {"type": "jsonl", "id_column": "key", **reader},
        "models": [{"type": "echo"}],
        "writer": {"type": "parquet", "path": str(tmp_path / "out")},
        **sections,
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def objects(s3_server: Any, bucket: str, prefix: str) -> dict[str, bytes]:
    client = s3_server.client()
    listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {
        o["Key"]: client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
        for o in listed
        if not o["Key"].endswith("/")  # the folder markers pyarrow's create_dir leaves
    }


def test_dead_letters_and_report_on_s3_use_the_specs_storage(
    ray_session, s3_server, s3_bucket, tmp_path, monkeypatch
):
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID"):
        monkeypatch.delenv(name, raising=False)  # only the spec's storage node says where
    body = "\n".join(json.dumps(r) for r in GOOD_LINES) + "\nnot json\n"
    s3_server.client().put_object(Bucket=s3_bucket, Key="in/a.jsonl", Body=body.encode())
    reader = {"path": f"s3://{s3_bucket}/in", "storage": s3_server.storage}
    spec = spec_file(
        tmp_path,
        reader,
        errors={"policy": "skip", "dead_letter": f"s3://{s3_bucket}/dl"},
        run={"report": f"s3://{s3_bucket}/reports/run.json"},
    )
    assert main([str(spec)]) == ExitCode.OK
    (record_file,) = objects(s3_server, s3_bucket, "dl/").values()
    (record,) = [json.loads(line) for line in record_file.decode().splitlines()]
    assert record["stage"] == "reader" and "line 7" in record["message"]
    report = json.loads(objects(s3_server, s3_bucket, "reports/")["reports/run.json"])
    assert (report["rows_written"], report["rows_failed"]) == (6, 1)
    # The folder outlives the output: a new run refuses its records, --overwrite clears
    # them (archives of replays included) with the output.
    client = s3_server.client()
    client.put_object(
        Bucket=s3_bucket, Key="dl/replayed-20240101T000000Z/reader-old.jsonl", Body=b""
    )
    client.put_object(Bucket=s3_bucket, Key="dl/notes.txt", Body=b"the user's")
    assert main([str(spec), f"writer.path={tmp_path / 'other'}"]) == ExitCode.INPUT_ERROR
    assert main([str(spec), "--overwrite"]) == ExitCode.OK
    left = objects(s3_server, s3_bucket, "dl/")
    assert sorted(k for k in left if not k.endswith(".jsonl")) == ["dl/notes.txt"]
    assert len([k for k in left if k.endswith(".jsonl")]) == 1  # this run's record only


def test_a_report_or_timeline_on_s3_ending_in_a_slash_is_written_into_that_folder(
    ray_session, s3_server, s3_bucket, tmp_path
):
    """``s3://b/reports/`` and ``s3://b/traces/`` wrote objects named ``reports`` and
    ``traces``, not a file inside each."""
    body = "\n".join(json.dumps(r) for r in GOOD_LINES) + "\n"
    s3_server.client().put_object(Bucket=s3_bucket, Key="in/a.jsonl", Body=body.encode())
    reader = {"path": f"s3://{s3_bucket}/in", "storage": s3_server.storage}
    run = {"report": f"s3://{s3_bucket}/reports/", "timeline": f"s3://{s3_bucket}/traces/"}
    spec = spec_file(tmp_path, reader, run=run)
    assert main([str(spec)]) == ExitCode.OK
    written = objects(s3_server, s3_bucket, "reports")
    assert sorted(written) == ["reports/_infer_run_report.json"]
    assert json.loads(written["reports/_infer_run_report.json"])["rows_written"] == 6
    written = objects(s3_server, s3_bucket, "traces")
    assert sorted(written) == ["traces/_infer_run_timeline.json"]
    assert json.loads(written["traces/_infer_run_timeline.json"])


def test_storage_mistakes_and_unreachable_places_are_one_line_each(
    s3_server, s3_bucket, tmp_path, capsys
):
    s3_server.client().put_object(Bucket=s3_bucket, Key="in/a.jsonl", Body=b'{"key": "k"}\n')
    storage = s3_server.storage
    spec = spec_file(tmp_path, {"path": f"s3://{s3_bucket}/in", "storage": storage})
    dead = {**storage, "endpoint_url": "http://127.0.0.1:9"}
    cases = {
        # ${oc.env:VAR,false} gives the string 'False', which used to turn anonymous on.
        "reader.storage.anonymous='false'": "reader.storage.anonymous: expected true or false, got 'false'",
        "writer.storage={session_token: 12345}": "writer.storage.session_token: expected a string, got int",
        f"errors.dead_letter=s3://no-such-{s3_bucket}/dl": (
            f"errors.dead_letter: cannot write to s3://no-such-{s3_bucket}/dl: "
            "the bucket does not exist"
        ),
        f"run.report=s3://{s3_bucket}//r.json": (
            f"run.report: cannot write to s3://{s3_bucket}//r.json: a path component is empty ('//')"
        ),
        f"writer.path=s3://{s3_bucket}/out": None,  # with the dead endpoint below
        f"reader.path=s3://{s3_bucket}//in": f"reader.path: cannot access s3://{s3_bucket}//in",
        f"reader.path=s3://{s3_bucket}/empty": f"reader.path: no jsonl files (jsonl, json) under s3://{s3_bucket}/empty",
    }
    s3_server.client().put_object(Bucket=s3_bucket, Key="empty/readme.txt", Body=b"no jsonl")
    for override, expected in cases.items():
        extra = [f"writer.storage={json.dumps(dead)}"] if expected is None else []
        assert main([str(spec), "--validate", override, *extra]) == ExitCode.SPEC_ERROR, override
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 2, err  # the heading and one problem
        if expected is None:
            expected = f"writer.path: cannot write to s3://{s3_bucket}/out: "
        assert err[1].strip().startswith(expected), (override, err)


@pytest.mark.parametrize("slashes", ["/", "//"])
def test_an_output_and_dead_letters_named_with_a_trailing_slash_on_s3(
    s3_server, s3_bucket, slashes
):
    """A folder is often written with its ``/``: locally the path is made absolute, which
    drops it; on S3 it made every file under it ``out//name``, which pyarrow refuses."""
    storage = s3_server.storage
    writer = JsonlWriter(path=f"s3://{s3_bucket}/out{slashes}", storage=storage)
    writer.prepare()
    expected = manifest({"writer": {"type": "jsonl"}}, [])
    write_manifest(writer, expected)
    assert check_resumable(writer, expected) == expected
    assert writer.committed_ids() == []
    dead = ErrorPolicy("skip", f"s3://{s3_bucket}/dl{slashes}", storage)
    dead.write([Failure("k1", "models[0]", "ValueError", "bad")])
    assert [json.loads(d)["id"] for _, d in dead.read_records()] == ["k1"]
    assert sorted(objects(s3_server, s3_bucket, "")) == [
        "dl/" + dead.record_paths()[0].rsplit("/", 1)[1],
        f"out/{MANIFEST_NAME}",
    ]


def test_secrets_masked_in_the_resolved_spec_copy_come_from_the_environment(s3_server, monkeypatch):
    """``infer-run out/x/_infer_run_spec.yaml --resume`` is how a killed replay is finished;
    that copy holds ``***`` for a secret given as ``${oc.env:AWS_SECRET_ACCESS_KEY}``,
    and the ``***`` was sent as the secret key: every request was refused."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "from-the-environment")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "token-from-the-environment")
    copied = redact({**s3_server.storage, "session_token": "a-token"})
    assert copied["secret_access_key"] == copied["session_token"] == "***"

    fs, _ = filesystem_for("s3://bucket/out", copied)

    (options,) = fs.__reduce__()[1]  # what the filesystem signs its requests with
    assert options["access_key"] == s3_server.storage["access_key_id"]
    assert options["secret_key"] == "from-the-environment"
    assert options["session_token"] == "token-from-the-environment"


def test_overwrite_clears_an_s3_folder_that_shares_its_name_with_an_object(s3_server, s3_bucket):
    """S3 holds a key ``out`` and keys under ``out/`` side by side: ``--overwrite`` removed
    the one object, and the new output was written among the old run's files."""
    client = s3_server.client()
    for key in ("out", "out/old-000000.json", "out/_dead_letter/models_0-x.jsonl", "out-2/a"):
        client.put_object(Bucket=s3_bucket, Key=key, Body=b"{}\n")
    writer = JsonlWriter(path=f"s3://{s3_bucket}/out", storage=s3_server.storage)
    with pytest.raises(InputError, match="already exists"):
        writer.prepare()

    JsonlWriter(path=f"s3://{s3_bucket}/out", storage=s3_server.storage, overwrite=True).prepare()

    assert sorted(objects(s3_server, s3_bucket, "")) == ["out-2/a"]


def test_an_endpoint_holding_a_password_or_a_query_is_masked_in_every_message(
    s3_server, s3_bucket, tmp_path, capsys
):
    """pyarrow's own message repeats a custom endpoint it cannot use, whole ("Custom
    endpoint `http://host/?token=...` was not a valid URI"), and ``--print-spec`` printed
    ``endpoint_url`` as given: a password or a signed query in it reached the terminal."""
    s3_server.client().put_object(Bucket=s3_bucket, Key="in/a.jsonl", Body=b'{"key": "k"}\n')
    spec = spec_file(tmp_path, {"path": f"s3://{s3_bucket}/in", "storage": s3_server.storage})
    for endpoint in (
        f"{s3_server.endpoint_url}/?X-Amz-Security-Token=sekrit-token",
        "http://user:sekrit-password@127.0.0.1:9",
    ):
        storage = {**s3_server.storage, "endpoint_url": endpoint}
        overrides = [f"writer.path=s3://{s3_bucket}/out", f"writer.storage={json.dumps(storage)}"]
        assert main([str(spec), "--validate", *overrides]) == ExitCode.SPEC_ERROR, endpoint
        err = capsys.readouterr().err
        assert f"writer.path: cannot write to s3://{s3_bucket}/out: " in err, err
        assert main([str(spec), "--print-spec", *overrides]) == ExitCode.OK
        printed = capsys.readouterr().out
        assert "endpoint_url: http" in printed, printed
        assert "sekrit" not in err + printed, (err, printed)


def test_a_record_file_that_cannot_be_read_on_s3_is_named_by_its_uri(s3_server, s3_bucket):
    """``read_files`` named the file as inside its filesystem, ``bucket/dl/x.jsonl``: not
    a path the user can give back, nor the place ``errors.dead_letter`` names."""
    from framework.storage import read_files

    fs, root = filesystem_for(f"s3://{s3_bucket}/dl", s3_server.storage)
    with pytest.raises(InputError) as stopped:
        read_files(fs, [f"{root}/gone.jsonl"], "errors.dead_letter", "s3://")
    message = str(stopped.value)
    assert message.startswith(f"errors.dead_letter: cannot read s3://{s3_bucket}/dl/gone.jsonl: ")
    assert "\n" not in message


@pytest.mark.parametrize("name", ["report", "timeline"])
def test_a_report_or_timeline_named_as_a_bucket_goes_into_it(s3_server, s3_bucket, name):
    """``run.report: s3://bucket`` passed the check before the run, then failed to write
    once the run was done (``Not a regular file: 'bucket'``): a bucket is a folder with or
    without its ``/``."""
    from framework.run_files import write_extra
    from framework.spec.places import REPORT_NAME, TIMELINE_NAME, report_file, timeline_file

    file, inside = (
        (report_file, REPORT_NAME) if name == "report" else (timeline_file, TIMELINE_NAME)
    )
    for path in (f"s3://{s3_bucket}", f"s3://{s3_bucket}/"):
        assert file(path) == f"s3://{s3_bucket}/{inside}"
        write_extra(file(path), "{}", f"run.{name}", s3_server.storage)
        assert objects(s3_server, s3_bucket, "") == {inside: b"{}"}
    assert file(f"s3://{s3_bucket}/r.json") == f"s3://{s3_bucket}/r.json"


def test_keys_given_in_the_spec_are_not_signed_with_the_environments_session_token(
    s3_server, monkeypatch
):
    """A shell logged in through SSO or an assumed role holds ``AWS_SESSION_TOKEN``: it
    was sent with the spec's own long-term keys, which AWS refuses (``InvalidToken``) on
    every request. A token goes with the secret it came with."""
    monkeypatch.setenv("AWS_SESSION_TOKEN", "token-of-another-identity")
    fs, _ = filesystem_for("s3://bucket/out", s3_server.storage)
    (options,) = fs.__reduce__()[1]
    assert options["secret_key"] == s3_server.storage["secret_access_key"]
    assert not options["session_token"]
    given = {**s3_server.storage, "session_token": "its-own-token"}
    (options,) = filesystem_for("s3://bucket/out", given)[0].__reduce__()[1]
    assert options["session_token"] == "its-own-token"


def test_a_pattern_on_an_unreachable_store_names_its_folder_by_its_uri(s3_server, s3_bucket):
    """The folder a pattern lists was named as inside its filesystem (``bucket/in``)."""
    from framework.errors import SpecError
    from framework.storage import expand_globs

    dead = {**s3_server.storage, "endpoint_url": "http://127.0.0.1:9"}
    with pytest.raises(SpecError) as stopped:
        expand_globs(f"s3://{s3_bucket}/in/*.jsonl", dead)
    (problem,) = stopped.value.problems
    assert problem.startswith(f"path: cannot list s3://{s3_bucket}/in for "), problem
