"""HTTP handlers for the lake: row ingest (`/v2/stream`), dead letters, read-only SQL,
and materialization control (its Prometheus metrics are served by `metrics.py`). Routing
lives in `app.py`, the JSON shapes in `lake_json.py`.

Each call runs through a `ScopedLake` of its caller, which checks it against the caller's
access token (server/lake/scoped.py has the rules).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pyarrow as pa

from s2s.errors import S2Error, invalid
from server.http_frontend.exchange import Exchange, first_accept
from server.http_frontend.lake_files import (
    CSV_CONTENT_TYPE,
    PARQUET_CONTENT_TYPE,
    csv_bytes,
    parquet_bytes,
)
from server.http_frontend.lake_json import (
    dead_letter_json,
    ingest_json,
    ingest_refusal_json,
    spec_from_json,
    sql_result_json,
    status_json,
)
from server.lake.dead_letters import DEAD_LETTERS_LIMIT_MAX
from server.lake.definition import split_table
from server.lake.ingest import MAX_PAYLOAD_BYTES, parse_ingest_request, payload_too_large
from server.lake.query import ROWS_MAX, arrow_ipc_stream
from server.lake.scoped import ScopedLake

ARROW_STREAM_CONTENT_TYPE = "application/vnd.apache.arrow.stream"
TRUNCATED_HEADER = "s2s-truncated"
_DOWNLOADS: dict[str, tuple[str, Callable[[pa.Table], bytes], str]] = {
    "text/csv": (CSV_CONTENT_TYPE, csv_bytes, "result.csv"),
    PARQUET_CONTENT_TYPE: (PARQUET_CONTENT_TYPE, parquet_bytes, "result.parquet"),
}
"""Accepted media type -> the answer's content type, its encoder and its file name."""
DEAD_LETTERS_LIMIT_DEFAULT = 100


class LakeApi:
    """The lake's HTTP handlers over one caller's `ScopedLake`."""

    def __init__(self, lake: ScopedLake) -> None:
        self._lake = lake

    # --- ingest --------------------------------------------------------------------------

    async def ingest(self, exchange: Exchange) -> None:
        """`POST /v2/stream`: validate the whole request first, then look the table up. A
        refusal is answered in the shape of an answer and counted against its table."""
        query = exchange.query()
        body = await _read_capped(exchange)
        table: str | None = None
        try:
            if body is None:
                raise payload_too_large("request body")
            request = parse_ingest_request(
                body,
                content_type=exchange.header("content-type"),
                content_encoding=exchange.header("content-encoding"),
                query=query,
            )
            table = request.qualified_table
            result = await self._lake.ingest(request)
        except S2Error as error:
            self._lake.count_refused(table, error.code)
            await exchange.respond_json(error.kind.http_status, ingest_refusal_json(table, error))
            return
        await exchange.respond_json(200, ingest_json(result))

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
        await exchange.respond_json(
            200, {"table": qualified, "errors": [dead_letter_json(error) for error in errors]}
        )

    # --- SQL -----------------------------------------------------------------------------

    async def query(self, exchange: Exchange) -> None:
        """`POST /v1/lake/query` `{"sql", "limit"?}`: JSON rows, or Arrow IPC, CSV or
        Parquet when the first `accept` type asks for one."""
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
        accept = first_accept(exchange.header("accept"))
        if accept == ARROW_STREAM_CONTENT_TYPE:
            data = await asyncio.to_thread(arrow_ipc_stream, table)
            await exchange.respond(200, data, ARROW_STREAM_CONTENT_TYPE, headers)
        elif accept in _DOWNLOADS:
            content_type, encode, filename = _DOWNLOADS[accept]
            data = await asyncio.to_thread(encode, table)
            headers.append(("content-disposition", f'attachment; filename="{filename}"'))
            await exchange.respond(200, data, content_type, headers)
        else:
            data = await asyncio.to_thread(sql_result_json, table, truncated)
            await exchange.respond(200, data, "application/json", headers)

    # --- materializations ----------------------------------------------------------------

    async def create_materialization(self, exchange: Exchange) -> None:
        spec = spec_from_json(await exchange.json_body())
        status = await self._lake.create_materialization(spec)
        await exchange.respond_json(201, status_json(status))

    async def list_materializations(self, exchange: Exchange) -> None:
        statuses = await self._lake.list_materializations()
        await exchange.respond_json(
            200, {"materializations": [status_json(status) for status in statuses]}
        )

    async def get_materialization(self, exchange: Exchange, name: str) -> None:
        await exchange.respond_json(200, status_json(await self._lake.materialization_status(name)))

    async def pause_materialization(self, exchange: Exchange, name: str) -> None:
        await exchange.respond_json(200, status_json(await self._lake.pause(name)))

    async def resume_materialization(self, exchange: Exchange, name: str) -> None:
        await exchange.respond_json(200, status_json(await self._lake.resume(name)))

    async def delete_materialization(self, exchange: Exchange, name: str) -> None:
        await self._lake.delete(name)
        await exchange.respond(204)


async def _read_capped(exchange: Exchange) -> bytes | None:
    """The raw body; None, and reading stopped, as soon as it passes the ingest limit.

    So the server never holds an arbitrarily large body. A client that hangs up mid-body must
    not have its truncated body ingested, hence the error instead of a short read (and no
    answer, nor a refusal counted: nobody is there to read it).
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
            return None
        if not message.get("more_body", False):
            return b"".join(parts)


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
