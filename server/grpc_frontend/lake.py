"""LakeService: materializations and read-only SQL over the `Lake`, in protobuf form.

The lake speaks the JSON shapes of the HTTP API (spec and status dicts); this module only
translates them, so both frontends validate and behave alike.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pyarrow as pa

from s2s.errors import invalid
from s2s.v1 import lake_pb2 as lpb
from s2s.v1 import lake_pb2_grpc as lake_services
from server.grpc_frontend.errors import Context, unary
from server.lake.query import ROWS_MAX, arrow_ipc_stream
from server.lake.service import Lake


def spec_from_proto(spec: lpb.MaterializationSpec) -> dict[str, Any]:
    """The spec dict `Lake.create_materialization` takes; unset optionals are left out."""
    result: dict[str, Any] = {
        "name": spec.name,
        "table": spec.table,
        "partition_by": list(spec.partition_by),
        "create_table": spec.create_table,
        "paused": spec.paused,
    }
    for key in ("basin", "stream", "mode", "primary_key", "select", "where"):
        if spec.HasField(key):
            result[key] = getattr(spec, key)
    return result


def status_to_proto(status: dict[str, Any]) -> lpb.MaterializationStatus:
    message = lpb.MaterializationStatus(
        name=status["name"],
        source=lpb.MaterializationSource(
            basin=status["source"]["basin"], stream=status["source"]["stream"]
        ),
        table=status["table"],
        mode=status["mode"],
        partition_by=status["partition_by"],
        create_table=status["create_table"],
        state=status["state"],
        applied_seq_num=status["applied_seq_num"],
        lag_records=status["lag_records"],
        lag_seconds=status["lag_seconds"],
        rows_applied=status["rows_applied"],
        rows_rejected=status["rows_rejected"],
        records_skipped=status["records_skipped"],
    )
    for key in (
        "primary_key",
        "select",
        "where",
        "last_error",
        "tail_seq_num",
        "last_snapshot_id",
        "last_commit_at",
    ):
        if status[key] is not None:
            setattr(message, key, status[key])
    return message


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
    def __init__(self, lake: Lake) -> None:
        self._lake = lake

    @unary
    async def CreateMaterialization(
        self, request: lpb.CreateMaterializationRequest, context: Context
    ) -> lpb.CreateMaterializationResponse:
        status = await self._lake.create_materialization(spec_from_proto(request.spec))
        return lpb.CreateMaterializationResponse(materialization=status_to_proto(status))

    @unary
    async def ListMaterializations(
        self, request: lpb.ListMaterializationsRequest, context: Context
    ) -> lpb.ListMaterializationsResponse:
        statuses = await self._lake.list_materializations()
        return lpb.ListMaterializationsResponse(
            materializations=[status_to_proto(s) for s in statuses]
        )

    @unary
    async def GetMaterialization(
        self, request: lpb.GetMaterializationRequest, context: Context
    ) -> lpb.GetMaterializationResponse:
        status = await self._lake.materialization_status(request.name)
        return lpb.GetMaterializationResponse(materialization=status_to_proto(status))

    @unary
    async def PauseMaterialization(
        self, request: lpb.PauseMaterializationRequest, context: Context
    ) -> lpb.PauseMaterializationResponse:
        status = await self._lake.pause(request.name)
        return lpb.PauseMaterializationResponse(materialization=status_to_proto(status))

    @unary
    async def ResumeMaterialization(
        self, request: lpb.ResumeMaterializationRequest, context: Context
    ) -> lpb.ResumeMaterializationResponse:
        status = await self._lake.resume(request.name)
        return lpb.ResumeMaterializationResponse(materialization=status_to_proto(status))

    @unary
    async def DeleteMaterialization(
        self, request: lpb.DeleteMaterializationRequest, context: Context
    ) -> lpb.DeleteMaterializationResponse:
        await self._lake.delete(request.name)
        return lpb.DeleteMaterializationResponse()

    @unary
    async def Query(self, request: lpb.QueryRequest, context: Context) -> lpb.QueryResponse:
        rows_max = request.limit if request.HasField("limit") else ROWS_MAX
        if not 1 <= rows_max <= ROWS_MAX:
            raise invalid(f"limit must be between 1 and {ROWS_MAX}")
        table, truncated = await self._lake.query(request.sql, rows_max)
        # Encoding up to ROWS_MAX rows (maybe more than once, to fit) stays off the event loop.
        return await asyncio.to_thread(encode_result, table, truncated)
