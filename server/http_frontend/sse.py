"""Server-sent-event reads (contract 8.1): `batch`, `ping` and `error` events, then `[DONE]`.

A `batch` event's id is `last_seq_num,count,bytes` (count and bytes cumulative over the
session), which a client sends back as `last-event-id` to resume where it stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import replace
from typing import Any

from s2s.errors import S2Error, server_draining
from server.http_frontend.errors import internal_error
from server.http_frontend.exchange import Exchange, parse_uint
from server.http_frontend.lifecycle import Waits, supervise
from server.http_frontend.records import (
    create_config,
    position_json,
    read_arguments,
    read_batch_json,
    record_format,
)
from server.http_frontend.sessions import next_output
from server.reader import ReadLimits, ReadStart
from server.streamstore import StreamStore

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
    def __init__(self, store: StreamStore, draining: asyncio.Event) -> None:
        self._store = store
        self._draining = draining

    async def read(self, exchange: Exchange, basin: str, stream: str) -> None:
        fmt = record_format(exchange)
        start, limits = read_arguments(exchange)
        start, limits, count, size = resume(exchange, start, limits)
        # Closing the session generator releases its follower slot.
        session = await self._store.read_session(
            basin, stream, start, limits, create_config(exchange)
        )
        async with contextlib.aclosing(session):
            first = await next_output(session)
            await exchange.start(200, _HEADERS)
            waits = Waits(self._draining)

            async def pump() -> None:
                nonlocal count, size
                try:
                    output = first
                    while output is not None:
                        if output.records is None:
                            tail = None if output.tail is None else position_json(output.tail)
                            ping = {"timestamp": int(time.time() * 1000), "tail": tail}
                            await exchange.write(event("ping", _json(ping)))
                        else:
                            count += output.records.count
                            size += output.records.metered_bytes
                            event_id = f"{output.records.last_seq},{count},{size}"
                            data = _json(read_batch_json(output, fmt))
                            await exchange.write(event("batch", data, event_id))
                        with waits.waiting_section():
                            output = await next_output(session)
                    await exchange.write(event(None, "[DONE]"), more_body=False)
                except S2Error as error:
                    await write_error(error)
                except Exception as error:
                    await write_error(internal_error(error))

            async def write_error(error: S2Error) -> None:
                await exchange.write(event("error", _json(error.body())), more_body=False)

            await supervise(exchange, pump(), waits, lambda: write_error(server_draining()))
