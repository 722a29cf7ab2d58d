"""Blocks of at most so many rows, cut by the tasks that make them (``plan.BATCHES_PER_BLOCK``)."""

from __future__ import annotations

from typing import Any

import ray.data

# Ray Data's node for the cut (tested with Ray 2.60; pyproject keeps Ray below 2.64). A Ray
# without it still cuts, in a pass of its own.
try:
    from ray.data._internal.logical.operators.map_operator import StreamingRepartition
except ImportError:  # pragma: no cover - depends on the installed Ray
    StreamingRepartition = None  # type: ignore[assignment,misc]


def cut_blocks(
    dataset: ray.data.Dataset, rows: int, ray_args: dict[str, Any], max_tasks: int | None
) -> ray.data.Dataset:
    """``dataset`` in blocks of at most ``rows``, cut by the tasks that made its last blocks,
    which asked for ``ray_args`` with at most ``max_tasks`` at once.

    Ray Data fuses the cut into those tasks only when it asks for the same resources and
    pool (unfused, it was a pass of its own: 9 more tasks for 1,000 photos beside a CPU
    model); its public call takes neither, so they are set on its node, as Ray sets them.
    """
    cut = dataset.repartition(target_num_rows_per_block=rows)
    node = cut._logical_plan.dag
    if StreamingRepartition is not None and isinstance(node, StreamingRepartition):
        object.__setattr__(node, "ray_remote_args", dict(ray_args))  # a frozen dataclass
        object.__setattr__(node, "compute", ray.data.TaskPoolStrategy(size=max_tasks))
    return cut
