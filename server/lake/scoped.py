"""The `Lake` as one caller may use it: each operation checked against the caller's token.

The lake is not part of S2's operation model, so its rules are built from S2's (the table is
in docs/security.md):

- ingest into a table (`/v2/stream`) is an `append` to the table's ingest stream
  (`lake-ingest/schema.table`), and its dead letters a `read` of it: a token can be limited
  to some tables by its stream scope;
- creating a materialization reads its source stream (`read` on it) and changes the lake
  (the account group's write permission); pausing, resuming and deleting one need that write
  permission, listing and inspecting them the account group's read permission;
- SQL reads every table, which hold data of any stream: it needs the account group's read
  permission and a scope covering every basin and stream;
- the Prometheus metrics need `account-metrics`.

A refused call raises `permission_denied` before it changes anything.
"""

from __future__ import annotations

import pyarrow as pa
from prometheus_client.registry import Collector

from server.access.tokens import Principal
from server.lake.dead_letters import DeadLetter
from server.lake.definition import INGEST_BASIN, MaterializationSpec
from server.lake.ingest import IngestRequest
from server.lake.ingest_service import IngestResult
from server.lake.materializations import MaterializationStatus
from server.lake.query import ROWS_MAX
from server.lake.service import Lake


class ScopedLake:
    def __init__(self, lake: Lake, principal: Principal) -> None:
        self._lake = lake
        self._principal = principal

    async def ingest(self, request: IngestRequest) -> IngestResult:
        return await self._lake.ingest(request, authorize=self._may_append)

    def count_refused(self, table: str | None, code: str) -> None:
        self._lake.count_refused(table, code)

    async def dead_letters(self, table: str, limit: int) -> list[DeadLetter]:
        self._principal.require("read", basin=INGEST_BASIN, stream=table)
        return await self._lake.dead_letters(table, limit)

    async def query(self, sql: str, rows_max: int = ROWS_MAX) -> tuple[pa.Table, bool]:
        self._principal.require_group("account", False, "SQL")
        self._principal.require_everything("SQL")
        return await self._lake.query(sql, rows_max)

    async def create_materialization(self, spec: MaterializationSpec) -> MaterializationStatus:
        self._principal.require_group("account", True, "declaring a materialization")
        return await self._lake.create_materialization(spec, authorize=self._may_read)

    async def list_materializations(self) -> list[MaterializationStatus]:
        self._principal.require_group("account", False, "listing materializations")
        return await self._lake.list_materializations()

    async def materialization_status(self, name: str) -> MaterializationStatus:
        self._principal.require_group("account", False, "a materialization's status")
        return await self._lake.materialization_status(name)

    async def pause(self, name: str) -> MaterializationStatus:
        self._principal.require_group("account", True, "pausing a materialization")
        return await self._lake.pause(name)

    async def resume(self, name: str) -> MaterializationStatus:
        self._principal.require_group("account", True, "resuming a materialization")
        return await self._lake.resume(name)

    async def delete(self, name: str) -> None:
        self._principal.require_group("account", True, "deleting a materialization")
        await self._lake.delete(name)

    async def metrics_collector(self) -> Collector:
        self._principal.require("account-metrics")
        return await self._lake.metrics_collector()

    def _may_append(self, basin: str, stream: str) -> None:
        self._principal.require("append", basin=basin, stream=stream)

    def _may_read(self, basin: str, stream: str) -> None:
        self._principal.require("read", basin=basin, stream=stream)
