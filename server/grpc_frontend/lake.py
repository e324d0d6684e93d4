"""LakeService: materializations and read-only SQL over the `Lake`, in protobuf form.

The lake speaks typed values (`MaterializationSpec`, `MaterializationStatus`); this module
converts them to and from their protobuf messages, so both frontends validate and behave
alike.
"""

from __future__ import annotations

import asyncio

import pyarrow as pa

from s2s.errors import invalid
from s2s.v1 import lake_pb2 as lpb
from s2s.v1 import lake_pb2_grpc as lake_services
from server.grpc_frontend.caller import principal
from server.grpc_frontend.errors import Context, unary
from server.lake.definition import MaterializationSpec
from server.lake.materializations import MaterializationStatus
from server.lake.query import ROWS_MAX, arrow_ipc_stream
from server.lake.scoped import ScopedLake
from server.lake.service import Lake
from server.streamstore import StreamStore


def spec_from_proto(spec: lpb.MaterializationSpec) -> MaterializationSpec:
    """The declaration; an unset optional field is None."""

    def optional(field: str) -> str | None:
        return getattr(spec, field) if spec.HasField(field) else None

    return MaterializationSpec(
        name=spec.name,
        table=spec.table,
        basin=optional("basin"),
        stream=optional("stream"),
        mode=optional("mode"),
        primary_key=optional("primary_key"),
        select=optional("select"),
        where=optional("where"),
        partition_by=tuple(spec.partition_by),
        create_table=spec.create_table,
        paused=spec.paused,
    )


def status_to_proto(status: MaterializationStatus) -> lpb.MaterializationStatus:
    definition, progress = status.definition, status.progress
    # None leaves a field unset (the constructor's rule): optional fields are present exactly
    # when they have a value.
    return lpb.MaterializationStatus(
        name=definition.name,
        source=lpb.MaterializationSource(basin=definition.basin, stream=definition.stream),
        table=definition.target,
        mode=definition.mode,
        primary_key=definition.primary_key,
        select=definition.select,
        where=definition.where,
        partition_by=definition.partition_by,
        create_table=definition.create_table,
        state=progress.state,
        last_error=progress.last_error,
        applied_seq_num=progress.next_seq_num,
        tail_seq_num=status.tail_seq_num,
        lag_records=status.lag_records,
        lag_seconds=status.lag_seconds,
        rows_applied=progress.rows_applied,
        rows_rejected=progress.rows_rejected,
        last_snapshot_id=progress.last_snapshot_id,
        last_commit_at=progress.last_commit_at,
        records_skipped=progress.records_skipped,
    )


RESULT_BYTES_MAX = 7 * 1024 * 1024
"""Largest encoded result: room for the response's framing under the 8 MiB message cap."""


def encode_result(table: pa.Table, truncated: bool) -> lpb.QueryResponse:
    """The result as one message; rows that would not fit in it are cut off (`truncated`)."""
    payload = arrow_ipc_stream(table)
    while len(payload) > RESULT_BYTES_MAX and table.num_rows > 0:
        # Rows are of similar size, so shrinking in proportion converges in a step or two.
        rows = min(table.num_rows - 1, table.num_rows * RESULT_BYTES_MAX // len(payload))
        table, truncated = table.slice(0, rows), True
        payload = arrow_ipc_stream(table)
    return lpb.QueryResponse(arrow_ipc_stream=payload, truncated=truncated)


class LakeServicer(lake_services.LakeServiceServicer):
    """Each call runs through its caller's `ScopedLake` (server/lake/scoped.py)."""

    def __init__(self, store: StreamStore, lake: Lake) -> None:
        self._store = store
        self._lake = lake

    def _caller(self, context: Context) -> ScopedLake:
        return ScopedLake(self._lake, principal(self._store, context))

    @unary
    async def CreateMaterialization(
        self, request: lpb.CreateMaterializationRequest, context: Context
    ) -> lpb.CreateMaterializationResponse:
        status = await self._caller(context).create_materialization(spec_from_proto(request.spec))
        return lpb.CreateMaterializationResponse(materialization=status_to_proto(status))

    @unary
    async def ListMaterializations(
        self, request: lpb.ListMaterializationsRequest, context: Context
    ) -> lpb.ListMaterializationsResponse:
        statuses = await self._caller(context).list_materializations()
        return lpb.ListMaterializationsResponse(
            materializations=[status_to_proto(s) for s in statuses]
        )

    @unary
    async def GetMaterialization(
        self, request: lpb.GetMaterializationRequest, context: Context
    ) -> lpb.GetMaterializationResponse:
        status = await self._caller(context).materialization_status(request.name)
        return lpb.GetMaterializationResponse(materialization=status_to_proto(status))

    @unary
    async def PauseMaterialization(
        self, request: lpb.PauseMaterializationRequest, context: Context
    ) -> lpb.PauseMaterializationResponse:
        status = await self._caller(context).pause(request.name)
        return lpb.PauseMaterializationResponse(materialization=status_to_proto(status))

    @unary
    async def ResumeMaterialization(
        self, request: lpb.ResumeMaterializationRequest, context: Context
    ) -> lpb.ResumeMaterializationResponse:
        status = await self._caller(context).resume(request.name)
        return lpb.ResumeMaterializationResponse(materialization=status_to_proto(status))

    @unary
    async def DeleteMaterialization(
        self, request: lpb.DeleteMaterializationRequest, context: Context
    ) -> lpb.DeleteMaterializationResponse:
        await self._caller(context).delete(request.name)
        return lpb.DeleteMaterializationResponse()

    @unary
    async def Query(self, request: lpb.QueryRequest, context: Context) -> lpb.QueryResponse:
        rows_max = request.limit if request.HasField("limit") else ROWS_MAX
        if not 1 <= rows_max <= ROWS_MAX:
            raise invalid(f"limit must be between 1 and {ROWS_MAX}")
        table, truncated = await self._caller(context).query(request.sql, rows_max)
        # Encoding up to ROWS_MAX rows (maybe more than once, to fit) stays off the event loop.
        return await asyncio.to_thread(encode_result, table, truncated)
