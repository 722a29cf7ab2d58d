"""infer-run's public API: everything a plugin may import.

Plugins (built-in ones in ``plugins/`` included) import from ``framework`` only, and
from ``framework.torch_runtime`` (device, CPU threads and precision for torch models),
which is imported on its own so that ``import framework`` never imports torch, and
``framework.file_filter`` (the extension filter and paths for Ray Data file reads);
``tests/test_plugins.py`` holds ``plugins/`` to this.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from framework.components import (
    ID_COLUMN,
    JSON_IDS,
    Batch,
    Component,
    Model,
    Preprocessor,
    Reader,
    Stage,
    Writer,
    id_type_kept,
)
from framework.dead_letter import ERROR_COLUMN, jsonl_ids
from framework.errors import (
    InferError,
    InputError,
    PluginError,
    RunError,
    SpecError,
    did_you_mean,
)
from framework.hookspecs import hookimpl
from framework.input_paths import distinct_paths, distinct_paths_and_names
from framework.listing import (
    dangling_links,
    loop_error,
    parquet_files,
    parquet_schema,
    unsuffixed_parquet,
)
from framework.plugins import component_class
from framework.storage import (
    expand_globs,
    file_sha256,
    filesystem_for,
    inner_path,
    is_remote,
    map_files,
    missing_bucket_note,
    scheme_of,
)

try:
    __version__ = version("infer-run")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0.0.0"

__all__ = [
    "ERROR_COLUMN",
    "ID_COLUMN",
    "JSON_IDS",
    "Batch",
    "Component",
    "InferError",
    "InputError",
    "Model",
    "PluginError",
    "Preprocessor",
    "Reader",
    "RunError",
    "SpecError",
    "Stage",
    "Writer",
    "__version__",
    "component_class",
    "dangling_links",
    "did_you_mean",
    "distinct_paths",
    "distinct_paths_and_names",
    "expand_globs",
    "file_sha256",
    "filesystem_for",
    "hookimpl",
    "id_type_kept",
    "inner_path",
    "is_remote",
    "jsonl_ids",
    "loop_error",
    "map_files",
    "missing_bucket_note",
    "parquet_files",
    "parquet_schema",
    "scheme_of",
    "unsuffixed_parquet",
]
