"""Append sessions: the one pipeline behind gRPC `AppendSession` and S2S append sessions.

A frontend hands over the client's messages as they arrive and a function that decodes one
into a validated batch (`StreamBatch`); it gets back acks, in order, and at most one error,
which it encodes for its transport. What a session means is decided here, once, as s2-lite's
backend owns its append session:

- Pipelining and order: each batch is sequenced (`StreamStore.submit`) as soon as it is
  decoded, without waiting for the batches before it to be durable, and acknowledged in
  submission order as each becomes durable.
- Back-pressure: at most `SESSION_INFLIGHT_BATCHES_MAX` batches are sequenced and not yet
  acknowledged; until one is, the session reads nothing more, so the transport's flow control
  slows the client down.
- Fail first: the first failure (a message that does not decode, a batch refused by
  validation or by its condition, storage) stops intake. The batches before it are still
  acknowledged, then the session ends with that error; nothing after it is sequenced.
- Draining: on shutdown, intake stops at the next message boundary the same way, with
  `server_draining`; when the caller's access token is revoked or expires, with `authn`. It
  is cut only while it waits for the client's next message, never while it decodes or submits
  one, so no batch the client was not told about was appended.

Two tasks per session, as before this module existed: the intake reads, decodes and submits in
its own turn, and the caller's task awaits the acks; they meet in a bounded queue. A batch
costs one queue hand-off and no other task hop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Generic, NamedTuple, NoReturn, TypeAlias, TypeVar

from s2s.records import ValidatedBatch
from server.scoped_store import ScopedStore
from server.sequencer import AppendAck

SESSION_INFLIGHT_BATCHES_MAX = 32
"""Batches a session may have sequenced but not yet acknowledged (each <= 1 MiB)."""

Message = TypeVar("Message")


class StreamBatch(NamedTuple):
    """A decoded message: a validated batch and the stream it is appended to."""

    basin: str
    stream: str
    batch: ValidatedBatch


@dataclass(frozen=True)
class DiscardAfterFailure:
    """After a failure, keep reading and discarding the client's messages until it half-closes,
    sends nothing for `quiet_s`, or `s_max` passes; only then end the session."""

    quiet_s: float
    s_max: float


_Queued: TypeAlias = asyncio.Future[AppendAck] | Exception | None
"""An ack to come, the failure that ends the session, or None: the client half-closed."""


def append_session(
    store: ScopedStore,
    messages: AsyncIterator[Message],
    decode: Callable[[Message], StreamBatch],
    *,
    discard: DiscardAfterFailure | None = None,
) -> AsyncGenerator[AppendAck, None]:
    """The session's acks, in order; its one failure is raised after the acks before it.

    `decode` raises for a message it cannot turn into a batch (an `S2Error`, like the
    checks that follow). `messages` may raise too: that failure ends the session the same way.
    When the store drains (shutdown) or the caller's token ends, the session ends with
    `ScopedStore.end_error`'s error. The caller
    closes the generator (`contextlib.aclosing`), which stops the intake.
    """
    return _AppendSession(store, messages, decode, discard).acks()


async def refuse_session(
    messages: AsyncIterator[Message], error: Exception, discard: DiscardAfterFailure
) -> NoReturn:
    """Refuse a session before it starts (its caller has no valid token, say): read and
    discard the client's messages as after a failure (`DiscardAfterFailure`), then raise
    `error`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + discard.s_max
    while (wait_s := min(discard.quiet_s, deadline - loop.time())) > 0:
        try:
            await asyncio.wait_for(anext(messages), wait_s)
        except (StopAsyncIteration, TimeoutError):
            break
    raise error


