"""Data plane through the engine: append checks and limits, commands, timestamps, reads."""

from __future__ import annotations

import asyncio

import pytest

from s2s.config import StreamConfig
from s2s.errors import FencingTokenMismatch, ReadUnwritten, S2Error, SeqNumMismatch
from s2s.records import fence_record, trim_record, validate_append_input
from s2s.v1 import records_pb2 as pb
from server.reader import ReadLimits, ReadStart
from server.streamstore import StreamStore
from tests.conftest import BASIN, ManualClock, decode, make_batch


async def read_all(store: StreamStore, stream: str, **limits: object) -> list[pb.SequencedRecord]:
    out = await store.read(BASIN, stream, ReadStart(seq_num=0), ReadLimits(**limits))  # type: ignore[arg-type]
    return [] if out.records is None else decode(out.records.payload)


def invalid_input(message: pb.AppendInput) -> str:
    with pytest.raises(S2Error) as info:
        validate_append_input(message)
    assert info.value.code == "invalid"
    return info.value.message


# --- validation and limits -----------------------------------------------------------------


def test_batch_limits() -> None:
    assert "empty" in invalid_input(pb.AppendInput())
    many = pb.AppendInput(records=[pb.AppendRecord(body=b"") for _ in range(1001)])
    assert "1000" in invalid_input(many)
    ok = validate_append_input(pb.AppendInput(records=[pb.AppendRecord() for _ in range(1000)]))
    assert ok.count == 1000 and ok.metered_bytes == 8000
    exact = pb.AppendInput(records=[pb.AppendRecord(body=b"x" * (1024 * 1024 - 8))])
    assert validate_append_input(exact).metered_bytes == 1024 * 1024
    over = pb.AppendInput(records=[pb.AppendRecord(body=b"x" * (1024 * 1024 - 7))])
    assert "metered bytes" in invalid_input(over)
    split = pb.AppendInput(records=[pb.AppendRecord(body=b"x" * 600_000) for _ in range(2)])
    assert "limit" in invalid_input(split)


def test_metering_counts_headers() -> None:
    record = pb.AppendRecord(headers=[pb.Header(name=b"ab", value=b"cde")], body=b"xyz")
    assert validate_append_input(pb.AppendInput(records=[record])).metered_bytes == 8 + 2 + 5 + 3


def test_command_record_validation() -> None:
    fence = validate_append_input(pb.AppendInput(records=[fence_record("tok")]))
    assert fence.metered_bytes == 8 + 2 + 5 + 3
    assert validate_append_input(pb.AppendInput(records=[trim_record(5)])).metered_bytes == 22
    unknown = pb.AppendRecord(headers=[pb.Header(name=b"", value=b"boom")])
    assert "unknown command" in invalid_input(pb.AppendInput(records=[unknown]))
    mixed = pb.AppendRecord(headers=[pb.Header(name=b"", value=b"fence"), pb.Header(name=b"a")])
    assert "empty name" in invalid_input(pb.AppendInput(records=[mixed]))
    long_fence = fence_record("x" * 37)
    assert "36" in invalid_input(pb.AppendInput(records=[long_fence]))
    bad_trim = pb.AppendRecord(headers=[pb.Header(name=b"", value=b"trim")], body=b"123")
    assert "8 bytes" in invalid_input(pb.AppendInput(records=[bad_trim]))
    assert "fencing token" in invalid_input(
        pb.AppendInput(records=[pb.AppendRecord()], fencing_token="y" * 37)
    )


# --- append semantics ----------------------------------------------------------------------


async def test_match_seq_num(store: StreamStore) -> None:
    await store.create_stream(BASIN, "m")
    await store.append(BASIN, "m", make_batch(b"a", match_seq_num=0))
    with pytest.raises(SeqNumMismatch) as info:
        await store.append(BASIN, "m", make_batch(b"b", match_seq_num=0))
    assert info.value.expected_seq_num == 1 and info.value.body() == {"seq_num_mismatch": 1}
    ack = await store.append(BASIN, "m", make_batch(b"b", match_seq_num=1))
    assert ack.start.seq_num == 1
    assert [r.body for r in await read_all(store, "m")] == [b"a", b"b"]


