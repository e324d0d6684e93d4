"""HTTP handlers for the lake: row ingest (`/v2/stream`), dead letters, read-only SQL,
materialization control and Prometheus metrics. Routing lives in `app.py`.

Authorization: a `Bearer` token is accepted and ignored on every lake route; enforcing it
belongs to the security work, which covers the whole server, not just the lake.

SQL results as JSON: timestamps, dates and times are ISO-8601 strings; decimals are strings
(a JSON number would lose digits), as are UUIDs; binary values are base64 strings (bytes
need not be UTF-8); non-finite floats are the strings "NaN", "Infinity" and "-Infinity" (JSON
has no literal for them); intervals are `[months, days, nanoseconds]`; maps are lists of
`[key, value]` pairs; column types are Arrow type names.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import math
import uuid
from collections.abc import Iterable
from typing import Any

import pyarrow as pa

from s2s.errors import S2Error, invalid
from server.http_frontend.exchange import Exchange, first_accept
from server.lake.definition import split_table
from server.lake.ingest import MAX_PAYLOAD_BYTES, IngestError, parse_ingest_request
from server.lake.query import ROWS_MAX, arrow_ipc_stream
from server.lake.service import DEAD_LETTERS_LIMIT_MAX, Lake

ARROW_STREAM_CONTENT_TYPE = "application/vnd.apache.arrow.stream"
TRUNCATED_HEADER = "s2s-truncated"
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DEAD_LETTERS_LIMIT_DEFAULT = 100


class LakeApi:
    """The lake's HTTP handlers over a `Lake`."""

    def __init__(self, lake: Lake) -> None:
        self._lake = lake

    # --- ingest --------------------------------------------------------------------------

    async def ingest(self, exchange: Exchange) -> None:
        """`POST /v2/stream`: validate the whole request first, then look the table up."""
        query = exchange.query()
        try:
            body = await _read_capped(exchange)
            request = parse_ingest_request(
                body,
                content_type=exchange.header("content-type"),
                content_encoding=exchange.header("content-encoding"),
                query=query,
            )
        except IngestError as error:
            await self._ingest_failed(exchange, None, error.status, error.code, error.message)
            return
        try:
            result = await self._lake.ingest(request)
        except S2Error as error:
            await self._ingest_failed(
                exchange,
                request.qualified_table,
                error.kind.http_status,
                error.code,
                error.message,
            )
            return
        await exchange.respond_json(200, result)

    async def _ingest_failed(
        self, exchange: Exchange, table: str | None, status: int, code: str, message: str
    ) -> None:
        self._lake.count_error(table, code)
        await exchange.respond_json(status, _ingest_failure(table, code, message))

    async def dead_letters(self, exchange: Exchange) -> None:
        """`GET /v2/stream/errors?table=schema.table&limit=n`: newest rejected rows first."""
        query = exchange.query()
        table = query.get("table")
        if not table:
            raise S2Error("bad_query", "missing query parameter 'table'")
        schema, name = split_table(table)
        limit = _int_param(query, "limit", DEAD_LETTERS_LIMIT_DEFAULT, DEAD_LETTERS_LIMIT_MAX)
        qualified = f"{schema}.{name}"
        errors = await self._lake.dead_letters(qualified, limit)
        await exchange.respond_json(200, {"table": qualified, "errors": errors})

    # --- SQL -----------------------------------------------------------------------------

    async def query(self, exchange: Exchange) -> None:
        """`POST /v1/lake/query` `{"sql", "limit"?}`: JSON rows, or Arrow IPC if accepted."""
        body = await exchange.json_body()
        if not isinstance(body, dict):
            raise invalid("body must be a JSON object with 'sql'")
        sql = body.get("sql")
        if not isinstance(sql, str) or not sql.strip():
            raise invalid("'sql' must be a non-empty string")
        limit = body.get("limit", ROWS_MAX)
        if type(limit) is not int or not 1 <= limit <= ROWS_MAX:
            raise invalid(f"'limit' must be an integer between 1 and {ROWS_MAX}")
        table, truncated = await self._lake.query(sql, limit)
        headers = [(TRUNCATED_HEADER, "true" if truncated else "false")]
        # Encoding up to ROWS_MAX rows takes long enough to stall other requests; a thread
        # keeps the event loop free.
        if first_accept(exchange.header("accept")) == ARROW_STREAM_CONTENT_TYPE:
            data = await asyncio.to_thread(arrow_ipc_stream, table)
            await exchange.respond(200, data, ARROW_STREAM_CONTENT_TYPE, headers)
        else:
            data = await asyncio.to_thread(_json_result, table, truncated)
            await exchange.respond(200, data, "application/json", headers)

    # --- materializations ----------------------------------------------------------------

    async def create_materialization(self, exchange: Exchange) -> None:
        spec = await exchange.json_body()
        if not isinstance(spec, dict):
            raise invalid("body must be a JSON object: the materialization's declaration")
        await exchange.respond_json(201, await self._lake.create_materialization(spec))

    async def list_materializations(self, exchange: Exchange) -> None:
        materializations = await self._lake.list_materializations()
        await exchange.respond_json(200, {"materializations": materializations})

    async def get_materialization(self, exchange: Exchange, name: str) -> None:
        await exchange.respond_json(200, await self._lake.materialization_status(name))

    async def pause_materialization(self, exchange: Exchange, name: str) -> None:
        await exchange.respond_json(200, await self._lake.pause(name))

    async def resume_materialization(self, exchange: Exchange, name: str) -> None:
        await exchange.respond_json(200, await self._lake.resume(name))

    async def delete_materialization(self, exchange: Exchange, name: str) -> None:
        await self._lake.delete(name)
        await exchange.respond(204)

    # --- metrics -------------------------------------------------------------------------

    async def metrics(self, exchange: Exchange) -> None:
        """`GET /metrics`: ingest counters per table, lag and progress per materialization."""
        materializations = await self._lake.list_materializations()
        text = "".join(_metric_families(self._lake, materializations))
        await exchange.respond(200, text.encode(), PROMETHEUS_CONTENT_TYPE)


