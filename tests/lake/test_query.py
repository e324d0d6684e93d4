"""Read-only SQL in-process: a runaway query is interrupted and the runner stays usable."""

from __future__ import annotations

from pathlib import Path

import pytest

from s2s.errors import S2Error
from server.lake.connection import LakeSettings, open_lake
from server.lake.query import QueryRunner


def test_a_query_over_its_time_limit_is_interrupted(tmp_path: Path) -> None:
    conn = open_lake(LakeSettings(root=tmp_path / "lake"))
    runner = QueryRunner(conn)
    try:
        with pytest.raises(S2Error) as info:
            runner.run("SELECT count(*) FROM range(100000000000)", timeout_s=0.5)
        assert info.value.code == "request_timeout" and "0.5 s" in info.value.message
        table, truncated = runner.run("SELECT 42 AS answer")
        assert table.to_pylist() == [{"answer": 42}] and not truncated
    finally:
        runner.close()
        conn.close()