async def test_fencing(store: StreamStore) -> None:
    await store.create_stream(BASIN, "f")
    # A never-fenced stream has token "": it matches, and no token is never checked.
    await store.append(BASIN, "f", make_batch(b"x", fencing_token=""))
    await store.append(BASIN, "f", make_batch(records=[fence_record("owner-1")]))
    with pytest.raises(FencingTokenMismatch) as info:
        await store.append(BASIN, "f", make_batch(b"y", fencing_token="intruder"))
    assert info.value.body() == {"fencing_token_mismatch": "owner-1"}
    await store.append(BASIN, "f", make_batch(b"z", fencing_token="owner-1"))
    await store.append(BASIN, "f", make_batch(b"unfenced"))
    # The batch holding a fence is checked against the old token.
    with pytest.raises(FencingTokenMismatch):
        await store.append(
            BASIN, "f", make_batch(records=[fence_record("new")], fencing_token="new")
        )
    await store.append(BASIN, "f", make_batch(records=[fence_record("")], fencing_token="owner-1"))
    await store.append(BASIN, "f", make_batch(b"cleared", fencing_token=""))
    # Fencing is checked before match_seq_num.
    with pytest.raises(FencingTokenMismatch):
        await store.append(BASIN, "f", make_batch(b"w", fencing_token="zz", match_seq_num=999))


async def test_failed_checks_change_nothing(store: StreamStore) -> None:
    await store.create_stream(BASIN, "nochange")
    await store.append(BASIN, "nochange", make_batch(b"a"))
    with pytest.raises(SeqNumMismatch):
        await store.append(BASIN, "nochange", make_batch(b"b", b"c", match_seq_num=7))
    assert (await store.check_tail(BASIN, "nochange")).seq_num == 1
    assert [r.body for r in await read_all(store, "nochange")] == [b"a"]


async def test_trim_command(store: StreamStore) -> None:
    await store.create_stream(BASIN, "t")
    await store.append(BASIN, "t", make_batch(*[b"%d" % i for i in range(5)]))
    await store.append(BASIN, "t", make_batch(records=[trim_record(3)]))
    records = await read_all(store, "t")
    assert [r.seq_num for r in records] == [3, 4, 5]
    assert records[-1].headers[0].value == b"trim"
    # A trim cannot reach past its own record, and trim points never move backwards.
    await store.append(BASIN, "t", make_batch(records=[trim_record(999_999)]))
    assert await read_all(store, "t") == []
    await store.append(BASIN, "t", make_batch(records=[trim_record(1)]))
    assert [r.seq_num for r in await read_all(store, "t")] == [7]
    assert (await store.check_tail(BASIN, "t")).seq_num == 8


@pytest.mark.parametrize(
    ("mode", "uncapped", "client", "expected"),
    [
        ("client-prefer", False, [None, 5], ["now", 5]),
        ("client-prefer", False, [10**14], ["now"]),  # future values are capped at arrival
        ("client-prefer", True, [10**14], [10**14]),
        ("arrival", False, [5, None], ["now", "now"]),
        ("client-require", False, [7, 3], [7, 7]),  # monotonic: raised to the running max
    ],
)
async def test_timestamping_modes(
    store: StreamStore,
    clock: ManualClock,
    mode: str,
    uncapped: bool,
    client: list[int | None],
    expected: list[object],
) -> None:
    config = StreamConfig(timestamping_mode=mode, timestamping_uncapped=uncapped)
    await store.create_stream(BASIN, "ts", config)
    bodies = [b"r%d" % i for i in range(len(client))]
    ack = await store.append(BASIN, "ts", make_batch(*bodies, timestamps=client))
    got = [r.timestamp for r in await read_all(store, "ts")]
    want = [clock.now if e == "now" else int(e) for e in expected]  # type: ignore[call-overload]
    # Monotonic across the batch: the arrival time floors later client values.
    for i in range(1, len(want)):
        want[i] = max(want[i], want[i - 1])
    assert got == want
    assert (ack.start.timestamp, ack.end.timestamp) == (got[0], got[-1])


async def test_client_require_rejects_missing_timestamp(store: StreamStore) -> None:
    await store.create_stream(BASIN, "req", StreamConfig(timestamping_mode="client-require"))
    with pytest.raises(S2Error) as info:
        await store.append(BASIN, "req", make_batch(b"a", b"b", timestamps=[1, None]))
    assert info.value.code == "invalid" and "required" in info.value.message
    assert (await store.check_tail(BASIN, "req")).seq_num == 0


async def test_timestamps_monotonic_across_batches(store: StreamStore, clock: ManualClock) -> None:
    await store.create_stream(BASIN, "mono", StreamConfig(timestamping_uncapped=True))
    await store.append(BASIN, "mono", make_batch(b"future", timestamps=[clock.now + 5000]))
    ack = await store.append(BASIN, "mono", make_batch(b"past", timestamps=[1]))
    assert ack.start.timestamp == clock.now + 5000


