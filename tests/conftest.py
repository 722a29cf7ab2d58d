from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

pytest_plugins = ["tests.s3fixture"]

# Keep Ray quiet and small on a 2-core CI machine; every test shares one local cluster.
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One local Ray for the whole test session, started on first use."""
    import ray

    from framework.ray_session import start_local_ray

    if not ray.is_initialized():
        start_local_ray(2, object_store_memory=1024**3, log_to_driver=False)
    yield
    ray.shutdown()
