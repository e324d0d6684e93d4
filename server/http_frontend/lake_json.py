"""The lake's values in the JSON shapes of the HTTP API: a materialization's declaration in,
its status, an ingest answer, dead letters and SQL results out.

Only JSON types are checked here; what the values mean (names, modes, SQL) is checked where
every frontend's declarations go, `definition.build_materialization`.

SQL results: timestamps, dates and times are ISO-8601 strings; decimals are strings (a JSON
number would lose digits), as are UUIDs; binary values are base64 strings (bytes need not be
UTF-8); non-finite floats are the strings "NaN", "Infinity" and "-Infinity" (JSON has no
literal for them); intervals are `[months, days, nanoseconds]`; maps are lists of
`[key, value]` pairs; column types are Arrow type names.
"""

from __future__ import annotations

import base64
import datetime
import json
import math
import uuid
from typing import Any

import pyarrow as pa

from s2s.errors import S2Error, invalid
from server.lake.dead_letters import DeadLetter
from server.lake.definition import NAME_RULE, MaterializationSpec, invalid_mode
from server.lake.ingest_service import IngestResult
from server.lake.materializations import MaterializationStatus

# --- declarations ------------------------------------------------------------------------


def spec_from_json(body: Any) -> MaterializationSpec:
    """`POST /v1/lake/materializations`'s body. A falsy basin, stream or mode is unset."""
    if not isinstance(body, dict):
        raise invalid("body must be a JSON object: the materialization's declaration")
    name = body.get("name")
    if not isinstance(name, str):
        raise invalid(NAME_RULE)
    table = body.get("table")
    if not isinstance(table, str):
        raise invalid("table is required: 'schema.table'")
    basin = body.get("basin") or None
    stream = body.get("stream") or None
    if not isinstance(basin, str | None) or not isinstance(stream, str | None):
        raise invalid("basin and stream must be strings")
    mode = body.get("mode") or None
    if not isinstance(mode, str | None):
        raise invalid_mode(mode)
    primary_key = _primary_key(body.get("primary_key"))
    partition_by = _partition_by(body.get("partition_by"))
    create_table, paused = body.get("create_table", False), body.get("paused", False)
    for flag, value in (("create_table", create_table), ("paused", paused)):
        if not isinstance(value, bool):
            raise invalid(f"{flag} must be true or false")
    return MaterializationSpec(
        name=name,
        table=table,
        basin=basin,
        stream=stream,
        mode=mode,
        primary_key=primary_key,
        select=_sql_fragment(body.get("select"), "select"),
        where=_sql_fragment(body.get("where"), "where"),
        partition_by=partition_by,
        create_table=create_table,
        paused=paused,
    )


def _primary_key(value: Any) -> str | None:
    """A column name, or a list of exactly one."""
    if isinstance(value, list):
        if len(value) != 1:
            raise invalid("primary_key must name exactly one column")
        value = value[0]
    # Anything else names no column: merge mode refuses it as missing, the others ignore it
    # as they ignore any key.
    return value if isinstance(value, str) else None


def _partition_by(value: Any) -> tuple[str, ...]:
    """A list of column names or transforms, or one string of them separated by commas."""
    parts = value or []
    if isinstance(parts, str):
        parts = [part.strip() for part in parts.split(",") if part.strip()]
    if not isinstance(parts, list) or not all(isinstance(part, str) for part in parts):
        raise invalid("partition_by must be a list of column names or transforms like year(ts)")
    return tuple(parts)


def _sql_fragment(value: Any, what: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise invalid(f"{what} must be a string of DuckDB SQL")
    return value


# --- statuses, ingest answers, dead letters ----------------------------------------------


def status_json(status: MaterializationStatus) -> dict[str, Any]:
    definition, progress = status.definition, status.progress
    return {
        "name": definition.name,
        "source": {"basin": definition.basin, "stream": definition.stream},
        "table": definition.target,
        "mode": definition.mode,
        "primary_key": definition.primary_key,
        "select": definition.select,
        "where": definition.where,
        "partition_by": definition.partition_by,
        "create_table": definition.create_table,
        "state": progress.state,
        "last_error": progress.last_error,
        "applied_seq_num": progress.next_seq_num,
        "tail_seq_num": status.tail_seq_num,
        "lag_records": status.lag_records,
        "lag_seconds": status.lag_seconds,
        "rows_applied": progress.rows_applied,
        "rows_rejected": progress.rows_rejected,
        "last_snapshot_id": progress.last_snapshot_id,
        "last_commit_at": progress.last_commit_at,
        "records_skipped": progress.records_skipped,
    }


def ingest_json(result: IngestResult) -> dict[str, Any]:
    return _ingest_answer(
        success=result.success,
        stream_id=result.stream,
        table=result.table,
        accepted=result.accepted,
        successful_rows=result.successful_rows,
        rejected=[
            {"index": row.index, "code": row.code, "message": row.message}
            for row in result.rejected
        ],
        snapshot_id=result.snapshot_id,
        warnings=list(result.warnings),
        errors=[],
    )


def ingest_refusal_json(table: str | None, error: S2Error) -> dict[str, Any]:
    """A request refused as a whole, in the shape of an answer that accepted nothing."""
    return _ingest_answer(
        success=False,
        stream_id=None,
        table=table,
        accepted=0,
        successful_rows=0,
        rejected=[],
        snapshot_id=None,
        warnings=[],
        errors=[{"code": error.code, "message": error.message}],
    )


def _ingest_answer(
    *,
    success: bool,
    stream_id: str | None,
    table: str | None,
    accepted: int,
    successful_rows: int,
    rejected: list[dict[str, Any]],
    snapshot_id: int | None,
    warnings: list[str],
    errors: list[dict[str, str]],
) -> dict[str, Any]:
    """The Definite Stream API's answer; each answer gets a request id of its own."""
    return {
        "success": success,
        "request_id": "req_" + uuid.uuid4().hex[:20],
        "stream_id": stream_id,
        "table": f"lake.{table}" if table is not None else None,
        "accepted": accepted,
        "successful_rows": successful_rows,
        "rejected_rows": len(rejected),
        "partitions": [],
        "snapshot_id": snapshot_id,
        "warnings": warnings,
        "errors": errors,
        "rejected": rejected,
    }


def dead_letter_json(letter: DeadLetter) -> dict[str, Any]:
    return {
        "materialization": letter.materialization,
        "basin": letter.basin,
        "stream": letter.stream,
        "seq_num": letter.seq_num,
        "record_timestamp": letter.record_timestamp,
        "reason": letter.reason,
        "rejected_at": letter.rejected_at.isoformat(),
        "body": letter.body.decode(errors="replace") if letter.body is not None else None,
    }


# --- SQL results -------------------------------------------------------------------------


def sql_result_json(table: pa.Table, truncated: bool) -> bytes:
    columns = [{"name": field.name, "type": str(field.type)} for field in table.schema]
    values = [[json_safe(value) for value in column.to_pylist()] for column in table.columns]
    result = {
        "columns": columns,
        "rows": [list(row) for row in zip(*values, strict=True)],
        "row_count": table.num_rows,
        "truncated": truncated,
    }
    return json.dumps(result, separators=(",", ":"), allow_nan=False).encode()


def json_safe(value: Any) -> Any:
    """A query value as JSON can carry it (the choices are listed in the module docstring)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else _NON_FINITE[str(value)]
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    # Decimal, UUID and any other scalar: its exact text.
    return str(value)


_NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}
