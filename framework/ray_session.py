"""Starting or joining the Ray a run executes on, with the settings that keep it lean."""

from __future__ import annotations

import contextlib
import copy
import importlib
import os
import signal
import socket
import threading
from collections.abc import Iterator
from typing import Any

import ray
import ray.data

from framework.allocator import worker_env
from framework.cluster import SPARE_CPU, Cluster, local_cluster, ray_cluster
from framework.errors import InputError
from framework.sizing import inflight_bytes
from framework.spec.schema import Spec
from framework.stopping import stop_on_sigterm

# Ray Data reads parquet footers on a pool of actors it makes for every listing, 32 by
# default: each a new process importing Ray and Arrow (~1 CPU-second apiece), for two
# files as for twenty thousand. Each actor drives 128 concurrent reads, so one per 4 CPUs
# keeps up with S3; on a small machine the 32 start-ups delayed the first batch by seconds.
FOOTER_ACTORS = "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"
CPUS_PER_FOOTER_ACTOR = 4
# Ray Data packs parquet row groups into read tasks of 128 MiB each, and fuses each read
# task with the CPU stage after it: 1.5 GB of JPEGs made 12 tasks of ~3,300 images, which
# 12 of an H100 node's 15 free CPUs decoded, 6.5 at a time on average. Read tasks of
# run.block_mb spread the files over more tasks, down to one row group each (2,000
# datagen images: 7 tasks instead of 1). Not beside CPU models: there two read tasks
# share the model's cores, and fewer, longer ones ran faster (ResNet-18 on 2 cores:
# 26.8 rows/s against 22.4).
PARQUET_READ_TASK_BYTES = "RAY_DATA_PARQUET_BIN_PACKING_BYTES"
# Ray kills idle workers beyond this many (default: one per logical CPU), counting actors
# too: Ray Data's own actors, the run log and the models take the whole allowance on a
# small machine, so every task worker idle for a second was killed and a fresh one,
# importing torch again, started for the next task - mid-run, on the model's cores.
WORKER_LIMIT = "RAY_num_workers_soft_limit"
RAY_DATA_ACTORS = 8  # Ray Data's coordinator, stats, usage and location actors, our log
# Ray Data records each run's usage tags through an actor of its own, which a fresh local
# Ray starts (a process, ~1 CPU-second) while the model and the first tasks start up.
RAY_DATA_USAGE_OFF = "RAY_DATA_USAGE_DISABLED"


def start_local_ray(num_cpus: float | None = None, **kwargs: Any) -> None:
    """A local Ray with this machine's cores plus one spare logical CPU (see cluster.SPARE_CPU)."""
    cores = num_cpus if num_cpus is not None else len(os.sched_getaffinity(0))
    kwargs.setdefault("include_dashboard", False)
    kwargs.setdefault("configure_logging", False)
    # The raylet passes its environment to every worker it starts. A job runtime_env would
    # do the same, but Ray does not hand the workers it prestarted to a job that has one.
    saved = dict(os.environ)
    os.environ.update(worker_env())
    os.environ.setdefault(WORKER_LIMIT, str(int(cores) + 1 + RAY_DATA_ACTORS))
    try:
        # address="local": a fresh Ray even when another one runs on this machine.
        ray.init(address="local", num_cpus=cores + 1, resources={SPARE_CPU: 1}, **kwargs)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    os.environ.setdefault(RAY_DATA_USAGE_OFF, "1")  # read by this driver at every run


