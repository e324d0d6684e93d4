"""The lake's DuckDB instance is closed and opened again every few commits (reopen.py) to
return the native memory DuckLake keeps per commit, and nobody using the lake notices:
ingest requests waiting for their commit get it, queries run, every row lands once, a paused
materialization stays paused."""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from s2s.allocator import malloc_usage
from s2s.errors import S2Error
from server.lake.connection import LakeSettings
from server.lake.data_files import transaction
from server.lake.query import QueryRunner
from server.lake.sql_rules import FunctionRules
from server.lake.writer import LakeWriter
from tests.lake.conftest import LakeClient
from tests.server_process import ServerProcess

pytestmark = pytest.mark.xdist_group("test_reopen")

REOPEN_COMMITS = 5


@pytest.fixture(scope="module")
def lake_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data_dir = tmp_path_factory.mktemp("lake-reopen") / "data"
    args = ["--lake-linger-ms", "50", "--lake-reopen-commits", str(REOPEN_COMMITS)]
    process = ServerProcess(str(data_dir), extra_args=args).start()
    try:
        yield process
    finally:
        process.stop()


def test_waiting_ingest_and_queries_carry_on_across_reopens(lake: LakeClient, table: str) -> None:
    paused = f"{table}_paused"
    lake.declare(paused)
    assert lake.http.post(f"/v1/lake/materializations/{paused}/pause").status_code == 200
    lake.declare(table)
    reopens_before = lake.metric("s2s_lake_duckdb_reopens_total")

    assert lake.ingest(paused, [{"id": 1}]).status_code == 200  # to wait through the reopens
    lake.ingest_ok(table, [{"id": -1}])  # the table exists from its first commit on
    query_statuses: list[int] = []
    states: list[str] = []
    """The materialization's state as statuses saw it meanwhile: a reopen restarts its runner,
    which must not show as a new start."""
    stop = threading.Event()

    def query_meanwhile() -> None:
        client = LakeClient(str(lake.http.base_url))
        try:
            while not stop.is_set():
                response = client.sql(f"SELECT count(*) FROM {table}")
                query_statuses.append(response.status_code)
                assert response.status_code == 200, response.text
                states.append(client.status(table)["state"])
        finally:
            client.close()

    querier = threading.Thread(target=query_meanwhile)
    querier.start()
    try:
        requests = 40
        for request in range(requests):
            rows = [{"id": request * 10 + i} for i in range(10)]
            lake.ingest_ok(table, rows)  # asserts the wait saw its commit: a snapshot id
    finally:
        stop.set()
        querier.join()

    assert lake.rows(f"SELECT count(*), count(DISTINCT id) FROM {table}") == [[401, 401]]
    reopens = lake.metric("s2s_lake_duckdb_reopens_total") - reopens_before
    assert reopens >= 3, f"{reopens} reopens over 40 commits, one due every {REOPEN_COMMITS}"
    assert query_statuses and set(query_statuses) == {200}, set(query_statuses)
    assert states and set(states) == {"running"}, collections.Counter(states)
    assert lake.status(table)["state"] == "running"
    still_paused = lake.status(paused)
    assert still_paused["state"] == "paused"
    assert (still_paused["rows_applied"], still_paused["lag_records"]) == (0, 1)


def _insert_commits(writer: LakeWriter, count: int) -> None:
    cursor = writer.cursor
    for _ in range(count):
        with transaction(cursor, writer.files):
            cursor.execute("INSERT INTO s.t SELECT range, 'x' FROM range(50)")


def _in_use_bytes() -> int:
    usage = malloc_usage()
    if usage is None:
        pytest.skip("the C library is not glibc: no mallinfo2 to measure with")
    return usage.in_use_bytes


def test_reopening_returns_the_memory_commits_kept(tmp_path: Path) -> None:
    """The memory DuckLake keeps per commit goes with the instance, and every cursor taken on
    the old instance is closed (one left open would keep it, and its memory, alive)."""

    async def scenario() -> None:
        writer = LakeWriter(LakeSettings(root=tmp_path / "lake", memory_limit_mib=100))
        await writer.open()
        try:
            await writer.run(lambda: writer.cursor.execute("CREATE SCHEMA s"))
            await writer.run(lambda: writer.cursor.execute("CREATE TABLE s.t (i INT, p TEXT)"))
            held = writer.new_cursor()  # as a materialization's lane holds one
            await writer.run(_insert_commits, writer, 50)  # past the first commits' one-offs
            before = _in_use_bytes()
            await writer.run(_insert_commits, writer, 600)
            grown = _in_use_bytes() - before
            assert writer.commits_since_open == 650
            await writer.reopen(lambda: None)
            returned = before + grown - _in_use_bytes()
            assert grown > 1_000_000, f"600 commits kept only {grown} bytes: nothing to return"
            assert returned > grown / 2, f"{grown} bytes grew, {returned} returned"
            assert writer.commits_since_open == 0
            with pytest.raises(duckdb.ConnectionException):
                held.execute("SELECT 1")
            count = await writer.run(lambda: writer.cursor.execute("FROM s.t").fetchall())
            assert len(count) == 650 * 50
        finally:
            await writer.close()

    asyncio.run(scenario())


def test_queries_wait_for_a_reopen_and_one_running_puts_it_off(tmp_path: Path) -> None:
    async def scenario() -> None:
        writer = LakeWriter(LakeSettings(root=tmp_path / "lake"))
        await writer.open()
        runner = QueryRunner(writer.connection, FunctionRules.load(writer.cursor))
        try:
            assert await asyncio.to_thread(runner.pause, 1.0)
            held = asyncio.ensure_future(runner.query("SELECT 42 AS answer"))
            await asyncio.sleep(0.3)
            assert not held.done(), "a query ran while the lake was paused"
            await writer.reopen(lambda: None)
            runner.resume(writer.connection)
            table, _ = await asyncio.wait_for(held, 5)
            assert table.to_pylist() == [{"answer": 42}]

            # A query still running: the pause gives up in time and holds nothing.
            slow = asyncio.ensure_future(runner.query("SELECT count(*) FROM range(100000000000)"))
            await asyncio.sleep(0.3)
            started = time.monotonic()
            assert not await asyncio.to_thread(runner.pause, 0.3)
            assert time.monotonic() - started < 2
            table, _ = await asyncio.wait_for(runner.query("SELECT 7 AS seven"), 5)
            assert table.to_pylist() == [{"seven": 7}]
            runner.drain()
            with pytest.raises(S2Error) as info:
                await slow
            assert info.value.code == "server_draining"
        finally:
            runner.close()
            await writer.close()

    asyncio.run(scenario())
