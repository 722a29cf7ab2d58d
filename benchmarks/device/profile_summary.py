"""Prints where each profiled stage worker's time went: python profile_summary.py DIR [N].

DIR holds the ``.prof`` files that ``INFER_PROFILE_STAGES=DIR`` made (one per stage and
worker process); for each, the N functions with the most cumulative time, then the N with
the most time of their own.
"""

from __future__ import annotations

import io
import pstats
import sys
from pathlib import Path


def summary(path: Path, top: int) -> str:
    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    stats.strip_dirs()
    print(f"==== {path.name}: {stats.total_tt:.2f} s profiled", file=out)
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)
    return out.getvalue()


def main(argv: list[str]) -> None:
    folder = Path(argv[0])
    top = int(argv[1]) if len(argv) > 1 else 25
    files = sorted(folder.glob("*.prof"))
    if not files:
        sys.exit(f"no .prof files in {folder}")
    for path in files:
        print(summary(path, top))


if __name__ == "__main__":
    main(sys.argv[1:])