class _AppendSession(Generic[Message]):
    def __init__(
        self,
        store: ScopedStore,
        messages: AsyncIterator[Message],
        decode: Callable[[Message], StreamBatch],
        discard: DiscardAfterFailure | None,
    ) -> None:
        self._store = store
        self._messages = messages
        self._decode = decode
        self._discard = discard
        self._pending: asyncio.Queue[_Queued] = asyncio.Queue(SESSION_INFLIGHT_BATCHES_MAX)
        self._failed = False
        """Set at the first failure: nothing read after it is sequenced."""
        self._waiting_for_message = False
        self._last_received_s = 0.0

    async def acks(self) -> AsyncGenerator[AppendAck, None]:
        self._last_received_s = asyncio.get_running_loop().time()
        intake = asyncio.create_task(self._intake())
        tasks = [intake, asyncio.create_task(self._stop_intake_on_end(intake))]
        self._store.session_opened("append")
        try:
            while True:
                try:
                    ack = await self._next_ack()
                except Exception:
                    self._failed = True
                    if self._discard is not None:
                        await self._discard_until_quiet(intake, self._discard)
                    raise
                if ack is None:
                    return
                yield ack
        finally:
            self._store.session_closed("append")
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self._abandon_queued_acks()

    async def _next_ack(self) -> AppendAck | None:
        item = await self._pending.get()
        if isinstance(item, Exception):
            raise item
        return None if item is None else await item

    async def _intake(self) -> None:
        """Read, decode and submit each message in turn, until the client half-closes or the
        session fails; after a failure, read on only to discard (`DiscardAfterFailure`)."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not self._failed and (ended := self._store.end_error()) is not None:
                    await self._fail(ended)
                if self._failed and self._discard is None:
                    return
                self._waiting_for_message = True
                try:
                    message = await anext(self._messages)
                except StopAsyncIteration:
                    break
                finally:
                    self._waiting_for_message = False
                self._last_received_s = loop.time()
                if not self._failed:
                    await self._submit(message)
        except Exception as error:  # reading the client failed: a malformed frame, say
            if not self._failed:
                await self._fail(error)
            return
        if not self._failed:
            await self._pending.put(None)

    async def _submit(self, message: Message) -> None:
        try:
            decoded = self._decode(message)
            ack = await self._store.submit(decoded.basin, decoded.stream, decoded.batch, paced=True)
        except Exception as error:
            await self._fail(error)
            return
        try:
            await self._pending.put(ack)
        except asyncio.CancelledError:
            ack.cancel()  # the session ended while the queue was full: nobody awaits it
            raise

    async def _fail(self, error: Exception) -> None:
        """Stop sequencing; the error reaches the caller after the acks queued before it."""
        self._failed = True
        await self._pending.put(error)

    def _abandon_queued_acks(self) -> None:
        """The session ended: nobody awaits the acks still queued. Cancelling one leaves its
        batch's outcome as it is (`StreamSequencer.submit`); one that already failed (a failed
        commit fails every batch behind it) is marked seen, or asyncio would log each as an
        exception never retrieved, with a traceback."""
        while not self._pending.empty():
            item = self._pending.get_nowait()
            if not isinstance(item, asyncio.Future):
                continue
            if not item.done():
                item.cancel()
            elif not item.cancelled():
                item.exception()

    async def _stop_intake_on_end(self, intake: asyncio.Task[None]) -> None:
        error = await self._store.ended()
        # Only an intake waiting for the client's next message is cut; one busy decoding or
        # submitting notices the end itself before it reads another message.
        if self._waiting_for_message and not self._failed:
            if self._discard is None:
                intake.cancel()
            await self._fail(error)

    async def _discard_until_quiet(
        self, intake: asyncio.Task[None], discard: DiscardAfterFailure
    ) -> None:
        """Wait while the intake discards, until the client half-closes, goes quiet for
        `quiet_s` (a pipelining client does once its window of unacknowledged batches is
        full), or `s_max` passes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + discard.s_max
        while not intake.done():
            now = loop.time()
            quiet_until = self._last_received_s + discard.quiet_s
            if now >= deadline or now >= quiet_until:
                return
            await asyncio.wait({intake}, timeout=min(deadline, quiet_until) - now)
