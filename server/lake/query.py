"""SQL over the lake for `/v1/lake/query`, the SDK and `s2s sql`, and the server's own reads.

User SQL only ever reads the lake's tables: `SqlGuard` (sql_guard.py) checks each statement
by its parse tree and bound plan before it runs. Three fences stay around it: it runs inside
a transaction that is always rolled back; DuckDB's file access is limited to the lake's own
directories (connection.py), so `read_csv('/etc/passwd')` fails even if a check were missed;
and a watchdog interrupts it after `TIMEOUT_S`.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import duckdb
import pyarrow as pa

from s2s.errors import S2Error, server_draining
from server.lake.connection import lake_cursor
from server.lake.sql_guard import SqlGuard
from server.lake.sql_rules import FunctionRules
from server.lake.sqltext import first_line

ROWS_MAX = 100_000
"""The most rows one query returns; more are cut off and the result says `truncated`."""
TIMEOUT_S = 60.0
"""A query running longer is interrupted: the pool has two threads, and a runaway query must
not hold one forever."""
_QUERY_THREADS = 2
PAUSE_WAIT_S = 30.0
"""How long a query waits for the lake to reopen (reopen.py, well under a second when
healthy) before it is answered `unavailable`."""


class QueryRunner:
    def __init__(self, conn: duckdb.DuckDBPyConnection, rules: FunctionRules) -> None:
        self._conn = conn
        cursor = lake_cursor(conn)
        try:
            self._guard = SqlGuard.load(cursor, rules)
        finally:
            cursor.close()
        self._executor = ThreadPoolExecutor(_QUERY_THREADS, thread_name_prefix="lake-query")
        self._changed = threading.Condition()
        self._running: set[duckdb.DuckDBPyConnection] = set()
        self._draining = False
        self._paused = False

    def drain(self) -> None:
        """Interrupt the queries running now and refuse new ones: `server_draining`."""
        with self._changed:
            self._draining = True
            for cursor in self._running:
                cursor.interrupt()
            self._changed.notify_all()

    def pause(self, timeout_s: float) -> bool:
        """Hold new queries and wait for the running ones to end, for the lake's instance to be
        reopened (blocking: call it on a thread). False, with nothing held, if some still run
        after `timeout_s`."""
        with self._changed:
            self._paused = True
            if self._changed.wait_for(lambda: not self._running, timeout_s):
                return True
            self._paused = False
            self._changed.notify_all()
            return False

    def resume(self, conn: duckdb.DuckDBPyConnection) -> None:
        """Run the held queries, and every later one, on `conn`: the reopened instance."""
        with self._changed:
            self._conn = conn
            self._paused = False
            self._changed.notify_all()

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    async def query(self, sql: str, rows_max: int = ROWS_MAX) -> tuple[pa.Table, bool]:
        """`run` on one of the query threads."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.run, sql, rows_max)

    async def read(self, sql: str) -> pa.Table:
        """`run_internal` on one of the query threads: a read the server composed (names and
        values quoted), whose results are far smaller than `ROWS_MAX`."""
        loop = asyncio.get_running_loop()
        table, _ = await loop.run_in_executor(self._executor, self.run_internal, sql)
        return table

    def run(
        self, sql: str, rows_max: int = ROWS_MAX, timeout_s: float = TIMEOUT_S
    ) -> tuple[pa.Table, bool]:
        """User SQL, on a query thread: the result (at most `rows_max` rows) and whether it
        was cut. Refused (`read_only_sql`) unless it only reads the lake's tables."""
        return self._run(sql, rows_max, timeout_s, guarded=True)

    def run_internal(self, sql: str, rows_max: int = ROWS_MAX) -> tuple[pa.Table, bool]:
        """A read the server composed itself (its own tables, literals quoted): not checked
        by the guard, which is for user SQL; the other fences stay."""
        return self._run(sql, rows_max, TIMEOUT_S, guarded=False)

    def _run(
        self, sql: str, rows_max: int, timeout_s: float, guarded: bool
    ) -> tuple[pa.Table, bool]:
        cursor = self._enter()
        watchdog = threading.Timer(timeout_s, cursor.interrupt)
        watchdog.start()
        try:
            cursor.execute("BEGIN")
            try:
                if guarded:
                    self._guard.check(cursor, sql)
                reader = cursor.execute(sql).to_arrow_reader(min(rows_max, 10_000) or 1)
                batches: list[pa.RecordBatch] = []
                count = 0
                truncated = False
                for batch in reader:
                    if count + batch.num_rows > rows_max:
                        batches.append(batch.slice(0, rows_max - count))
                        truncated = True
                        break
                    batches.append(batch)
                    count += batch.num_rows
                return pa.Table.from_batches(batches, schema=reader.schema), truncated
            except duckdb.InterruptException:
                if self._draining:
                    raise server_draining() from None
                raise S2Error(
                    "request_timeout", f"the query ran longer than {timeout_s:g} s"
                ) from None
            except duckdb.Error as error:
                raise S2Error("bad_sql", first_line(error)) from None
            finally:
                cursor.execute("ROLLBACK")
        finally:
            watchdog.cancel()
            cursor.close()
            with self._changed:
                self._running.discard(cursor)
                self._changed.notify_all()

    def _enter(self) -> duckdb.DuckDBPyConnection:
        """A cursor for one query, counted as running; waits while the lake reopens."""
        with self._changed:
            if not self._changed.wait_for(lambda: not self._paused or self._draining, PAUSE_WAIT_S):
                raise S2Error("unavailable", "the lake is reopening its database: retry shortly")
            if self._draining:
                raise server_draining()
            cursor = lake_cursor(self._conn)
            self._running.add(cursor)
            return cursor


def arrow_ipc_stream(table: pa.Table) -> bytes:
    """A result as Arrow IPC stream bytes: what both frontends send for Arrow results."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    data: bytes = sink.getvalue().to_pybytes()
    return data
