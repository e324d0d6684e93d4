"""Read sessions: the one loop behind gRPC `ReadSession`, S2S read sessions and SSE reads.

The reader (`Reader.session`) catches up from storage, then follows the tail, with heartbeats
while it is idle. What this adds is what a session means on every transport at shutdown: it
ends with `server_draining` (which tells SDK >= 0.13 to reconnect elsewhere without spending a
retry) at once, instead of holding the server up for its grace period; and when the caller's
access token is revoked or expires, it ends with `authn`. It is cut only while it
waits for its next output (a storage read, the tail), never while its frontend writes one, so
no frame or event is half-written; a frontend busy writing ends at its next wait.

The wait runs in the task that consumes the session (the gRPC call's, the HTTP response's):
racing it against the drain in tasks of its own would cost a task hop per output. Instead one
watcher per session cancels that task if it is waiting when the end comes, and the
cancellation becomes the end's error where it lands, at the wait.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator

from s2s.config import StreamConfig
from s2s.errors import S2Error
from server.reader import ReadLimits, ReadOutput, ReadStart
from server.scoped_store import ScopedStore


async def read_session(
    store: ScopedStore,
    basin: str,
    stream: str,
    start: ReadStart,
    limits: ReadLimits,
    create_config: StreamConfig | None,
) -> AsyncGenerator[ReadOutput, None]:
    """The session's outputs (records, or a heartbeat with the tail) until it ends; a failure
    is raised, `server_draining` once the store drains (shutdown), `authn` once the caller's
    access token is revoked or expires.

    Nothing is checked before the first output is asked for: a frontend that must answer
    "not found" or "unwritten" as a plain error reads that output before it answers.
    """
    outputs = await store.read_session(basin, stream, start, limits, create_config)
    output: ReadOutput | None
    # Closing the reader's generator releases its follower slot.
    async with contextlib.aclosing(outputs):
        cut = _Cut(store)
        try:
            while (output := await cut.next(outputs)) is not None:
                yield output
        finally:
            cut.close()


class _Cut:
    """Ends a session's wait for its next output when the server drains or the caller's token
    ends, with `ScopedStore.end_error`'s error."""

    def __init__(self, store: ScopedStore) -> None:
        self._store = store
        self._waiting: asyncio.Task[object] | None = None
        """The task consuming the session, while it waits for the next output."""
        self._cut = False
        self._watcher: asyncio.Future[S2Error] = asyncio.ensure_future(store.ended())
        self._watcher.add_done_callback(self._on_end)

    async def next(self, outputs: AsyncIterator[ReadOutput]) -> ReadOutput | None:
        if (ended := self._store.end_error()) is not None:
            raise ended
        task = asyncio.current_task()
        assert task is not None, "a session is consumed by a task"
        self._waiting = task
        try:
            return await anext(outputs, None)
        except asyncio.CancelledError:
            if not self._cut:
                raise  # cancelled by its owner: the client left, or the server stopped
            # The cut's own cancellation, taken back so the task's owner never sees it.
            task.uncancel()
            ended = self._store.end_error()
            assert ended is not None, "cut only once the session must end"
            raise ended from None
        finally:
            self._waiting = None

    def _on_end(self, _: object) -> None:
        if self._waiting is not None:
            self._cut = True
            self._waiting.cancel()

    def close(self) -> None:
        self._watcher.remove_done_callback(self._on_end)
        self._watcher.cancel()
