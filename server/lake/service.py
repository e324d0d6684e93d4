"""The lake as the frontends see it, and the one object they hold: declare and control
materializations, ingest rows for a table (`/v2/stream`), read dead letters, run read-only
SQL, and read the metrics. It speaks typed values (`MaterializationSpec`,
`MaterializationStatus`, `IngestResult`, `DeadLetter`); each frontend converts its own forms.

This class only opens, wires and closes the parts, each a module with one job:
materializations.py (the runners and their lifecycle), ingest_service.py, dead_letters.py,
query.py (SQL), metrics.py and maintenance.py.
"""

from __future__ import annotations

import asyncio
import contextlib

import pyarrow as pa
from prometheus_client.registry import Collector

from s2s.errors import S2Error
from server.lake.connection import LakeSettings
from server.lake.dead_letters import DeadLetter, DeadLetters
from server.lake.definition import MaterializationSpec, StreamCheck
from server.lake.ingest import IngestRequest
from server.lake.ingest_service import Ingest, IngestResult
from server.lake.maintenance import maintain_forever
from server.lake.materializations import Materializations, MaterializationStatus
from server.lake.metrics import IngestMetrics
from server.lake.query import ROWS_MAX, QueryRunner
from server.lake.reopen import Reopener
from server.lake.server_id import load_server_id
from server.lake.sql_rules import FunctionRules
from server.lake.writer import LakeWriter
from server.streamstore import StreamStore


class Lake:
    def __init__(
        self,
        writer: LakeWriter,
        queries: QueryRunner,
        materializations: Materializations,
        ingest: Ingest,
        dead_letters: DeadLetters,
        metrics: IngestMetrics,
        reopener: Reopener | None,
    ) -> None:
        self._writer = writer
        self._queries = queries
        self._materializations = materializations
        self._ingest = ingest
        self._dead_letters = dead_letters
        self._metrics = metrics
        self._reopener = reopener
        self._background: list[asyncio.Task[None]] = []

    @classmethod
    async def open(cls, store: StreamStore, settings: LakeSettings) -> Lake:
        writer = LakeWriter(settings)
        await writer.open()
        rules = await writer.run(FunctionRules.load, writer.cursor)
        queries = await writer.run(QueryRunner, writer.connection, rules)
        server_id = load_server_id(settings.root)
        # Several servers share the materializations only if they share their sources too.
        shared = store.kv.shared and settings.catalog is not None
        materializations = await Materializations.load(store, writer, rules, server_id, shared)
        metrics = IngestMetrics()
        ingest = Ingest(store, materializations, queries, metrics)
        reopener = None
        if settings.reopen_after_commits > 0:
            reopener = Reopener(writer, materializations, queries, settings.reopen_after_commits)
        lake = cls(
            writer, queries, materializations, ingest, DeadLetters(queries), metrics, reopener
        )
        if shared:
            lake._background.append(
                asyncio.create_task(materializations.lead_forever(), name="lake-lead")
            )
        if settings.maintenance_interval_s > 0:
            # Only where the commits are made: another server's merges would conflict with them.
            maintenance = maintain_forever(writer, lambda: materializations.leading)
            lake._background.append(asyncio.create_task(maintenance, name="lake-maint"))
        if reopener is not None:
            lake._background.append(asyncio.create_task(reopener.run_forever(), name="lake-reopen"))
        return lake

    def drain(self) -> None:
        """Shutdown has begun: ingest stops waiting for commits (its rows are durable in their
        streams and are applied after the restart) and running queries are interrupted
        (`server_draining`); both could outlast the grace calls get, and a call cut off then
        answered 500."""
        self._ingest.drain()
        self._materializations.release_waiters()
        self._queries.drain()

    async def close(self) -> None:
        for task in self._background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._materializations.close()
        self._queries.close()
        await self._writer.close()

    # --- materializations ----------------------------------------------------------------

    @property
    def leading(self) -> bool:
        """Whether this server runs the materializations: always, unless it shares its
        stream store and the lake's catalog with other servers and another one leads
        (materializations.py)."""
        return self._materializations.leading

    async def create_materialization(
        self, spec: MaterializationSpec, authorize: StreamCheck | None = None
    ) -> MaterializationStatus:
        return await self._materializations.create(spec, authorize)

    async def list_materializations(self) -> list[MaterializationStatus]:
        return await self._materializations.statuses()

    async def materialization_status(self, name: str) -> MaterializationStatus:
        return await self._materializations.status(name)

    async def pause(self, name: str) -> MaterializationStatus:
        return await self._materializations.pause(name)

    async def resume(self, name: str) -> MaterializationStatus:
        return await self._materializations.resume(name)

    async def delete(self, name: str) -> None:
        await self._materializations.delete(name)

    # --- ingest --------------------------------------------------------------------------

    async def ingest(
        self, request: IngestRequest, authorize: StreamCheck | None = None
    ) -> IngestResult:
        return await self._ingest.ingest(request, authorize)

    def count_refused(self, table: str | None, code: str) -> None:
        """An ingest request was refused as a whole (`code`), before or in `ingest`."""
        self._metrics.count_refused(table, code)

    async def dead_letters(self, table: str, limit: int) -> list[DeadLetter]:
        return await self._dead_letters.recent(table, limit)

    # --- SQL and metrics -----------------------------------------------------------------

    async def query(self, sql: str, rows_max: int = ROWS_MAX) -> tuple[pa.Table, bool]:
        """User SQL: refused unless it only reads the lake's tables (sql_guard.py)."""
        return await self._queries.query(sql, rows_max)

    async def metrics_collector(self) -> Collector:
        """Ingest counters per table, lag and progress per materialization, DuckDB's memory
        (Prometheus)."""
        statuses = await self._materializations.statuses()
        reopens = 0 if self._reopener is None else self._reopener.reopens
        return self._metrics.collector(statuses, await self._duckdb_memory(), reopens)

    async def _duckdb_memory(self) -> dict[str, int]:
        """Bytes per tag; none while draining, when the query threads take no new work (the
        scrape still answers)."""
        try:
            table = await self._queries.read("SELECT tag, memory_usage_bytes FROM duckdb_memory()")
        except S2Error:
            return {}
        return dict(zip(table.column("tag").to_pylist(), table.column(1).to_pylist(), strict=True))
