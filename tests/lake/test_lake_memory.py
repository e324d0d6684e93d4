"""The lake's memory stays bounded: no cursor keeps a DuckDB transaction open, and DuckDB's
memory limit is the server's setting.

A result left open on an idle cursor (a `fetchone()`) kept its transaction open, and DuckDB
then kept the undo data of every later commit: bench/soak.py saw the server grow by ~45 MB
a minute, all of it in DuckDB's `TRANSACTION` memory, which `/metrics` shows per tag.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from server.lake.connection import LakeSettings, fetch_one, open_lake
from tests.lake.conftest import LakeClient

pytestmark = pytest.mark.xdist_group("test_lake_memory")

COMMITS = 20
TRANSACTION_GROWTH_BYTES_MAX = 2 * 1024 * 1024
"""Undo data is freed once no transaction needs it. With a transaction pinned, each of these
commits kept about 260 KiB (over 5 MB in all); without, the tag does not grow."""


def _transaction_bytes(lake: LakeClient) -> float:
    return lake.metric("s2s_lake_duckdb_memory_bytes", tag="TRANSACTION")


def test_commits_leave_no_undo_data_behind(lake: LakeClient, table: str) -> None:
    # A materialization that commits once and then sits idle, as a quiet stream's does.
    idle = f"{table}_idle"
    lake.declare(idle)
    lake.ingest_ok(idle, [{"id": 0}])
    lake.declare(table)
    lake.ingest_ok(table, [{"id": 0}])
    before = _transaction_bytes(lake)
    for commit in range(COMMITS):
        rows = [{"id": commit * 50 + i, "pad": "x" * 100} for i in range(50)]
        lake.ingest_ok(table, rows)
    growth = _transaction_bytes(lake) - before
    assert lake.rows(f"SELECT count(*) FROM {table}") == [[COMMITS * 50 + 1]]
    assert growth < TRANSACTION_GROWTH_BYTES_MAX, f"TRANSACTION grew {growth / 2**20:.1f} MB"


def test_metrics_show_duckdb_and_allocator_memory(lake: LakeClient) -> None:
    assert lake.metric("s2s_lake_duckdb_memory_bytes", tag="BASE_TABLE") > 0
    text = lake.http.get("/metrics").text
    for gauge in ("s2s_python_allocated_blocks", "s2s_malloc_in_use_bytes"):
        match = re.search(rf"^{gauge} (\S+)$", text, re.MULTILINE)
        assert match is not None and float(match.group(1)) > 0, gauge


def test_duckdb_memory_limit_is_the_setting(tmp_path: Path) -> None:
    connection = open_lake(LakeSettings(root=tmp_path, memory_limit_mib=100))
    try:
        assert fetch_one(connection, "SELECT current_setting('memory_limit')") == ("100.0 MiB",)
    finally:
        connection.close()
