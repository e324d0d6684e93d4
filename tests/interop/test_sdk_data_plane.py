"""Data plane through the official SDK: unary append and read (protobuf), conditions, reads at
the tail, auto-create, S2S append and read sessions, the producer, and compression."""

from __future__ import annotations

import asyncio

import pytest
from s2_sdk import (
    S2,
    AppendInput,
    BasinConfig,
    CommandRecord,
    Compression,
    FencingTokenMismatchError,
    ReadLimit,
    ReadUnwrittenError,
    Record,
    Retry,
    S2ServerError,
    SeqNum,
    SeqNumMismatchError,
    StreamConfig,
    TailOffset,
)

from tests.interop.conftest import sdk_client
from tests.server_process import ServerProcess


async def _stream(sdk: S2, basin_name: str, name: str = "events", **basin_config):
    await sdk.create_basin(basin_name, config=BasinConfig(**basin_config))
    basin = sdk.basin(basin_name)
    if not basin_config:
        await basin.create_stream(name)
    return basin.stream(name)


async def test_unary_append_and_read_round_trip(sdk: S2, basin_name: str) -> None:
    stream = await _stream(sdk, basin_name)
    records = [Record(body=b"a"), Record(body=b"\x00\xff", headers=[(b"k", b"v")], timestamp=5)]
    ack = await stream.append(AppendInput(records=records))
    assert (ack.start.seq_num, ack.end.seq_num, ack.tail.seq_num) == (0, 2, 2)

    batch = await stream.read(start=SeqNum(0))
    assert [(r.seq_num, r.body, r.headers) for r in batch.records] == [
        (0, b"a", []),
        (1, b"\x00\xff", [(b"k", b"v")]),
    ]
    assert (await stream.check_tail()).seq_num == 2
    limited = await stream.read(start=TailOffset(1), limit=ReadLimit(count=5))
    assert [r.seq_num for r in limited.records] == [1]


async def test_match_seq_num_failure_is_typed(sdk: S2, basin_name: str) -> None:
    stream = await _stream(sdk, basin_name)
    await stream.append(AppendInput(records=[Record(body=b"x")], match_seq_num=0))
    with pytest.raises(SeqNumMismatchError) as mismatch:
        await stream.append(AppendInput(records=[Record(body=b"y")], match_seq_num=0))
    assert mismatch.value.expected_seq_num == 1
    assert (await stream.check_tail()).seq_num == 1


async def test_fencing_failure_is_typed(sdk: S2, basin_name: str) -> None:
    stream = await _stream(sdk, basin_name)
    await stream.append(AppendInput(records=[CommandRecord.fence("writer-1")]))
    with pytest.raises(FencingTokenMismatchError) as mismatch:
        await stream.append(AppendInput(records=[Record(body=b"x")], fencing_token="writer-0"))
    assert mismatch.value.expected_fencing_token == "writer-1"
    ack = await stream.append(AppendInput(records=[Record(body=b"x")], fencing_token="writer-1"))
    assert ack.start.seq_num == 1


async def test_read_at_tail_is_416_with_tail(sdk: S2, basin_name: str) -> None:
    stream = await _stream(sdk, basin_name)
    await stream.append(AppendInput(records=[Record(body=b"x")]))
    with pytest.raises(ReadUnwrittenError) as unwritten:
        await stream.read(start=SeqNum(1))
    assert unwritten.value.tail.seq_num == 1
    with pytest.raises(ReadUnwrittenError):
        await stream.read(start=SeqNum(7), clamp_to_tail=True)
    waited = await stream.read(start=SeqNum(1), wait=1)
    assert waited.records == []


async def test_semantic_error_is_422(sdk: S2, basin_name: str) -> None:
    stream = await _stream(sdk, basin_name)
    bad_command = Record(body=b"", headers=[(b"", b"explode")])
    with pytest.raises(S2ServerError) as invalid:
        await stream.append(AppendInput(records=[bad_command]))
    assert invalid.value.status_code == 422 and invalid.value.code == "invalid"


async def test_append_auto_creates_stream_when_basin_allows(sdk: S2, basin_name: str) -> None:
    stream = await _stream(sdk, basin_name, "fresh", create_stream_on_append=True)
    ack = await stream.append(AppendInput(records=[Record(body=b"first")]))
    assert ack.end.seq_num == 1
    names = [s.name for s in (await sdk.basin(basin_name).list_streams()).items]
    assert names == ["fresh"]