# --- read semantics ------------------------------------------------------------------------


async def fill(store: StreamStore, clock: ManualClock, stream: str, n: int) -> None:
    """n records, one per batch, timestamps 1000 ms apart."""
    await store.create_stream(BASIN, stream)
    for i in range(n):
        await store.append(BASIN, stream, make_batch(b"record-%d" % i))
        clock.advance(1000)


async def test_read_start_resolution(store: StreamStore, clock: ManualClock) -> None:
    start_ms = clock.now
    await fill(store, clock, "r", 10)
    out = await store.read(BASIN, "r", ReadStart(tail_offset=3), ReadLimits())
    assert out.records is not None and out.records.first_seq == 7
    out = await store.read(BASIN, "r", ReadStart(tail_offset=50), ReadLimits())
    assert out.records is not None and out.records.first_seq == 0
    out = await store.read(BASIN, "r", ReadStart(timestamp=start_ms + 4500), ReadLimits())
    assert out.records is not None and out.records.first_seq == 5
    out = await store.read(BASIN, "r", ReadStart(timestamp=start_ms + 4000), ReadLimits())
    assert out.records is not None and out.records.first_seq == 4


async def test_read_beyond_tail(store: StreamStore, clock: ManualClock) -> None:
    await fill(store, clock, "edge", 3)
    tail = await store.check_tail(BASIN, "edge")
    for start in (ReadStart(seq_num=3), ReadStart(seq_num=4), ReadStart(tail_offset=0)):
        with pytest.raises(ReadUnwritten) as info:
            await store.read(BASIN, "edge", start, ReadLimits())
        assert info.value.body() == {"tail": {"seq_num": 3, "timestamp": tail.timestamp}}
    # clamp moves a start beyond the tail to the tail, which is still 416 without wait
    with pytest.raises(ReadUnwritten):
        await store.read(BASIN, "edge", ReadStart(seq_num=10), ReadLimits(clamp=True))
    with pytest.raises(ReadUnwritten):
        await store.read(BASIN, "edge", ReadStart(timestamp=tail.timestamp + 1), ReadLimits())
    clamped_wait = ReadLimits(clamp=True, wait_secs=0.05)
    out = await store.read(BASIN, "edge", ReadStart(seq_num=10), clamped_wait)
    assert out.records is None
    # A timestamp start that resolves to the tail is an empty success.
    out = await store.read(BASIN, "edge", ReadStart(timestamp=tail.timestamp), ReadLimits())
    assert out.records is not None and out.records.first_seq == 2
    empty = "empty-stream"
    await store.create_stream(BASIN, empty)
    with pytest.raises(ReadUnwritten):
        await store.read(BASIN, empty, ReadStart(seq_num=0), ReadLimits())


async def test_read_argument_conflicts(store: StreamStore, clock: ManualClock) -> None:
    await fill(store, clock, "args", 1)
    with pytest.raises(S2Error) as info:
        await store.read(BASIN, "args", ReadStart(seq_num=0, tail_offset=1), ReadLimits())
    assert info.value.code == "invalid"
    with pytest.raises(S2Error) as info:
        await store.read(BASIN, "args", ReadStart(timestamp=50), ReadLimits(until=50))
    assert info.value.code == "invalid"


async def test_read_limits_never_split_a_record(store: StreamStore, clock: ManualClock) -> None:
    await store.create_stream(BASIN, "lim")
    await store.append(BASIN, "lim", make_batch(*[b"x" * 92 for _ in range(10)]))  # 100 metered
    assert len(await read_all(store, "lim", count=4)) == 4
    assert len(await read_all(store, "lim", bytes=250)) == 2
    assert len(await read_all(store, "lim", bytes=99)) == 0
    assert await read_all(store, "lim", count=0) == []
    out = await store.read(BASIN, "lim", ReadStart(seq_num=3), ReadLimits(count=2, bytes=1000))
    assert out.records is not None
    assert (out.records.first_seq, out.records.last_seq, out.records.metered_bytes) == (3, 4, 200)


async def test_read_until_is_exclusive(store: StreamStore, clock: ManualClock) -> None:
    start_ms = clock.now
    await fill(store, clock, "until", 5)
    got = await read_all(store, "until", until=start_ms + 3000)
    assert [r.seq_num for r in got] == [0, 1, 2]


