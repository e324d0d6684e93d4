"""Keeps the lake lean: every commit of a materialization adds a Parquet file (or inlined rows)
and a snapshot, so at a commit every half second a table gains ~170,000 files a day. This job,
run on the writer thread between batches, merges small adjacent files, rewrites files with
many deleted rows (merge mode), expires old snapshots and deletes the files nothing refers to.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

import duckdb

from server.lake.connection import CATALOG_ALIAS
from server.lake.data_files import DataFiles, transaction
from server.lake.sqltext import quote_literal
from server.lake.writer import LakeWriter

log = logging.getLogger("s2s.lake")

REWRITE_DELETED_SHARE = 0.3
"""A data file is rewritten once this share of its rows is deleted (merge mode updates)."""


@dataclass(frozen=True)
class MaintenanceResult:
    files_merged: int
    snapshots_expired: int
    files_deleted: int


def maintain(
    cursor: duckdb.DuckDBPyConnection,
    files: DataFiles,
    snapshot_retention_s: int,
    file_grace_s: int,
) -> MaintenanceResult:
    """One maintenance pass. Snapshots younger than `snapshot_retention_s` stay readable (time
    travel); files are deleted `file_grace_s` after they were dropped, so a query that
    started before still finds them."""
    lake = quote_literal(CATALOG_ALIAS)
    # Each step that writes files commits them durably first (server/lake/data_files.py).
    with transaction(cursor, files):
        cursor.execute(f"CALL ducklake_flush_inlined_data({lake})")
    # Files with deletions are not merged: rewrite them first.
    with transaction(cursor, files):
        rewritten = cursor.execute(
            f"CALL ducklake_rewrite_data_files({lake}, delete_threshold => {REWRITE_DELETED_SHARE})"
        ).fetchall()
    with transaction(cursor, files):
        merged = cursor.execute(f"CALL ducklake_merge_adjacent_files({lake})").fetchall()
    expired = cursor.execute(
        f"CALL ducklake_expire_snapshots({lake}, "
        f"older_than => now() - INTERVAL {int(snapshot_retention_s)} SECOND)"
    ).fetchall()
    deleted = cursor.execute(
        f"CALL ducklake_cleanup_old_files({lake}, "
        f"older_than => now() - INTERVAL {int(file_grace_s)} SECOND)"
    ).fetchall()
    return MaintenanceResult(
        files_merged=sum(int(row[2]) for row in (*rewritten, *merged)),
        snapshots_expired=len(expired),
        files_deleted=len(deleted),
    )


async def maintain_forever(writer: LakeWriter, leading: Callable[[], bool]) -> None:
    """A pass every `maintenance_interval_s`, on the writer thread (between batch commits),
    until cancelled; skipped while `leading()` is False (another server sharing the catalog
    commits the materializations: its passes are the ones that do not conflict with them)."""
    settings = writer.settings
    while True:
        await asyncio.sleep(settings.maintenance_interval_s)
        if not leading():
            continue
        try:
            # The cursor is taken on the writer thread: the instance may be reopened before
            # this pass's turn comes (reopen.py), closing the cursor the loop sees now.
            result = await writer.run(
                lambda: maintain(
                    writer.cursor,
                    writer.files,
                    settings.snapshot_retention_s,
                    settings.file_grace_s,
                )
            )
            if result != MaintenanceResult(0, 0, 0):
                log.info("lake maintenance: %s", result)
        except Exception:  # the next pass retries; the lake stays correct, only larger
            log.exception("lake maintenance failed")