async def test_append_to_missing_stream_is_404_without_auto_create(
    sdk: S2, basin_name: str
) -> None:
    await sdk.create_basin(basin_name)
    with pytest.raises(S2ServerError) as missing:
        await (
            sdk.basin(basin_name).stream("absent").append(AppendInput(records=[Record(body=b"x")]))
        )
    assert missing.value.status_code == 404 and missing.value.code == "stream_not_found"


async def test_append_session_acks_in_order(sdk: S2, basin_name: str) -> None:
    stream = await _stream(sdk, basin_name)
    async with stream.append_session() as session:
        tickets = [
            await session.submit(AppendInput(records=[Record(body=b"%d" % i)] * 3))
            for i in range(20)
        ]
        acks = [await ticket for ticket in tickets]
    assert [a.start.seq_num for a in acks] == list(range(0, 60, 3))
    assert all(a.end.seq_num - a.start.seq_num == 3 for a in acks)
    assert (await stream.check_tail()).seq_num == 60


async def test_append_session_condition_failure_is_typed(sdk: S2, basin_name: str) -> None:
    stream = await _stream(sdk, basin_name)
    await stream.append(AppendInput(records=[Record(body=b"x")]))
    with pytest.raises(SeqNumMismatchError) as mismatch:
        async with stream.append_session() as session:
            ticket = await session.submit(AppendInput(records=[Record(body=b"y")], match_seq_num=0))
            await ticket
    assert mismatch.value.expected_seq_num == 1
    assert (await stream.check_tail()).seq_num == 1


async def test_producer_batches_records(sdk: S2, basin_name: str) -> None:
    stream = await _stream(sdk, basin_name)
    async with stream.producer() as producer:
        tickets = [await producer.submit(Record(body=b"r%d" % i)) for i in range(250)]
        acks = [await ticket for ticket in tickets]
    assert [a.seq_num for a in acks] == list(range(250))
    batch = await stream.read(start=SeqNum(0))
    assert [r.body for r in batch.records] == [b"r%d" % i for i in range(250)]


async def test_read_session_follows_live_appends(sdk: S2, basin_name: str) -> None:
    stream = await _stream(sdk, basin_name)
    await stream.append(AppendInput(records=[Record(body=b"old")]))
    seen: list[bytes] = []

    async def follow() -> None:
        async for batch in stream.read_session(start=SeqNum(0)):
            seen.extend(r.body for r in batch.records)
            if len(seen) >= 3:
                return

    follower = asyncio.create_task(follow())
    await asyncio.sleep(0.3)  # the session is now idle at the tail
    await stream.append(AppendInput(records=[Record(body=b"new1"), Record(body=b"new2")]))
    await asyncio.wait_for(follower, 10)
    assert seen == [b"old", b"new1", b"new2"]


async def test_read_session_ends_at_count(sdk: S2, basin_name: str) -> None:
    stream = await _stream(sdk, basin_name)
    await stream.append(AppendInput(records=[Record(body=b"%d" % i) for i in range(10)]))
    bodies = [
        r.body
        async for batch in stream.read_session(start=SeqNum(2), limit=ReadLimit(count=3))
        for r in batch.records
    ]
    assert bodies == [b"2", b"3", b"4"]


async def test_read_session_beyond_tail_is_416(sdk: S2, basin_name: str) -> None:
    stream = await _stream(sdk, basin_name)
    with pytest.raises(ReadUnwrittenError) as unwritten:
        async for _ in stream.read_session(start=SeqNum(5)):
            pass
    assert unwritten.value.tail.seq_num == 0


@pytest.mark.parametrize("compression", [Compression.ZSTD, Compression.GZIP])
async def test_compressed_requests_and_frames(
    server: ServerProcess, basin_name: str, compression: Compression
) -> None:
    # Bodies above 1 KiB are what the SDK and the server actually compress.
    body = b"compressible " * 400
    async with sdk_client(server, compression) as sdk:
        stream = await _stream(sdk, basin_name)
        ack = await stream.append(AppendInput(records=[Record(body=body)]))
        async with stream.append_session() as session:
            session_ack = await (await session.submit(AppendInput(records=[Record(body=body)])))
        assert (ack.end.seq_num, session_ack.end.seq_num) == (1, 2)
        assert [r.body for r in (await stream.read(start=SeqNum(0))).records] == [body, body]
        read = [
            r.body
            async for batch in stream.read_session(start=SeqNum(0), limit=ReadLimit(count=2))
            for r in batch.records
        ]
        assert read == [body, body]


async def test_read_auto_creates_stream_when_basin_allows(sdk: S2, basin_name: str) -> None:
    stream = await _stream(sdk, basin_name, "lazy", create_stream_on_read=True)
    batch = await stream.read(start=SeqNum(0), wait=1)
    assert batch.records == []
    assert [s.name for s in (await sdk.basin(basin_name).list_streams()).items] == ["lazy"]


