"""A lake writer for the power-loss tests, run as a child process on the power-loss mount.

`python -m tests.crash.lake_child write LAKE_ROOT`: fills table `main.t` with
`BATCHES` × `ROWS` rows, one transaction per batch, then runs one maintenance pass that merges
their files into one (and deletes the merged ones at once), prints `DONE`, and waits to be
killed. `python -m tests.crash.lake_child count LAKE_ROOT` prints the table's row count and
distinct ids. Both through the server's own code (`open_lake`, `DataFiles`, `maintain`).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from server.lake.connection import LakeSettings, lake_cursor, open_lake
from server.lake.data_files import DataFiles, transaction
from server.lake.maintenance import maintain

BATCHES = 4
ROWS = 20_000
"""Enough rows that DuckLake writes Parquet files rather than inlining them in the catalog."""


def main(action: str, root: str) -> None:
    settings = LakeSettings(root=Path(root))
    conn = open_lake(settings)
    cursor = lake_cursor(conn)
    if action == "count":
        count, distinct = cursor.execute("SELECT count(*), count(DISTINCT id) FROM t").fetchall()[0]
        print(f"COUNT {count} {distinct}", flush=True)
        return
    files = DataFiles(settings.data_dir)
    with transaction(cursor, files):
        cursor.execute("CREATE TABLE t (id BIGINT, note VARCHAR)")
    for batch in range(BATCHES):
        with transaction(cursor, files):
            cursor.execute(
                "INSERT INTO t SELECT range, 'row ' || range FROM range($first, $end)",
                {"first": batch * ROWS, "end": (batch + 1) * ROWS},
            )
    result = maintain(cursor, files, snapshot_retention_s=0, file_grace_s=0)
    assert result.files_merged >= BATCHES, result
    print("DONE", flush=True)
    time.sleep(3600)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
