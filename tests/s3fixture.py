"""An S3 server for tests: moto in server mode on loopback, real HTTP, no mocks.

Loaded by ``pytest_plugins = ["tests.s3fixture"]`` in tests/conftest.py.
``s3_server`` runs once per session; ``s3_bucket`` gives each test a fresh, empty
bucket. Readers and writers reach it through ``storage=s3_server.storage``; Ray
workers reach it too, since it listens on a real port.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REGION = "us-east-1"
# moto accepts any credentials; explicit ones keep boto3 and pyarrow off the user's
# real profile and the instance metadata service.
ACCESS_KEY_ID = "testing"
SECRET_ACCESS_KEY = "testing"


class RequestLog:
    """Wraps moto's WSGI app and notes whether each request came signed (``anonymous``)."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.signed: list[bool] = []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        query = environ.get("QUERY_STRING", "")
        self.signed.append("HTTP_AUTHORIZATION" in environ or "X-Amz-Signature" in query)
        return self.app(environ, start_response)


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    requests: RequestLog | None = field(default=None, compare=False)

    @property
    def storage(self) -> dict[str, Any]:
        """A spec's ``storage:`` node for this server; a new dict each time, free to edit."""
        return {
            "endpoint_url": self.endpoint_url,
            "region": REGION,
            "access_key_id": ACCESS_KEY_ID,
            "secret_access_key": SECRET_ACCESS_KEY,
        }

    def client(self) -> Any:
        """A boto3 S3 client bound to this server."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET_ACCESS_KEY,
        )

    def upload_tree(self, local: Path, bucket: str, prefix: str = "", **put: Any) -> list[str]:
        """Upload every file under ``local`` to ``bucket/prefix`` (``put``: more ``put_object``
        arguments, e.g. ``ACL="public-read"``); returns the keys, sorted."""
        client = self.client()
        keys = []
        for file in sorted(p for p in Path(local).rglob("*") if p.is_file()):
            key = "/".join(
                part for part in (prefix.strip("/"), file.relative_to(local).as_posix()) if part
            )
            client.put_object(Bucket=bucket, Key=key, Body=file.read_bytes(), **put)
            keys.append(key)
        return keys


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    from moto.moto_server.threaded_moto_server import MotoRequestHandler
    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    # werkzeug logs every request at INFO; keep that out of failure reports.
    werkzeug = logging.getLogger("werkzeug")
    level = werkzeug.level
    werkzeug.setLevel(logging.WARNING)
    # What moto's ThreadedMotoServer does, with the app wrapped to see each request.
    requests = RequestLog(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, requests, True, request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield S3Server(endpoint_url=f"http://{host}:{port}", requests=requests)
    finally:
        server.shutdown()
        thread.join()
        werkzeug.setLevel(level)


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> Iterator[str]:
    """A new empty bucket, deleted with its objects after the test."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    client = s3_server.client()
    client.create_bucket(Bucket=name)
    yield name
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
        for item in page.get("Contents", []):
            client.delete_object(Bucket=name, Key=item["Key"])
    client.delete_bucket(Bucket=name)
