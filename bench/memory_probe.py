"""`s2s serve` in this process, with a thread that reports what Python memory grows.

    .venv/bin/python bench/soak.py --minutes 5 \
        --server-command ".venv/bin/python bench/memory_probe.py"

Every `MEMORY_PROBE_EVERY_S` seconds (default 30) it appends to `MEMORY_PROBE_OUT` (default
`memory-probe.log` in the working directory) the objects the garbage collector tracks whose
count grew since the last report, by type, and with `MEMORY_PROBE_TRACE=1` the allocation
sites that grew most (tracemalloc snapshots diffed, 10 frames; this slows the server several
times over). What native libraries hold is on `/metrics` instead: glibc's bytes in use and
DuckDB's memory by tag, which bench/soak.py prints.
"""

from __future__ import annotations

import collections
import gc
import os
import sys
import threading
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from server.cli import main

EVERY_S = float(os.environ.get("MEMORY_PROBE_EVERY_S", "30"))
OUT = Path(os.environ.get("MEMORY_PROBE_OUT", "memory-probe.log"))
TRACE = os.environ.get("MEMORY_PROBE_TRACE") == "1"
TOP = 8


def objects_by_type() -> collections.Counter[str]:
    return collections.Counter(type(o).__name__ for o in gc.get_objects())


def report_forever() -> None:
    counts = objects_by_type()
    snapshot = tracemalloc.take_snapshot() if TRACE else None
    while True:
        time.sleep(EVERY_S)
        lines = []
        now = objects_by_type()
        grown = (now - counts).most_common(TOP)
        lines.append(
            f"{time.strftime('%H:%M:%S')} objects {sum(now.values())}, grown: "
            + (" ".join(f"{name}+{count}" for name, count in grown) or "none")
        )
        counts = now
        if snapshot is not None:
            latest = tracemalloc.take_snapshot()
            for stat in latest.compare_to(snapshot, "traceback")[:TOP]:
                frames = " <- ".join(
                    f"{Path(frame.filename).name}:{frame.lineno}" for frame in stat.traceback
                )
                lines.append(f"  {stat.size_diff / 1024:+.0f} KiB {stat.count_diff:+d}: {frames}")
            snapshot = latest
        with OUT.open("a") as out:
            out.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    if TRACE:
        tracemalloc.start(10)
    threading.Thread(target=report_forever, name="memory-probe", daemon=True).start()
    sys.exit(main(sys.argv[1:]))
