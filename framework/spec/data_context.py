"""``run.data_context``: Ray Data's own settings for a run, checked against its list."""

from __future__ import annotations

import dataclasses
from typing import Any

from framework.errors import did_you_mean

# DataContext attributes infer-run sets from its own keys (ray_session.own_data_context;
# a test keeps the two equal), each with the key to set instead.
MANAGED_DATA_CONTEXT = {
    "target_max_block_size": "run.block_mb",
    "target_min_block_size": "run.block_mb",
    "execution_options": "run.inflight_mb_per_node and run.inflight_mb_per_cpu",
    "per_stage_map_timing": "nothing: the run report needs it",
    "issue_detectors_config": "nothing: the run summary names each stage's peak memory",
}


def data_context_problems(settings: dict[str, Any]) -> list[str]:
    """One message per ``run.data_context`` key that is no DataContext attribute, or one
    infer-run sets itself."""
    if not settings:
        return []
    from ray.data import DataContext  # only here: validating a spec otherwise needs no Ray

    known = [f.name for f in dataclasses.fields(DataContext)]
    problems = []
    for key in settings:
        where = f"run.data_context.{key}"
        if key in MANAGED_DATA_CONTEXT:
            problems.append(f"{where}: set by infer-run; use {MANAGED_DATA_CONTEXT[key]}")
        elif key not in known:
            problems.append(
                f"{where}: not a setting of Ray Data's DataContext{did_you_mean(key, known)}"
            )
    return problems
