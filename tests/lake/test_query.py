"""SQL in-process: a runaway query is interrupted and the runner stays usable; the file
fence holds under the guard."""

from __future__ import annotations

from pathlib import Path

import pytest

from s2s.errors import S2Error
from server.lake.connection import LakeSettings, lake_cursor, open_lake
from server.lake.query import QueryRunner
from server.lake.sql_rules import FunctionRules


def test_a_query_over_its_time_limit_is_interrupted(tmp_path: Path) -> None:
    conn = open_lake(LakeSettings(root=tmp_path / "lake"))
    runner = QueryRunner(conn, FunctionRules.load(lake_cursor(conn)))
    try:
        with pytest.raises(S2Error) as info:
            runner.run("SELECT count(*) FROM range(100000000000)", timeout_s=0.5)
        assert info.value.code == "request_timeout" and "0.5 s" in info.value.message
        table, truncated = runner.run("SELECT 42 AS answer")
        assert table.to_pylist() == [{"answer": 42}] and not truncated
    finally:
        runner.close()
        conn.close()


def test_files_outside_the_lake_stay_unreadable_without_the_guard(tmp_path: Path) -> None:
    """The guard refuses file functions in user SQL; DuckDB's own fence (external access off
    outside the lake's directories) stays, for any read the guard does not check."""
    conn = open_lake(LakeSettings(root=tmp_path / "lake"))
    runner = QueryRunner(conn, FunctionRules.load(lake_cursor(conn)))
    try:
        with pytest.raises(S2Error) as info:
            runner.run_internal("SELECT * FROM read_csv('/etc/passwd')")
        assert info.value.code == "bad_sql" and "Permission" in info.value.message
        with pytest.raises(S2Error) as guarded:
            runner.run("SELECT * FROM read_csv('/etc/passwd')")
        assert guarded.value.code == "read_only_sql"
    finally:
        runner.close()
        conn.close()
