"""The core's sessions, without a transport: order, fail-first, back-pressure, discarding after
a failure and ending with `server_draining` on shutdown (`server.append_session`,
`server.read_session`). The frontends' tests drive the same code over gRPC and HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from s2s.errors import S2Error, SeqNumMismatch
from s2s.records import ValidatedBatch
from server.access.tokens import OPEN_ACCESS, Principal
from server.append_session import (
    SESSION_INFLIGHT_BATCHES_MAX,
    DiscardAfterFailure,
    StreamBatch,
    append_session,
)
from server.read_session import read_session
from server.reader import ReadLimits, ReadStart
from server.scoped_store import ScopedStore
from server.sequencer import AppendAck
from server.streamstore import StreamStore
from tests.conftest import BASIN, MANUAL_JOBS, ManualClock, make_batch
from tests.crash.faults import FaultyStore
from tests.storage_mode import key_value_store

STREAM = "s"

Message = ValidatedBatch | None
"""What the tests' clients send: a batch, or None for a message that does not decode."""


def full_access(store: StreamStore) -> ScopedStore:
    """The store as a caller with every permission sees it (these tests are not about access)."""
    return ScopedStore(store, Principal(OPEN_ACCESS))


def decode(message: Message) -> StreamBatch:
    if message is None:
        raise S2Error("bad_frame", "does not decode")
    return StreamBatch(BASIN, STREAM, message)


class Client:
    """Sends the given messages, then stays open (sending nothing) until `close`."""

    def __init__(self, *messages: Message) -> None:
        self.queue: asyncio.Queue[Message | StopAsyncIteration] = asyncio.Queue()
        self.read = 0
        self.send(*messages)

    def send(self, *messages: Message) -> None:
        for message in messages:
            self.queue.put_nowait(message)

    def close(self) -> None:
        self.queue.put_nowait(StopAsyncIteration())

    async def messages(self) -> AsyncIterator[Message]:
        while not isinstance(message := await self.queue.get(), StopAsyncIteration):
            self.read += 1
            yield message


async def collect(acks: AsyncIterator[AppendAck]) -> tuple[list[int], S2Error | None]:
    starts: list[int] = []
    try:
        async for ack in acks:
            starts.append(ack.start.seq_num)
    except S2Error as error:
        return starts, error
    return starts, None


@pytest.fixture
async def stream_store(store: StreamStore) -> StreamStore:
    await store.create_stream(BASIN, STREAM)
    return store


async def test_acks_in_order_until_the_client_half_closes(stream_store: StreamStore) -> None:
    client = Client(*(make_batch(b"a", b"b") for _ in range(5)))
    client.close()
    acks = append_session(full_access(stream_store), client.messages(), decode)
    assert await collect(acks) == ([0, 2, 4, 6, 8], None)


async def test_first_failure_ends_the_session_after_the_acks_before_it(
    stream_store: StreamStore,
) -> None:
    client = Client(make_batch(b"a"), make_batch(b"b", match_seq_num=7), make_batch(b"c"))
    client.close()
    acks, error = await collect(
        append_session(full_access(stream_store), client.messages(), decode)
    )
    assert acks == [0]
    assert isinstance(error, SeqNumMismatch) and error.expected_seq_num == 1
    assert (await stream_store.check_tail(BASIN, STREAM)).seq_num == 1


async def test_a_message_that_does_not_decode_ends_the_session(stream_store: StreamStore) -> None:
    client = Client(make_batch(b"a"), None, make_batch(b"c"))
    acks, error = await collect(
        append_session(full_access(stream_store), client.messages(), decode)
    )
    assert acks == [0] and error is not None and error.code == "bad_frame"
    assert client.read == 2, "nothing is read after the failure"
    assert (await stream_store.check_tail(BASIN, STREAM)).seq_num == 1


