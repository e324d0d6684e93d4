"""How long-lived responses (S2S sessions, SSE) end when the client leaves or the server drains.

On shutdown a session ends with `503 server_draining`, which tells SDK >= 0.13 to reconnect
elsewhere without spending a retry. A session is only ever cut while it waits (for the next
read output or the next request frame), never in the middle of writing a frame or submitting
a batch, so nothing is half-written and nothing unacknowledged was appended.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator

from s2s.errors import server_draining
from server.http_frontend.exchange import Exchange


class Waits:
    """Tracks whether a session is at a point where it may be cut."""

    def __init__(self, draining: asyncio.Event) -> None:
        self.draining = draining
        self.waiting = False

    @contextlib.contextmanager
    def waiting_section(self) -> Iterator[None]:
        if self.draining.is_set():
            raise server_draining()
        self.waiting = True
        try:
            yield
        finally:
            self.waiting = False


async def _until_disconnect(exchange: Exchange) -> None:
    while (await exchange.receive())["type"] != "http.disconnect":
        pass


async def _until_set(event: asyncio.Event) -> None:
    await event.wait()


async def supervise(
    exchange: Exchange,
    work: Awaitable[None],
    waits: Waits,
    write_draining: Callable[[], Awaitable[None]],
) -> None:
    """Run a response-writing `work` until it ends, the client disconnects (cancel it: writes
    to a gone client are dropped silently), or the server drains (cut it at its next wait)."""
    task = asyncio.ensure_future(work)
    disconnect = asyncio.ensure_future(_until_disconnect(exchange))
    drain = asyncio.ensure_future(_until_set(waits.draining))
    watched: set[asyncio.Future[None]] = {task, disconnect, drain}
    try:
        while not task.done():
            await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
            if disconnect.done():
                break
            if drain.done() and drain in watched:
                watched.discard(drain)
                if waits.waiting:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                    await write_draining()
                    return
                # Busy writing: `work` notices the drain when it next waits.
    finally:
        for future in (task, disconnect, drain):
            future.cancel()
        for future in (task, disconnect, drain):
            with contextlib.suppress(asyncio.CancelledError):
                await future
    if not task.cancelled() and task.exception() is not None:
        raise task.exception()  # type: ignore[misc]