async def _read_capped(exchange: Exchange) -> bytes:
    """The raw body, refused with 413 as soon as it passes the ingest limit.

    Reading stops there, so the server never holds an arbitrarily large body. A client that
    hangs up mid-body must not have its truncated body ingested, hence the error instead of a
    short read.
    """
    parts: list[bytes] = []
    size = 0
    while True:
        message = await exchange.receive()
        if message["type"] == "http.disconnect":
            raise S2Error("client_hangup", "client disconnected before sending the whole body")
        chunk: bytes = message.get("body", b"")
        parts.append(chunk)
        size += len(chunk)
        if size > MAX_PAYLOAD_BYTES:
            raise IngestError(
                413,
                "payload_too_large",
                f"request body exceeds the limit of {MAX_PAYLOAD_BYTES} bytes "
                f"({MAX_PAYLOAD_BYTES // (1024 * 1024)} MiB)",
            )
        if not message.get("more_body", False):
            return b"".join(parts)


def _ingest_failure(table: str | None, code: str, message: str) -> dict[str, Any]:
    """A refused request, in the shape of a successful response that accepted nothing."""
    return {
        "success": False,
        "request_id": "req_" + uuid.uuid4().hex[:20],
        "stream_id": None,
        "table": f"lake.{table}" if table is not None else None,
        "accepted": 0,
        "successful_rows": 0,
        "rejected_rows": 0,
        "partitions": [],
        "snapshot_id": None,
        "warnings": [],
        "errors": [{"code": code, "message": message}],
        "rejected": [],
    }


def _int_param(query: dict[str, str], name: str, default: int, maximum: int) -> int:
    text = query.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise S2Error("bad_query", f"query parameter {name!r} must be an integer") from None
    if not 1 <= value <= maximum:
        raise S2Error("bad_query", f"query parameter {name!r} must be between 1 and {maximum}")
    return value


# --- result encodings --------------------------------------------------------------------


def _json_result(table: pa.Table, truncated: bool) -> bytes:
    columns = [{"name": field.name, "type": str(field.type)} for field in table.schema]
    values = [[_json_safe(value) for value in column.to_pylist()] for column in table.columns]
    result = {
        "columns": columns,
        "rows": [list(row) for row in zip(*values, strict=True)],
        "row_count": table.num_rows,
        "truncated": truncated,
    }
    return json.dumps(result, separators=(",", ":"), allow_nan=False).encode()


def _json_safe(value: Any) -> Any:
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
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    # Decimal, UUID and any other scalar: its exact text.
    return str(value)


_NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


# --- Prometheus text format --------------------------------------------------------------


def _metric_families(lake: Lake, materializations: list[dict[str, Any]]) -> Iterable[str]:
    tables = sorted(lake.counters.items())
    for metric, attribute, help_text in _TABLE_COUNTERS:
        samples = [({"table": table}, getattr(counters, attribute)) for table, counters in tables]
        yield from _family(metric, "counter", help_text, samples)
    codes = sorted(lake.error_codes.items())
    yield from _family(
        "s2s_lake_ingest_error_codes_total",
        "counter",
        "Ingest requests refused as a whole, per table (empty if unknown) and error code.",
        [({"table": table, "code": code}, count) for (table, code), count in codes],
    )
    for metric, kind, field, help_text in _MATERIALIZATION_METRICS:
        samples = [({"name": status["name"]}, status[field]) for status in materializations]
        yield from _family(metric, kind, help_text, samples)


_TABLE_COUNTERS = (
    ("s2s_lake_ingest_requests_total", "requests", "Ingest requests per table."),
    (
        "s2s_lake_ingest_rows_accepted_total",
        "rows_accepted",
        "Rows accepted into a table's ingest stream.",
    ),
    (
        "s2s_lake_ingest_rows_rejected_total",
        "rows_rejected",
        "Rows rejected by validation or by the table's column types.",
    ),
    (
        "s2s_lake_ingest_errors_total",
        "errors",
        "Ingest requests refused as a whole, per table.",
    ),
)

_MATERIALIZATION_METRICS = (
    (
        "s2s_lake_materialization_lag_records",
        "gauge",
        "lag_records",
        "Records in the source stream not yet applied.",
    ),
    (
        "s2s_lake_materialization_lag_seconds",
        "gauge",
        "lag_seconds",
        "Age of the oldest record not yet applied.",
    ),
    (
        "s2s_lake_materialization_rows_applied_total",
        "counter",
        "rows_applied",
        "Rows written to the table.",
    ),
    (
        "s2s_lake_materialization_rows_rejected_total",
        "counter",
        "rows_rejected",
        "Records sent to the dead-letter table.",
    ),
    (
        "s2s_lake_materialization_records_skipped_total",
        "counter",
        "records_skipped",
        "Records trimmed or expired from the source before they were applied (lost).",
    ),
)


def _family(
    name: str, kind: str, help_text: str, samples: list[tuple[dict[str, str], float]]
) -> Iterable[str]:
    yield f"# HELP {name} {help_text}\n"
    yield f"# TYPE {name} {kind}\n"
    for labels, value in samples:
        rendered = ",".join(f'{key}="{_label_value(text)}"' for key, text in labels.items())
        yield f"{name}{{{rendered}}} {value}\n"


def _label_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
