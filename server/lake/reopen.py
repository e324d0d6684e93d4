"""Closes the lake's DuckDB instance and opens a new one after every so many commits.

DuckLake keeps about 2.6 KB of native memory per commit that nothing but closing the
instance returns (ADR 0012): at two commits a second per materialization, some 450 MB a day.
A reopen takes 0.1-0.2 s, during which the lake is quiet:

1. New queries wait and running ones finish (if one still runs after `QUERIES_WAIT_S`, the
   reopen is tried again later rather than holding queries up behind it).
2. Every materialization stops, as a restart from its checkpoint would, and no declaration
   changes meanwhile; requests waiting for a commit (`wait=true`) keep waiting.
3. On the writer thread: the appliers' cursors close once a prepare running on them ends,
   then the instance closes with every cursor left on it, and a new one opens.
4. The materializations start again from their checkpoints; the held queries run.
"""

from __future__ import annotations

import asyncio
import logging
import time

from s2s.allocator import malloc_usage
from server.lake.materializations import Materializations
from server.lake.query import QueryRunner
from server.lake.writer import LakeWriter

log = logging.getLogger("s2s.lake")

QUERIES_WAIT_S = 5.0
"""How long a reopen waits for running queries before giving up until the next check."""
_CHECK_S = 1.0


class Reopener:
    def __init__(
        self,
        writer: LakeWriter,
        materializations: Materializations,
        queries: QueryRunner,
        after_commits: int,
    ) -> None:
        assert after_commits > 0, "0 means never: do not run a Reopener"
        self._writer = writer
        self._materializations = materializations
        self._queries = queries
        self._after_commits = after_commits
        self.reopens = 0
        """Reopens done since the server started (`/metrics`)."""

    async def run_forever(self) -> None:
        """Reopen whenever `after_commits` commits were made on the instance, until cancelled."""
        while True:
            await asyncio.sleep(_CHECK_S)
            if self._writer.commits_since_open < self._after_commits:
                continue
            try:
                await self.reopen()
            except Exception:  # retried at the next check; the lake only keeps its memory
                log.exception("the lake's DuckDB was not reopened")

    async def reopen(self) -> bool:
        """One reopen; False if queries kept running past `QUERIES_WAIT_S`."""
        if not await asyncio.to_thread(self._queries.pause, QUERIES_WAIT_S):
            log.info("the lake's DuckDB reopen waits for queries still running; trying later")
            return False
        commits = self._writer.commits_since_open
        before = _native_in_use()
        started = time.monotonic()
        try:
            async with self._materializations.suspended():
                await self._writer.reopen(self._materializations.close_lanes)
        finally:
            if self._writer.is_open:
                self._queries.resume(self._writer.connection)
        self.reopens += 1
        log.info(
            "the lake's DuckDB reopened after %d commits in %.0f ms; native memory in use: "
            "%s before, %s after",
            commits,
            (time.monotonic() - started) * 1000,
            before,
            _native_in_use(),
        )
        return True


def _native_in_use() -> str:
    usage = malloc_usage()
    return "unknown" if usage is None else f"{usage.in_use_bytes / 2**20:.1f} MB"