async def test_acks_failed_behind_the_first_failure_are_not_logged_as_unretrieved(
    tmp_path: Path, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A failed commit fails every batch queued behind it at once. The session reports the
    first; the others, still in its queue, were each logged by asyncio as an exception never
    retrieved, with a traceback."""
    kv = FaultyStore(key_value_store(tmp_path))
    faulty_store = StreamStore(kv, clock, MANUAL_JOBS)
    await faulty_store.start()
    try:
        await faulty_store.create_basin(BASIN)
        await faulty_store.create_stream(BASIN, STREAM)
        gate = kv.hold_commit()
        kv.fail_commit()  # the held one: the first batch's
        client = Client(*(make_batch(b"x") for _ in range(5)))
        acks = append_session(full_access(faulty_store), client.messages(), decode)
        ending = asyncio.ensure_future(collect(acks))
        await asyncio.sleep(0.1)  # all five sequenced, the first commit held
        gate.release.set()
        acks_seen, error = await asyncio.wait_for(ending, 5)
        assert acks_seen == [] and error is not None and error.code == "storage"
    finally:
        await faulty_store.close()
    # The error's traceback reaches the session and its queue; the committer keeps the error.
    del acks, ending, error, faulty_store
    gc.collect()
    assert [r for r in caplog.records if "never retrieved" in r.getMessage()] == []


async def test_unacknowledged_batches_are_bounded(stream_store: StreamStore) -> None:
    client = Client(*(make_batch(b"x") for _ in range(3 * SESSION_INFLIGHT_BATCHES_MAX)))
    acks = append_session(full_access(stream_store), client.messages(), decode)
    async with contextlib.aclosing(acks):
        await anext(acks)
        await asyncio.sleep(0.2)  # the intake runs as far as it may
        # One acknowledged, the queue full, and one waiting for room in it.
        assert client.read <= 1 + SESSION_INFLIGHT_BATCHES_MAX + 1


async def test_after_a_failure_the_client_is_read_until_quiet_then_the_session_ends(
    stream_store: StreamStore,
) -> None:
    client = Client(make_batch(b"a"), None)
    acks = append_session(
        full_access(stream_store),
        client.messages(),
        decode,
        discard=DiscardAfterFailure(quiet_s=0.2, s_max=5.0),
    )
    ending = asyncio.ensure_future(collect(acks))
    await asyncio.sleep(0.1)
    client.send(make_batch(b"late"))  # read and discarded; the quiet period starts again
    await asyncio.sleep(0.1)
    assert not ending.done()
    acks_seen, error = await asyncio.wait_for(ending, 2)
    assert acks_seen == [0] and error is not None and error.code == "bad_frame"
    assert client.read == 3
    assert (await stream_store.check_tail(BASIN, STREAM)).seq_num == 1


async def test_draining_cuts_an_append_session_waiting_for_the_client(
    stream_store: StreamStore,
) -> None:
    client = Client(make_batch(b"a"), make_batch(b"b"))
    acks = append_session(full_access(stream_store), client.messages(), decode)
    ending = asyncio.ensure_future(collect(acks))
    await asyncio.sleep(0.1)  # both acknowledged; the session waits for the next message
    stream_store.drain()
    acks_seen, error = await asyncio.wait_for(ending, 2)
    assert acks_seen == [0, 1] and error is not None and error.code == "server_draining"
    client.send(make_batch(b"after"))
    await asyncio.sleep(0.05)
    assert client.read == 2, "nothing is read after the drain"


async def test_draining_cuts_a_read_session_waiting_at_the_tail(store: StreamStore) -> None:
    await store.create_stream(BASIN, "r")
    await store.append(BASIN, "r", make_batch(b"a"))
    session = read_session(full_access(store), BASIN, "r", ReadStart(seq_num=0), ReadLimits(), None)

    async def follow() -> tuple[int, str | None]:
        outputs = 0
        try:
            async for _ in session:
                outputs += 1
        except S2Error as error:
            task = asyncio.current_task()
            assert task is not None and task.cancelling() == 0, "the cut is taken back"
            return outputs, error.code
        return outputs, None

    following = asyncio.ensure_future(follow())
    await asyncio.sleep(0.1)  # the record, then the heartbeat that says it is live
    store.drain()
    assert await asyncio.wait_for(following, 2) == (2, "server_draining")


async def test_a_read_session_busy_when_draining_begins_ends_at_its_next_wait(
    store: StreamStore,
) -> None:
    await store.create_stream(BASIN, "r")
    await store.append(BASIN, "r", make_batch(b"a"))
    session = read_session(full_access(store), BASIN, "r", ReadStart(seq_num=0), ReadLimits(), None)
    async with contextlib.aclosing(session):
        first = await anext(session)
        assert first.records is not None and first.records.count == 1
        store.drain()
        await asyncio.sleep(0.05)  # "writing" the first output while the drain comes
        with pytest.raises(S2Error) as info:
            await anext(session)
        assert info.value.code == "server_draining"