def init_ray(spec: Spec) -> None:
    """Join ``ray.address`` if the spec names a cluster, else start a local Ray for this run."""
    if ray.is_initialized():
        return
    if spec.ray.address:
        check_reachable(spec.ray.address)
        try:
            with signals_end_the_join(spec.ray.address):
                ray.init(
                    address=spec.ray.address,
                    runtime_env=runtime_env(spec) or None,
                    configure_logging=False,
                )
        except ConnectionError as exc:
            raise InputError(
                f"ray.address: could not join the Ray cluster at {spec.ray.address} ({exc}) - "
                "is it the head's GCS port (6379 unless `ray start --port` said otherwise)? "
                "A cluster started with token authentication also needs RAY_AUTH_MODE=token "
                "here (and RAY_AUTH_TOKEN, or the token file `ray start` wrote)"
            ) from None
    else:
        start_local_ray(spec.ray.num_cpus, object_store_memory=spec.ray.object_store_memory)
    stop_on_sigterm()


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast on a ``host:port`` nobody answers at: Ray retries its GCS for minutes."""
    host, _, port = address.rpartition(":")
    if address == "auto" or not host or not port.isdigit():
        return
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s) as conn:
            reply = _reply_to_http2_preface(conn)
    except OSError as exc:
        raise InputError(
            f"ray.address: nothing answers at {address} ({exc.strerror or exc}) - is the "
            "cluster's head node running? (`ray status` there); leave ray.address out for "
            "a local Ray"
        ) from exc
    if len(reply) >= 4 and reply[3] != HTTP2_SETTINGS and not os.environ.get("RAY_USE_TLS"):
        # Not an HTTP/2 server, whose first frame is SETTINGS (RFC 9113, 3.4): Ray would retry
        # it as its GCS for minutes. Mostly the dashboard's port (8265) given by mistake.
        raise InputError(
            f"ray.address: {address} is not Ray's GCS (it answers {reply[:12]!r}) - give the head's GCS "
            "port (6379 unless `ray start --port` said otherwise), not the dashboard's (8265)"
        )


@contextlib.contextmanager
def signals_end_the_join(address: str) -> Iterator[None]:
    """Let Ctrl-C and SIGTERM stop a join that hangs (a port that accepts but never answers).

    Ray retries such a GCS for minutes, its main thread blocked in C++ for half a minute at
    a time, where no Python signal handler runs. The C-level handler still writes the
    signal's number to the wakeup fd, so a thread reading it ends the process; nothing of
    this run exists yet to clean up.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    previous = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    joined = threading.Event()

    def watch() -> None:
        while (byte := os.read(read_end, 1)) and not joined.is_set():
            if byte[0] in (signal.SIGINT, signal.SIGTERM):
                os.write(
                    2, f"infer-run: stopped while joining the Ray cluster at {address}\n".encode()
                )
                os._exit(128 + byte[0])

    watcher = threading.Thread(target=watch, name="infer-run-join-signals", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        joined.set()
        signal.set_wakeup_fd(previous)
        os.write(write_end, b"\0")  # wakes the watcher, which sees the join is over
        watcher.join()
        os.close(read_end)
        os.close(write_end)


HTTP2_SETTINGS = 0x4  # the frame type byte, after the frame's 3-byte length


def _reply_to_http2_preface(conn: socket.socket, timeout_s: float = 1.0) -> bytes:
    """What a server says to gRPC's opening bytes: Ray's GCS answers with HTTP/2 frames, a
    web server with an HTTP/1 error or page, a silent one nothing (b"")."""
    conn.settimeout(timeout_s)
    try:
        conn.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        return conn.recv(16)
    except OSError:
        return b""


def runtime_env(spec: Spec) -> dict[str, Any]:
    """``ray.runtime_env``, plus with ``ray.ship_code`` the code every stage's class needs."""
    env = dict(spec.ray.runtime_env)
    env["env_vars"] = worker_env(env.get("env_vars"))
    if spec.ray.ship_code:
        packages = {"framework", "plugins"}
        for stage in (spec.reader, *spec.stages, spec.writer):
            packages.add(stage.cls.__module__.split(".")[0])
        modules = [importlib.import_module(name) for name in sorted(packages)]
        env["py_modules"] = [*env.get("py_modules", []), *modules]
    return env


def cluster_for(spec: Spec) -> Cluster:
    """The cluster the spec will run on: joined if it names one, else this machine."""
    if spec.ray.address:
        init_ray(spec)
        return ray_cluster(spec.ray.address)
    return local_cluster(spec.ray.num_cpus)


@contextlib.contextmanager
def read_planning(cluster: Cluster, read_task_mb: float | None) -> Iterator[None]:
    """Sizes Ray Data's parquet footer readers to the cluster, and its parquet read tasks
    to ``read_task_mb`` (None: Ray Data's size), while the reads are planned.

    The listing reads the variables on the driver, when ``read_parquet`` is called; a value
    already in the environment wins.
    """
    wanted = {FOOTER_ACTORS: str(max(1, min(32, int(cluster.cpus // CPUS_PER_FOOTER_ACTOR))))}
    if read_task_mb is not None:
        wanted[PARQUET_READ_TASK_BYTES] = str(max(1, int(read_task_mb * 1024**2)))
    added = [name for name in wanted if name not in os.environ]
    os.environ.update({name: wanted[name] for name in added})
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def own_data_context(spec: Spec, cluster: Cluster) -> dict[str, Any]:
    """The DataContext attributes infer-run sets from its own keys (``run.block_mb``, the
    object store budget): the ones ``run.data_context`` may not set
    (``framework.spec.data_context.MANAGED_DATA_CONTEXT``)."""
    context = ray.data.DataContext.get_current()
    block_bytes = max(1, int(spec.run.block_mb * 1024**2))
    # Ray Data's high-memory detector repeats a 17-line warning every 30 s for a run's
    # whole length, naming a fused operator and a `memory=` argument no spec has; the
    # summary's peak memory per stage (report.summary) says it once, by stage path.
    detectors = copy.deepcopy(context.issue_detectors_config)
    detectors.high_memory_detector_config.detection_time_interval_s = -1
    settings: dict[str, Any] = {
        "per_stage_map_timing": True,
        "target_max_block_size": block_bytes,
        "target_min_block_size": min(context.target_min_block_size or block_bytes, block_bytes),
        "issue_detectors_config": detectors,
    }
    store = ray.cluster_resources().get("object_store_memory")
    budget = inflight_bytes(spec.run, cluster, store)
    if budget is not None:
        options = copy.copy(context.execution_options)
        options.resource_limits = options.resource_limits.copy(object_store_memory=budget)
        settings["execution_options"] = options
    return settings


@contextlib.contextmanager
def data_context(spec: Spec, cluster: Cluster) -> Iterator[None]:
    """Ray Data's settings for the run: ours, then the spec's ``run.data_context``; the
    driver's earlier values come back when the run ends, so the next run in this process
    starts from Ray Data's defaults and its own spec."""
    context = ray.data.DataContext.get_current()
    settings = {**own_data_context(spec, cluster), **spec.run.data_context}
    previous = {key: getattr(context, key) for key in settings}
    for key, value in settings.items():
        setattr(context, key, value)
    try:
        yield
    finally:
        for key, value in previous.items():
            setattr(context, key, value)
