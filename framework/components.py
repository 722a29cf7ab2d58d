"""The base classes a plugin subclasses: Reader, Preprocessor, Model and Writer.

The batch contract: stages receive and return ``dict[str, numpy.ndarray]`` batches
(Ray Data's "numpy" batch format). Every dataset carries an ``id`` column from the
reader to the writer; a stage must return exactly one output row per input row,
keeping ``id`` aligned, and tensor columns leave as one fixed-shape ndarray.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from framework.errors import InputError, one_line, unreadable_input
from framework.storage import filesystem_for, map_files, names_no_place, scheme_of

if TYPE_CHECKING:
    import ray.data

Batch = dict[str, np.ndarray]

ID_COLUMN = "id"

# Id types a JSON line gives back as the same values: a record's id, or a JSON-lines
# writer's. A timestamp went in as text or epoch units and came back another type.
JSON_IDS: tuple[Callable[[pa.DataType], bool], ...] = (
    pa.types.is_string,
    pa.types.is_large_string,
    pa.types.is_integer,
    pa.types.is_floating,
    pa.types.is_boolean,
    pa.types.is_null,
)


def id_type_kept(found: pa.DataType, kinds: tuple[Callable[[pa.DataType], bool], ...]) -> bool:
    """Whether ids of type ``found`` are one of ``kinds``; dictionary-encoded ones (a pandas
    categorical read from parquet) by their values."""
    values = found.value_type if pa.types.is_dictionary(found) else found
    return any(kind(values) for kind in kinds)


class Component:
    """Behaviour shared by every plugin class."""

    @classmethod
    def check(cls, params: Mapping[str, Any]) -> list[str]:
        """Problems with ``params`` found on the driver before Ray starts, one message each.

        Runs after the parameters were bound to ``__init__``; override it to catch
        what a signature cannot (a path that does not exist, weights that cannot be
        fetched) so the run fails in seconds instead of inside a worker.
        """
        return []

    @classmethod
    def worker_params(cls, params: Mapping[str, Any]) -> dict[str, Any]:
        """The parameters the workers build this component from; by default ``params``.

        Runs once on the driver when the run is compiled. Override it to do there what
        every worker would otherwise repeat at start-up - looking up a model's labels,
        say, which would make each fresh worker import a model library mid-run.
        """
        return dict(params)

    @classmethod
    def report_info(cls, params: Mapping[str, Any]) -> dict[str, Any]:
        """Facts about this component recorded in the run report (weights used, say).

        A ``warnings`` list in the result is also printed at the end of the run.
        """
        return {}


def cpu_args(num_cpus: float | None) -> dict[str, Any]:
    """Ray's ``num_cpus`` argument, left out when the plan set none (Ray's default then)."""
    return {} if num_cpus is None else {"num_cpus": num_cpus}


def task_map_args(num_cpus: float | None, max_tasks: int | None) -> dict[str, Any]:
    """``map_batches`` arguments for a reader's or writer's own tasks: the CPUs and the
    number at once that the plan gave its read or write tasks."""
    import ray.data  # only the driver running a plan pays for Ray Data

    return {**cpu_args(num_cpus), "compute": ray.data.TaskPoolStrategy(max_tasks)}


class Reader(Component, ABC):
    """Produces a Ray Dataset whose rows carry a unique ``id`` column.

    ``num_cpus`` and ``max_tasks`` are set by the framework before ``read()`` from the
    plan: pass ``read_args`` to ``ray.data.read_*`` and ``map_args`` to any
    ``map_batches`` the reader adds, so read tasks fit beside the model actors, start no
    more processes than the plan allows, and fuse with the CPU stages after them.
    """

    num_cpus: float | None = None
    max_tasks: int | None = None

    @property
    def read_args(self) -> dict[str, Any]:
        return {"num_cpus": self.num_cpus, "concurrency": self.max_tasks}

    @property
    def map_args(self) -> dict[str, Any]:
        return task_map_args(self.num_cpus, self.max_tasks)

    # Set by the framework from the spec's error policy: a callable taking an input
    # (a file) the reader cannot read at all and the exception; it raises under
    # errors.policy=fail and records the input as failed under skip.
    bad_input: Any = None

    def report_bad_input(self, where: str, error: Exception, detail: str = "") -> None:
        """Call for an input it cannot read at all (a corrupt file), or not to its end
        (``detail`` says how far), then skip the rest of it. Works on the driver and in
        read tasks (the method pickles with the reader)."""
        if self.bad_input is None:  # outside a run (a plugin's own tests): as under fail
            raise unreadable_input(where, error, detail)[1]
        self.bad_input(where, error, detail)

    @abstractmethod
    def read(self) -> ray.data.Dataset: ...

    def type_clash(self, column: str, types: tuple[str, str]) -> str | None:
        """Which inputs hold ``column`` as each of ``types`` (Arrow's names), for the line
        that stops a run whose rows Ray Data could not join: ``"a.jsonl (x: int64) and
        b.jsonl (x: string)"``; None where the reader cannot tell (the default). Asked on
        the driver once such a run has stopped, so it may read the input to find out."""
        return None


class Stage(Component, ABC):
    """A batch transform run by ``map_batches``.

    ``default_resources`` uses the keys of a spec's ``resources:`` node; the spec
    overrides them key by key. ``stateful`` stages are built once per actor
    (a model loading weights); stateless ones run as Ray tasks.
    """

    stateful: ClassVar[bool] = False
    default_resources: ClassVar[Mapping[str, Any]] = {}
    # Column name -> numpy dtype string this stage adds to the batch; used by the
    # plugin test kit to check a stage's output against what it promises.
    output_columns: ClassVar[Mapping[str, str]] = {}

    @abstractmethod
    def __call__(self, batch: Batch) -> Batch: ...


class Preprocessor(Stage):
    """A CPU stage, stateless by default, used before or after the models."""


class Model(Stage):
    """A stateful stage run in an actor pool; load weights in ``__init__``."""

    stateful = True


class Writer(Component, ABC):
    """Consumes the final Dataset into a directory of files at ``path`` (local or ``s3://``).

    The run report is written into that directory as ``_infer_run_report.json``.
    An existing, non-empty output is refused unless ``overwrite`` is true.
    """

    # Set by the framework from the plan. Pass ``write_args`` to Ray Data's write_* and
    # ``map_args`` to any ``map_batches`` the writer adds: the write tasks then ask what the
    # plan gave them, start no more at once than it allows, and fuse with what comes before.
    num_cpus: float | None = None
    max_tasks: int | None = None

    @property
    def ray_remote_args(self) -> dict[str, Any]:
        return cpu_args(self.num_cpus)

    @property
    def write_args(self) -> dict[str, Any]:
        return {"ray_remote_args": self.ray_remote_args, "concurrency": self.max_tasks}

    @property
    def map_args(self) -> dict[str, Any]:
        return task_map_args(self.num_cpus, self.max_tasks)

    def __init__(
        self, path: str, storage: dict[str, Any] | None = None, overwrite: bool = False
    ) -> None:
        self.path = path
        self.storage = storage
        self.overwrite = overwrite

    def prepare(self) -> None:
        """Runs on the driver before the pipeline starts: refuse or clear existing output."""
        if names_no_place(self.path):
            raise InputError(f"writer.path: {self.path!r} is empty - name the output folder")
        try:
            fs, where = filesystem_for(self.path, self.storage)
            info = fs.get_file_info(where)
            if info.type == pafs.FileType.NotFound:
                return
            is_file = info.type == pafs.FileType.File
            if not is_file and not fs.get_file_info(pafs.FileSelector(where)):
                return  # an empty folder
            if not self.overwrite:
                raise InputError(
                    f"writer.path: output {self.path} already exists "
                    "- pass writer.overwrite=true to replace it"
                )
            if is_file:
                fs.delete_file(where)
            # S3 keeps a key "out" and keys under "out/" side by side: with the object gone,
            # the folder may still be there, its files about to mix with the new output.
            if fs.get_file_info(where).type == pafs.FileType.Directory:
                fs.delete_dir_contents(where)
        except (OSError, pa.ArrowInvalid) as exc:  # unreachable store, refused keys, 'a//b'
            raise InputError(f"writer.path: cannot reach {self.path}: {exc}") from None

    # The ending of the output's data files: with ``file_ids``, what ``--resume`` needs.
    output_suffix: ClassVar[str | None] = None

    def file_ids(self, fs: pafs.FileSystem, path: str) -> list[Any] | None:
        """The ids in one output file, or None when the killed run cut it short."""
        raise NotImplementedError(f"{type(self).__name__} sets output_suffix but no file_ids")

    def committed_ids(self) -> list[Any]:
        """Ids in the output files an interrupted run finished; removes half-written files.

        Writers that set ``output_suffix`` and ``file_ids`` support ``--resume``.
        """
        if self.output_suffix is None:
            raise InputError(
                f"--resume/--replay: the {type(self).__name__} writer cannot add to an earlier "
                "run's output"
            )
        fs, paths = self.output_files(self.output_suffix)

        def read(path: str) -> list[Any] | None:
            # A kill cuts a file short, which ``file_ids`` tells by its content; a file it
            # cannot read at all (access denied, an I/O error) may be whole: it stays.
            try:
                return self.file_ids(fs, path)
            except OSError as exc:
                raise InputError(
                    f"--resume/--replay: cannot read {scheme_of(self.path)}{path}: "
                    f"{one_line(exc)} - nothing was removed; run again once it can be read"
                ) from None

        ids: list[Any] = []
        # Every file is read before any goes: a file that cannot be read removes none.
        for path, found in zip(paths, map_files(read, paths), strict=True):
            if found is None:
                fs.delete_file(path)  # cut short when the run was killed: redo its rows
            else:
                ids.extend(found)
        return ids

    def output_files(self, suffix: str) -> tuple[pafs.FileSystem, list[str]]:
        """The output's data files ending in ``suffix`` (not its ``_`` files), for resuming."""
        fs, root = filesystem_for(self.path, self.storage)
        paths = [
            info.path
            for info in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
            if info.type == pafs.FileType.File
            and info.path.endswith(suffix)
            and not info.path.rsplit("/", 1)[-1].startswith("_")
        ]
        return fs, sorted(paths)

    @abstractmethod
    def write(self, dataset: ray.data.Dataset) -> None: ...


# What each kind of plugin must subclass (checked when it registers).
BASES: dict[str, type] = {
    "reader": Reader,
    "preprocessor": Preprocessor,
    "model": Model,
    "writer": Writer,
}
