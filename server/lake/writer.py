"""The lake's one writer thread: every DuckLake write (batches, definitions) runs on it.

One writer means commits never conflict with each other in this process, and DuckDB work,
which can take hundreds of milliseconds per batch, never runs on the event loop. Reads
(`/v1/lake/query`) use their own cursors on a separate pool.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

import duckdb

from server.lake.connection import LakeSettings, lake_cursor, open_lake

P = ParamSpec("P")
T = TypeVar("T")


class LakeWriter:
    def __init__(self, settings: LakeSettings) -> None:
        self.settings = settings
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lake-writer")
        self._conn: duckdb.DuckDBPyConnection | None = None
        self._cursor: duckdb.DuckDBPyConnection | None = None

    async def open(self) -> None:
        await self.run(self._open)

    def _open(self) -> None:
        self._conn = open_lake(self.settings)
        self._cursor = lake_cursor(self._conn)

    @property
    def connection(self) -> duckdb.DuckDBPyConnection:
        assert self._conn is not None, "open() first"
        return self._conn

    @property
    def cursor(self) -> duckdb.DuckDBPyConnection:
        """The writer's cursor: use only from functions passed to `run`."""
        assert self._cursor is not None, "open() first"
        return self._cursor

    async def run(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `function` on the writer thread. Cancelling the caller does not stop it."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, functools.partial(function, *args, **kwargs)
        )

    async def close(self) -> None:
        """Wait for the write in progress, then close the connection."""
        if self._conn is not None:
            await self.run(self._close)
        self._executor.shutdown(wait=True)

    def _close(self) -> None:
        assert self._conn is not None
        if self._cursor is not None:
            self._cursor.close()
        self._conn.close()
        self._conn = None
        self._cursor = None
