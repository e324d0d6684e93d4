"""How long-lived responses (S2S sessions, SSE) are written, and end when the client leaves.

What a session means (order, failure, draining on shutdown) is the core's:
`server.append_session` and `server.read_session`. Here is the HTTP side of it: each output is
written as it comes, and a failure after the response started is one terminal frame or event
(a failure before it is an ordinary error response). A read is cancelled when its client
disconnects, so it stops following a stream nobody reads; writes to a gone client are
dropped silently.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import TypeVar

from s2s.errors import S2Error
from server.http_frontend.errors import internal_error
from server.http_frontend.exchange import Exchange

Output = TypeVar("Output")


async def write_outputs(
    exchange: Exchange,
    outputs: AsyncGenerator[Output, None],
    encode: Callable[[Output], bytes],
    end: bytes,
    terminal: Callable[[S2Error], bytes],
) -> None:
    """Write each output, then `end`; a failure ends the response with `terminal(error)`.
    `outputs` (a session) is closed however this ends."""
    async with contextlib.aclosing(outputs):
        try:
            async for output in outputs:
                await exchange.write(encode(output))
            await exchange.write(end, more_body=False)
        except S2Error as error:
            await exchange.write(terminal(error), more_body=False)
        except Exception as error:
            await exchange.write(terminal(internal_error(error)), more_body=False)


async def serve_read(
    exchange: Exchange,
    outputs: AsyncGenerator[Output, None],
    headers: list[tuple[str, str]],
    encode: Callable[[Output], bytes],
    end: bytes,
    terminal: Callable[[S2Error], bytes],
) -> None:
    """Answer `200` once the read's first output is known, so that a read of a missing stream
    or past the tail is a plain error response, not a terminal frame; then write the outputs
    (`write_outputs`) until the read ends or the client disconnects. `outputs` (a read
    session) is closed however this ends, which releases its follower slot."""
    async with contextlib.aclosing(outputs):
        first = await anext(outputs, None)
        await exchange.start(200, headers)
        writing = write_outputs(exchange, _after(first, outputs), encode, end, terminal)
        await _unless_disconnected(exchange, writing)


async def _after(first: Output | None, rest: AsyncIterator[Output]) -> AsyncGenerator[Output, None]:
    if first is None:
        return
    yield first
    async for output in rest:
        yield output


async def _unless_disconnected(exchange: Exchange, work: Awaitable[None]) -> None:
    """Run `work` to its end, or cancel it when the client disconnects first."""
    task = asyncio.ensure_future(work)
    disconnect = asyncio.ensure_future(_until_disconnect(exchange))
    try:
        await asyncio.wait((task, disconnect), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for future in (task, disconnect):
            future.cancel()
        await asyncio.wait((task, disconnect))
    for future in (task, disconnect):
        if not future.cancelled():
            future.result()  # what it raised, if anything


async def _until_disconnect(exchange: Exchange) -> None:
    while (await exchange.receive())["type"] != "http.disconnect":
        pass