async def test_unary_read_is_capped(store: StreamStore) -> None:
    await store.create_stream(BASIN, "cap")
    for _ in range(2):
        await store.append(BASIN, "cap", make_batch(*[b"" for _ in range(1000)]))
    assert len(await read_all(store, "cap")) == 1000
    assert len(await read_all(store, "cap", count=5000)) == 1000
    await store.append(BASIN, "cap", make_batch(b"x" * 600_000))
    await store.append(BASIN, "cap", make_batch(b"y" * 600_000))
    out = await store.read(BASIN, "cap", ReadStart(seq_num=2000), ReadLimits())
    assert out.records is not None and out.records.count == 1


async def test_unary_wait_returns_first_live_batch(store: StreamStore, clock: ManualClock) -> None:
    await fill(store, clock, "wait", 1)
    reader = asyncio.create_task(
        store.read(BASIN, "wait", ReadStart(seq_num=1), ReadLimits(wait_secs=5))
    )
    await asyncio.sleep(0.05)
    assert not reader.done()
    await store.append(BASIN, "wait", make_batch(b"late"))
    out = await asyncio.wait_for(reader, 5)
    assert out.records is not None and decode(out.records.payload)[0].body == b"late"
    assert out.tail is not None and out.tail.seq_num == 2
    empty = await store.read(BASIN, "wait", ReadStart(seq_num=2), ReadLimits(wait_secs=0.05))
    assert empty.records is None


async def test_session_catches_up_then_follows(store: StreamStore, clock: ManualClock) -> None:
    await fill(store, clock, "follow", 3)
    session = await store.read_session(BASIN, "follow", ReadStart(seq_num=1), ReadLimits())
    iterator = aiter(session)
    first = await anext(iterator)
    assert first.records is not None
    assert [r.seq_num for r in decode(first.records.payload)] == [1, 2]
    # It reaches the tail, so it carries it: the client knows it is caught up.
    assert first.tail is not None and first.tail.seq_num == 3
    heartbeat = await anext(iterator)
    assert heartbeat.records is None and heartbeat.tail is not None
    assert heartbeat.tail.seq_num == 3
    pending = asyncio.ensure_future(anext(iterator))
    await asyncio.sleep(0.02)
    assert not pending.done()
    await store.append(BASIN, "follow", make_batch(b"live"))
    live = await asyncio.wait_for(pending, 5)
    assert live.records is not None and live.tail is not None
    assert decode(live.records.payload)[0].seq_num == 3 and live.tail.seq_num == 4
    await session.aclose()


async def test_session_stops_at_limits(store: StreamStore, clock: ManualClock) -> None:
    await fill(store, clock, "bounded", 5)
    session = await store.read_session(BASIN, "bounded", ReadStart(seq_num=0), ReadLimits(count=3))
    batches = [b async for b in session]
    assert sum(b.records.count for b in batches if b.records) == 3
    session = await store.read_session(
        BASIN, "bounded", ReadStart(seq_num=0), ReadLimits(count=10, wait_secs=0.1)
    )
    batches = [b async for b in session]  # 5 records, a heartbeat, then wait expires
    assert sum(b.records.count for b in batches if b.records) == 5


async def test_session_heartbeats_while_idle(store: StreamStore, clock: ManualClock) -> None:
    await fill(store, clock, "idle", 1)
    sequencer = await store.sequencers.get(BASIN, "idle")
    session = store.reader.session(
        sequencer, ReadStart(seq_num=1), ReadLimits(wait_secs=0.35), heartbeat_secs=lambda: 0.1
    )
    outputs = [o async for o in session]
    assert len(outputs) >= 3 and all(o.records is None and o.tail for o in outputs)


async def test_session_from_tail_of_empty_stream_waits(store: StreamStore) -> None:
    await store.create_stream(BASIN, "fresh")
    session = await store.read_session(BASIN, "fresh", ReadStart(seq_num=0), ReadLimits())
    iterator = aiter(session)
    heartbeat = await anext(iterator)
    assert heartbeat.records is None and heartbeat.tail is not None
    await store.append(BASIN, "fresh", make_batch(b"first"))
    batch = await asyncio.wait_for(anext(iterator), 5)
    assert batch.records is not None and batch.records.first_seq == 0
    await session.aclose()


async def test_a_catch_up_batch_short_of_the_tail_carries_no_tail(
    store: StreamStore, clock: ManualClock
) -> None:
    await fill(store, clock, "partial", 3)
    session = await store.read_session(BASIN, "partial", ReadStart(seq_num=0), ReadLimits(count=2))
    batches = [output async for output in session]
    assert len(batches) == 1 and batches[0].tail is None
