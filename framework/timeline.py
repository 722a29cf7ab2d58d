"""Ray's own timeline of a run's tasks and actor calls, for ``run.timeline``.

Ray holds it only while it runs, and a local Ray is gone once the run ends: so it is
fetched as the run ends, before that Ray stops.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import ray

# Each worker sends Ray its task events about once a second
# (RAY_task_events_report_interval_ms), so the last tasks of a run arrive after it ends.
TIMELINE_SETTLE_S = 1.0
TIMELINE_WAIT_S = 5.0


def task_timeline(since: float, until: float) -> list[dict[str, Any]]:
    """Ray's timeline of every task and actor call (Chrome trace events, for Perfetto or
    chrome://tracing) that overlaps ``since``..``until`` (``time.time()``): the run's, on a
    local Ray; other jobs' too on a shared cluster, where nothing in an event names its job.
    """
    state_log = logging.getLogger("ray._private.state")
    level = state_log.level
    state_log.setLevel(logging.ERROR)  # a notice about Ray's plans for the API, every call
    try:
        events = ray.timeline()
        deadline = time.monotonic() + TIMELINE_WAIT_S
        while time.monotonic() < deadline:  # until a second brings no new event
            time.sleep(TIMELINE_SETTLE_S)
            later = ray.timeline()
            if len(later) == len(events):
                break
            events = later
    finally:
        state_log.setLevel(level)
    start_us, end_us = since * 1e6, until * 1e6 + TIMELINE_WAIT_S * 1e6
    return [e for e in events if e["ts"] + e.get("dur", 0) >= start_us and e["ts"] <= end_us]