async def test_auto_create_uses_stream_config_header(sdk: S2, basin_name: str) -> None:
    stream = await _stream(sdk, basin_name, "configured", create_stream_on_append=True)
    created = AppendInput(
        records=[Record(body=b"x")], stream_config=StreamConfig(storage_class="standard")
    )
    await stream.append(created)
    config = await sdk.basin(basin_name).get_stream_config("configured")
    assert config.storage_class == "standard"


async def test_idle_read_session_outlives_sdk_silence_timeout(
    server: ServerProcess, basin_name: str
) -> None:
    # The SDK abandons a read session after 20 s without a frame; heartbeats (5-15 s apart)
    # must keep an idle follower alive past that. No retries, so a reconnect cannot hide it.
    async with sdk_client(server, retry=Retry(max_attempts=1)) as sdk:
        stream = await _stream(sdk, basin_name)
        received: list[bytes] = []

        async def follow() -> None:
            async for batch in stream.read_session(start=SeqNum(0)):
                received.extend(r.body for r in batch.records)
                if received:
                    return

        follower = asyncio.create_task(follow())
        await asyncio.sleep(21)
        assert not follower.done()
        await stream.append(AppendInput(records=[Record(body=b"late")]))
        await asyncio.wait_for(follower, 10)
        assert received == [b"late"]


async def test_a_connection_outlives_a_thousand_requests(
    server: ServerProcess, basin_name: str
) -> None:
    """Hypercorn closes an HTTP/2 connection after 1000 requests by default; the SDK's request
    in flight at that moment then stalled for 5 s. Every append here must stay fast, and land
    once."""
    async with sdk_client(server) as client:
        stream = await _stream(client, basin_name)
        record = AppendInput(records=[Record(body=b"r")])
        slowest = 0.0

        async def worker() -> None:
            nonlocal slowest
            for _ in range(300):
                began = asyncio.get_running_loop().time()
                await stream.append(record)
                slowest = max(slowest, asyncio.get_running_loop().time() - began)

        await asyncio.gather(*(worker() for _ in range(4)))
        assert slowest < 2.0
        assert (await stream.check_tail()).seq_num == 1200


async def test_a_catch_up_read_session_reports_caught_up(sdk: S2, basin_name: str) -> None:
    """The batch that reaches the tail carries it, so the SDK knows it is caught up without
    waiting for a record that may never come."""
    stream = await _stream(sdk, basin_name)
    await stream.append(AppendInput(records=[Record(body=b"a"), Record(body=b"b")]))
    seen: list[bytes] = []

    async def until_caught_up() -> None:
        async with stream.read_session(start=TailOffset(2)) as session:
            while not session.is_caught_up():
                batch = await anext(session)
                seen.extend(r.body for r in batch.records)

    await asyncio.wait_for(until_caught_up(), timeout=10)
    assert seen == [b"a", b"b"]


async def test_a_read_session_with_wait_0_ends_once_caught_up(sdk: S2, basin_name: str) -> None:
    stream = await _stream(sdk, basin_name)
    await stream.append(AppendInput(records=[Record(body=b"a")]))

    async def read_all() -> list[bytes]:
        return [
            r.body async for b in stream.read_session(start=SeqNum(0), wait=0) for r in b.records
        ]

    assert await asyncio.wait_for(read_all(), timeout=10) == [b"a"]


async def test_a_live_reader_receives_a_batch_that_trims_itself(sdk: S2, basin_name: str) -> None:
    """S2 trims eventually: a reader already following receives every batch appended after it
    caught up, the records a trim in the same batch trims and the commands included."""
    stream = await _stream(sdk, basin_name)
    await stream.append(AppendInput(records=[Record(body=b"old")]))
    seen: list[tuple[int, bool]] = []

    async def follow() -> None:
        async with stream.read_session(start=SeqNum(0)) as session:
            async for batch in session:
                seen.extend((r.seq_num, r.is_command_record()) for r in batch.records)
                if len(seen) >= 5:
                    return

    follower = asyncio.create_task(follow())
    await asyncio.sleep(0.5)  # caught up, following at seq 1
    records = [
        Record(body=b"x"),
        Record(body=b"y"),
        CommandRecord.trim(5),
        CommandRecord.fence("f"),
    ]
    await stream.append(AppendInput(records=records))
    await asyncio.wait_for(follower, timeout=10)
    assert seen == [(0, False), (1, False), (2, False), (3, True), (4, True)]
    # A new reader starts at the trim point.
    batch = await stream.read(start=SeqNum(0))
    assert [r.seq_num for r in batch.records] == [4]
