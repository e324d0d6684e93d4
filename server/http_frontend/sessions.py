"""S2S sessions over one HTTP exchange (contract 9): full duplex append and following read.

Both answer `200` as soon as the stream is known to exist (or was auto-created), before any
frame is exchanged; after that, failures are reported as one terminal frame. Errors found
while opening (404, 409, 416, 422) are ordinary HTTP error responses.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from google.protobuf.message import DecodeError

from s2s.errors import S2Error, server_draining
from s2s.records import validate_append_input
from s2s.v1 import records_pb2 as pb
from server.http_frontend.errors import internal_error
from server.http_frontend.exchange import Exchange
from server.http_frontend.lifecycle import Waits, supervise
from server.http_frontend.records import (
    create_config,
    read_arguments,
    read_batch_proto,
)
from server.http_frontend.s2s_frames import (
    encode_frame,
    negotiate_compression,
    read_frames,
    terminal_for,
)
from server.reader import ReadOutput
from server.sequencer import AppendAck
from server.streamstore import StreamStore

S2S_CONTENT_TYPE = "s2s/proto"
SESSION_INFLIGHT_BATCHES_MAX = 32
"""Batches an append session may have sequenced but not yet acknowledged (each <= 1 MiB)."""

_SESSION_HEADERS = [
    ("content-type", S2S_CONTENT_TYPE),
    ("cache-control", "no-cache, no-transform"),
    ("x-accel-buffering", "no"),
]


class SessionsApi:
    def __init__(self, store: StreamStore, draining: asyncio.Event) -> None:
        self._store = store
        self._draining = draining

    async def append_session(self, exchange: Exchange, basin: str, stream: str) -> None:
        """Sequence each input as it arrives; ack in order as each becomes durable.

        The first failure stops intake: earlier batches are still acknowledged, then one
        terminal frame ends the response. On shutdown intake stops at the next frame boundary
        the same way, with `server_draining`.
        """
        await self._store.sequencer(basin, stream, "append", create_config(exchange))
        compression = negotiate_compression(exchange.header("accept-encoding"))
        await exchange.start(200, _SESSION_HEADERS)
        pending: asyncio.Queue[asyncio.Future[AppendAck] | S2Error | None] = asyncio.Queue(
            SESSION_INFLIGHT_BATCHES_MAX
        )

        receiving = False

        async def intake() -> None:
            nonlocal receiving
            frames = read_frames(exchange.body_chunks())
            try:
                while not self._draining.is_set():
                    receiving = True
                    try:
                        body = await anext(frames, None)
                    finally:
                        receiving = False
                    if body is None:
                        await pending.put(None)
                        return
                    try:
                        message = pb.AppendInput.FromString(body)
                    except DecodeError as error:
                        raise S2Error("bad_frame", f"cannot decode AppendInput: {error}") from None
                    batch = validate_append_input(message, len(body))
                    await pending.put(await self._store.submit(basin, stream, batch))
                raise server_draining()
            except S2Error as error:
                await pending.put(error)
            except Exception as error:
                await pending.put(internal_error(error))

        async def stop_intake_on_drain() -> None:
            await self._draining.wait()
            # Only a feeder waiting for the next frame is cut; one busy submitting notices
            # the drain itself before it reads another frame.
            if receiving:
                feeder.cancel()
                await pending.put(server_draining())

        feeder = asyncio.create_task(intake())
        drain_watcher = asyncio.create_task(stop_intake_on_drain())
        try:
            while (item := await pending.get()) is not None:
                if isinstance(item, S2Error):
                    raise item
                await exchange.write(encode_frame((await item).encode(), compression))
            await exchange.write(b"", more_body=False)
        except S2Error as error:
            await exchange.write(terminal_for(error), more_body=False)
        except Exception as error:
            await exchange.write(terminal_for(internal_error(error)), more_body=False)
        finally:
            for task in (feeder, drain_watcher):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def read_session(self, exchange: Exchange, basin: str, stream: str) -> None:
        """Catch up, then follow with heartbeats; the first output is read before answering
        so that a read past the tail is a plain 416, not a terminal frame."""
        start, limits = read_arguments(exchange)
        compression = negotiate_compression(exchange.header("accept-encoding"))
        # Closing the session generator releases its follower slot.
        session = await self._store.read_session(
            basin, stream, start, limits, create_config(exchange)
        )
        async with contextlib.aclosing(session):
            first = await next_output(session)
            await exchange.start(200, _SESSION_HEADERS)
            waits = Waits(self._draining)

            async def write_draining() -> None:
                await exchange.write(terminal_for(server_draining()), more_body=False)

            await supervise(
                exchange,
                self._pump(exchange, first, session, compression, waits),
                waits,
                write_draining,
            )

    async def _pump(
        self,
        exchange: Exchange,
        output: ReadOutput | None,
        session: AsyncIterator[ReadOutput],
        compression: str | None,
        waits: Waits,
    ) -> None:
        try:
            while output is not None:
                await exchange.write(encode_frame(read_batch_proto(output), compression))
                with waits.waiting_section():
                    output = await next_output(session)
            await exchange.write(b"", more_body=False)
        except S2Error as error:
            await exchange.write(terminal_for(error), more_body=False)
        except Exception as error:
            await exchange.write(terminal_for(internal_error(error)), more_body=False)


async def next_output(session: AsyncIterator[ReadOutput]) -> ReadOutput | None:
    try:
        return await anext(session)
    except StopAsyncIteration:
        return None
