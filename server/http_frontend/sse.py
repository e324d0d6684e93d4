"""Server-sent-event reads (docs/s2-compat.md §8.1): `batch`, `ping` and `error` events,
then `[DONE]`.

A `batch` event's id is `last_seq_num,count,bytes` (count and bytes cumulative over the
session), which a client sends back as `last-event-id` to resume where it stopped.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from typing import Any

from s2s.errors import S2Error
from server.http_frontend.exchange import Exchange, parse_uint
from server.http_frontend.lifecycle import serve_read
from server.http_frontend.records import (
    create_config,
    position_json,
    read_arguments,
    read_batch_json,
    record_format,
)
from server.read_session import read_session
from server.reader import ReadLimits, ReadOutput, ReadStart
from server.scoped_store import ScopedStore

SSE_CONTENT_TYPE = "text/event-stream"
_HEADERS = [
    ("content-type", SSE_CONTENT_TYPE),
    ("cache-control", "no-cache, no-transform"),
    ("x-accel-buffering", "no"),
]


def event(name: str | None, data: str, event_id: str | None = None) -> bytes:
    lines = []
    if name is not None:
        lines.append(f"event: {name}")
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append(f"data: {data}")
    return ("\n".join(lines) + "\n\n").encode()


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def resume(
    exchange: Exchange, start: ReadStart, limits: ReadLimits
) -> tuple[ReadStart, ReadLimits, int, int]:
    """Apply `last-event-id: seq,count,bytes`: continue after seq with what is left."""
    value = exchange.header("last-event-id")
    if value is None:
        return start, limits, 0, 0
    parts = value.strip().split(",")
    numbers = [number for part in parts if (number := parse_uint(part)) is not None]
    if len(parts) != 3 or len(numbers) != 3:
        raise S2Error("bad_header", "last-event-id must be `seq_num,count,bytes`")
    seq, count, size = numbers
    limits = replace(
        limits,
        count=None if limits.count is None else max(limits.count - count, 0),
        bytes=None if limits.bytes is None else max(limits.bytes - size, 0),
    )
    return ReadStart(seq_num=seq + 1), limits, count, size


class SseApi:
    def __init__(self, store: ScopedStore) -> None:
        self._store = store

    async def read(self, exchange: Exchange, basin: str, stream: str) -> None:
        """Catch up, then follow: a `batch` event per batch, a `ping` per heartbeat, and at the
        end `[DONE]` or one `error` event (`server_draining` on shutdown)."""
        fmt = record_format(exchange)
        start, limits = read_arguments(exchange)
        start, limits, count, size = resume(exchange, start, limits)
        session = read_session(
            self._store,
            basin,
            stream,
            start,
            limits,
            create_config(exchange),
        )
        await serve_read(
            exchange,
            session,
            _HEADERS,
            _Events(fmt, count, size).encode,
            event(None, "[DONE]"),
            self._error_event,
        )

    def _error_event(self, error: S2Error) -> bytes:
        self._store.count_error(error.code)
        return event("error", _json(error.body()))


class _Events:
    """Encodes a session's outputs as events, counting records and bytes for the event ids."""

    def __init__(self, fmt: str, count: int, size: int) -> None:
        self._fmt = fmt
        self._count = count
        self._size = size

    def encode(self, output: ReadOutput) -> bytes:
        if output.records is None:
            tail = None if output.tail is None else position_json(output.tail)
            ping = {"timestamp": int(time.time() * 1000), "tail": tail}
            return event("ping", _json(ping))
        self._count += output.records.count
        self._size += output.records.metered_bytes
        event_id = f"{output.records.last_seq},{self._count},{self._size}"
        return event("batch", _json(read_batch_json(output, self._fmt)), event_id)
