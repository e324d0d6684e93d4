"""The lake's one writer thread: every DuckLake write (batches, definitions) runs on it.

One writer means commits never conflict with each other in this process, and DuckDB work,
which can take hundreds of milliseconds per batch, never runs on the event loop. Reads
(`/v1/lake/query`) use their own cursors on a separate pool.

A second thread, the preparer, runs the steps of a batch that write nothing to the lake
(`Applier.prepare`: temp tables on the runner's own cursors) while the writer commits the
previous one. A batch's DuckDB work mostly runs on one core; this uses the other.

The DuckDB instance can be closed and opened again (`reopen`, for the memory DuckLake keeps
per commit: reopen.py); every cursor of the old one is closed with it, so its users take new
ones (`new_cursor`) after.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

import duckdb

from server.lake.connection import LakeSettings, lake_cursor, open_lake
from server.lake.data_files import DataFiles

log = logging.getLogger("s2s.lake")

_REOPEN_RETRY_S_MIN = 0.5
_REOPEN_RETRY_S_MAX = 30.0

P = ParamSpec("P")
T = TypeVar("T")


class LakeWriter:
    def __init__(self, settings: LakeSettings) -> None:
        self.settings = settings
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lake-writer")
        self._preparer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lake-prepare")
        self._conn: duckdb.DuckDBPyConnection | None = None
        self._cursor: duckdb.DuckDBPyConnection | None = None
        self._files: DataFiles | None = None
        self._commits_at_open = 0

    async def open(self) -> None:
        await self.run(self._open)

    def _open(self) -> None:
        conn = open_lake(self.settings)
        self._cursor = lake_cursor(conn)
        self._conn = conn
        if self._files is None:  # the same files across reopens: no second scan of them
            self._files = DataFiles(self.settings.data_dir)
        self._commits_at_open = self._files.transactions_committed

    @property
    def is_open(self) -> bool:
        return self._conn is not None

    @property
    def commits_since_open(self) -> int:
        """Lake transactions committed on the current DuckDB instance."""
        return (
            0 if self._files is None else self._files.transactions_committed - self._commits_at_open
        )

    @property
    def connection(self) -> duckdb.DuckDBPyConnection:
        assert self._conn is not None, "open() first"
        return self._conn

    @property
    def cursor(self) -> duckdb.DuckDBPyConnection:
        """The writer's cursor: use only from functions passed to `run`."""
        assert self._cursor is not None, "open() first"
        return self._cursor

    @property
    def files(self) -> DataFiles:
        """The data files every transaction of this writer syncs before its commit."""
        assert self._files is not None, "open() first"
        return self._files

    def new_cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor of the caller's own (its temp tables are its own), used by one thread at a
        time."""
        return lake_cursor(self.connection)

    async def run(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `function` on the writer thread. Cancelling the caller does not stop it."""
        return await _run_on(self._executor, functools.partial(function, *args, **kwargs))

    async def prepare(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `function`, which must not write to the lake, on the preparer thread."""
        return await _run_on(self._preparer, functools.partial(function, *args, **kwargs))

    async def reopen(self, before_close: Callable[[], None]) -> None:
        """Close the DuckDB instance, and with it every cursor on it, then open a new one.

        `before_close` runs first, on the writer thread: it waits for the cursors' users to
        finish. Opening is retried until it succeeds (a full disk may refuse it for a while);
        cancelled meanwhile, the writer is left closed.
        """
        await self.run(self._close_instance, before_close)
        retry_s = _REOPEN_RETRY_S_MIN
        while True:
            try:
                await self.run(self._open)
                return
            except (duckdb.Error, OSError) as error:
                log.error(
                    "the lake's DuckDB did not open again, retrying in %g s: %s", retry_s, error
                )
                await asyncio.sleep(retry_s)
                retry_s = min(retry_s * 2, _REOPEN_RETRY_S_MAX)

    def _close_instance(self, before_close: Callable[[], None]) -> None:
        before_close()
        self._close()

    async def close(self) -> None:
        """Wait for the write in progress, then close the connection."""
        # Stopped runners may have left a prepare running: let it end off the event loop.
        await self.prepare(lambda: None)
        self._preparer.shutdown(wait=True)
        if self._conn is not None:
            await self.run(self._close)
        self._executor.shutdown(wait=True)

    def _close(self) -> None:
        """Closing the connection closes its cursors too (DuckDB's Python API), and the instance
        goes with the last of them."""
        assert self._conn is not None
        conn, self._conn, self._cursor = self._conn, None, None
        conn.close()


async def _run_on(executor: ThreadPoolExecutor, call: Callable[[], T]) -> T:
    return await asyncio.get_running_loop().run_in_executor(executor, call)
