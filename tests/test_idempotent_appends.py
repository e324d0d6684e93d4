"""Idempotent appends through the engine (docs/adr/0016): the `s2s-producer` header's grammar
and stripping, and the sequencer's verdicts (next batch, retry within the window, too old, out
of order), retries whose conditions no longer hold, retries of batches still in flight, after
a reopening, after a failed commit, producers forgotten from memory, and the jobs' expiry and
deletion of producer rows. Each runs on LMDB and on PostgreSQL (`store` fixture)."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import pytest

from s2s.errors import S2Error, SeqNumMismatch
from s2s.records import (
    PRODUCER_HEADER,
    PRODUCER_WINDOW_BATCHES,
    ProducerBatch,
    ValidatedBatch,
    fence_record,
    validate_append_input,
)
from s2s.v1 import records_pb2 as pb
from server.jobs import JobSettings
from server.producers import ProducerCache, ProducerState
from server.reader import ReadLimits, ReadStart
from server.sequencer import AppendAck
from server.storage.kv import Put, Table
from server.storage.layout import (
    CorruptProducerRow,
    ProducerRow,
    prefix_end,
    producer_key,
    producer_key_prefix,
)
from server.streamstore import StreamStore
from tests.conftest import BASIN, MANUAL_JOBS, ManualClock, decode, open_store
from tests.crash.faults import FaultyStore
from tests.storage_mode import key_value_store

STREAM = "idem"


def producer_input(
    producer: str | None,
    seq: int,
    *bodies: bytes,
    match_seq_num: int | None = None,
    fencing_token: str | None = None,
    first: pb.AppendRecord | None = None,
) -> pb.AppendInput:
    """An `AppendInput` of `bodies` (or of `first` and then `bodies`) whose first record
    carries the producer header, if `producer` is given."""
    records = ([] if first is None else [first]) + [pb.AppendRecord(body=b) for b in bodies]
    if producer is not None:
        records[0].headers.add(name=PRODUCER_HEADER, value=f"{producer} {seq}".encode())
    message = pb.AppendInput(records=records)
    if match_seq_num is not None:
        message.match_seq_num = match_seq_num
    if fencing_token is not None:
        message.fencing_token = fencing_token
    return message


def idempotent(producer: str, seq: int, *bodies: bytes, **conditions: object) -> ValidatedBatch:
    return validate_append_input(producer_input(producer, seq, *bodies, **conditions))  # type: ignore[arg-type]


async def bodies(store: StreamStore, stream: str = STREAM) -> list[bytes]:
    output = await store.read(BASIN, stream, ReadStart(seq_num=0), ReadLimits())
    return [] if output.records is None else [r.body for r in decode(output.records.payload)]


def positions(ack: AppendAck) -> tuple[int, int, int, int]:
    return (ack.start.seq_num, ack.start.timestamp, ack.end.seq_num, ack.end.timestamp)


def invalid(message: pb.AppendInput) -> str:
    with pytest.raises(S2Error) as info:
        validate_append_input(message)
    assert info.value.code == "invalid"
    return info.value.message


# --- the header --------------------------------------------------------------------------------


def test_the_header_is_parsed_and_taken_off_the_record() -> None:
    first = pb.AppendRecord(body=b"a", headers=[pb.Header(name=b"k", value=b"v")])
    batch = validate_append_input(producer_input("p-1", 7, b"b", first=first))
    assert batch.producer == ProducerBatch("p-1", 7)
    assert batch.headed == {0: [(b"k", b"v")]}, "the other headers stay, in their order"
    # Metered as stored: without the producer header (8 + 2 + 2 + 1, then 8 + 1).
    assert batch.metered_sizes == [13, 9] and batch.metered_bytes == 22
    alone = idempotent("p-1", 0, b"a")
    assert alone.headed == {} and alone.metered_bytes == 9


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"p",
        b"p 1 2",
        b" 1",
        b"p  1",
        b"p 01",
        b"p -1",
        b"p 18446744073709551616",
        b"p\x80 1",
        b"has space 1",
        b"x" * 65 + b" 1",
        b"p 1\n",
    ],
)
def test_a_header_value_outside_the_grammar_is_invalid(value: bytes) -> None:
    record = pb.AppendRecord(headers=[pb.Header(name=PRODUCER_HEADER, value=value)])
    assert "s2s-producer header must be" in invalid(pb.AppendInput(records=[record]))


def test_the_grammar_s_bounds_are_accepted() -> None:
    longest = "x" * 64
    assert idempotent(longest, 2**64 - 1, b"a").producer == ProducerBatch(longest, 2**64 - 1)
    assert idempotent("!~", 0, b"a").producer == ProducerBatch("!~", 0)


def test_the_header_goes_on_the_first_record_only_and_once() -> None:
    second = producer_input(None, 0, b"a", b"b")
    second.records[1].headers.add(name=PRODUCER_HEADER, value=b"p 0")
    assert "first record only" in invalid(second)
    twice = producer_input("p", 0, b"a")
    twice.records[0].headers.add(name=PRODUCER_HEADER, value=b"p 1")
    assert "more than one" in invalid(twice)


def test_a_command_record_can_carry_the_header() -> None:
    batch = validate_append_input(producer_input("p", 3, first=fence_record("token")))
    assert batch.producer == ProducerBatch("p", 3)
    assert [type(c).__name__ for c in batch.commands] == ["Fence"]
    assert batch.headed == {0: [(b"", b"fence")]}


@pytest.mark.parametrize(
    "dress",
    ["header only", "timestamp too", "another record headed", "another record stamped"],
)
def test_the_size_shortcut_reads_what_the_full_pass_reads(dress: str) -> None:
    """Validation trusts the encoded size to tell that only the first record has headers or a
    timestamp; wherever the others have some too, it must look at every record."""
    message = producer_input("p", 1, *(b"%d" % i for i in range(50)), match_seq_num=3)
    if dress == "timestamp too":
        message.records[0].timestamp = 99
    elif dress == "another record headed":
        message.records[30].headers.add(name=b"k", value=b"v")
    elif dress == "another record stamped":
        message.records[49].timestamp = 5
    encoded = message.SerializeToString()
    trusting = validate_append_input(pb.AppendInput.FromString(encoded), len(encoded))
    looking = validate_append_input(pb.AppendInput.FromString(encoded))
    assert trusting.producer == looking.producer == ProducerBatch("p", 1)
    assert trusting.headed == looking.headed
    assert trusting.has_client_timestamps == looking.has_client_timestamps
    assert trusting.metered_sizes == looking.metered_sizes


# --- the sequencer's verdicts ------------------------------------------------------------------


async def test_a_retry_gets_the_original_ack_and_writes_nothing(
    store: StreamStore, clock: ManualClock
) -> None:
    await store.create_stream(BASIN, STREAM)
    first = await store.append(BASIN, STREAM, idempotent("p", 0, b"a", b"b"))
    clock.advance(10)
    second = await store.append(BASIN, STREAM, idempotent("p", 1, b"c"))
    clock.advance(10)
    retried = await store.append(BASIN, STREAM, idempotent("p", 0, b"a", b"b"))
    assert positions(retried) == positions(first)
    assert retried.tail == second.end, "the tail as it is now"
    assert await bodies(store) == [b"a", b"b", b"c"]
    assert (await store.check_tail(BASIN, STREAM)).seq_num == 3
    output = await store.read(BASIN, STREAM, ReadStart(seq_num=0), ReadLimits())
    assert output.records is not None
    assert all(not r.headers for r in decode(output.records.payload)), "the header is not stored"
    assert output.records.metered_bytes == 3 * 9


async def test_a_retry_of_a_batch_in_flight_waits_for_its_ack(store: StreamStore) -> None:
    await store.create_stream(BASIN, STREAM)
    pending = [await store.submit(BASIN, STREAM, idempotent("p", 0, b"a")) for _ in range(3)]
    acks = [await ack for ack in pending]
    assert len({positions(ack) for ack in acks}) == 1
    assert await bodies(store) == [b"a"]


async def test_the_window_holds_the_last_batches_and_older_ones_are_refused(
    store: StreamStore,
) -> None:
    await store.create_stream(BASIN, STREAM)
    count = PRODUCER_WINDOW_BATCHES + 1
    acks = [await store.append(BASIN, STREAM, idempotent("p", n, b"%d" % n)) for n in range(count)]
    for n in range(1, count):  # the last PRODUCER_WINDOW_BATCHES
        retried = await store.append(BASIN, STREAM, idempotent("p", n, b"%d" % n))
        assert positions(retried) == positions(acks[n])
    with pytest.raises(S2Error) as too_old:
        await store.append(BASIN, STREAM, idempotent("p", 0, b"0"))
    assert too_old.value.code == "resource_already_exists"
    assert "no longer kept" in too_old.value.message
    assert len(await bodies(store)) == count


async def test_out_of_order_batches_are_refused_and_change_nothing(store: StreamStore) -> None:
    await store.create_stream(BASIN, STREAM)
    await store.append(BASIN, STREAM, idempotent("p", 5, b"first seen at 5"))
    for seq, words in ((7, "the next is 6"), (4, "its first batch to this stream is 5")):
        with pytest.raises(S2Error) as refused:
            await store.append(BASIN, STREAM, idempotent("p", seq, b"x"))
        assert refused.value.code == "invalid" and words in refused.value.message
    ack = await store.append(BASIN, STREAM, idempotent("p", 6, b"sixth"))
    assert ack.start.seq_num == 1
    assert await bodies(store) == [b"first seen at 5", b"sixth"]


async def test_a_retry_gets_its_ack_though_its_match_seq_num_no_longer_holds(
    store: StreamStore,
) -> None:
    await store.create_stream(BASIN, STREAM)
    first = await store.append(BASIN, STREAM, idempotent("p", 0, b"a", match_seq_num=0))
    await store.append(BASIN, STREAM, idempotent("q", 0, b"other writer"))
    retried = await store.append(BASIN, STREAM, idempotent("p", 0, b"a", match_seq_num=0))
    assert positions(retried) == positions(first)
    # A new batch is still held to its condition.
    with pytest.raises(SeqNumMismatch):
        await store.append(BASIN, STREAM, idempotent("p", 1, b"b", match_seq_num=1))


async def test_a_retry_gets_its_ack_though_the_stream_was_fenced_since(
    store: StreamStore,
) -> None:
    await store.create_stream(BASIN, STREAM)
    first = await store.append(BASIN, STREAM, idempotent("p", 0, b"a", fencing_token=""))
    await store.append(
        BASIN, STREAM, validate_append_input(producer_input(None, 0, first=fence_record("new")))
    )
    retried = await store.append(BASIN, STREAM, idempotent("p", 0, b"a", fencing_token=""))
    assert positions(retried) == positions(first)
    assert await bodies(store) == [b"a", b"new"]


async def test_a_refused_batch_does_not_use_up_its_number(store: StreamStore) -> None:
    await store.create_stream(BASIN, STREAM)
    await store.append(BASIN, STREAM, idempotent("q", 0, b"other"))
    with pytest.raises(SeqNumMismatch):
        await store.append(BASIN, STREAM, idempotent("p", 0, b"a", match_seq_num=0))
    ack = await store.append(BASIN, STREAM, idempotent("p", 0, b"a", match_seq_num=1))
    assert ack.start.seq_num == 1
    assert (await store.append(BASIN, STREAM, idempotent("p", 1, b"b"))).start.seq_num == 2


async def test_a_producer_s_batches_are_numbered_per_stream(store: StreamStore) -> None:
    await store.create_stream(BASIN, STREAM)
    await store.create_stream(BASIN, "other")
    on_one = await store.append(BASIN, STREAM, idempotent("p", 0, b"one"))
    on_other = await store.append(BASIN, "other", idempotent("p", 0, b"other"))
    assert positions(await store.append(BASIN, STREAM, idempotent("p", 0, b"one"))) == positions(
        on_one
    )
    assert on_other.start.seq_num == 0 and await bodies(store, "other") == [b"other"]


async def test_a_batch_without_the_header_is_never_a_retry(store: StreamStore) -> None:
    await store.create_stream(BASIN, STREAM)
    await store.append(BASIN, STREAM, idempotent("p", 0, b"a"))
    await store.append(BASIN, STREAM, validate_append_input(producer_input(None, 0, b"a")))
    assert await bodies(store) == [b"a", b"a"]


# --- durability and memory ------------------------------------------------------------------


async def test_a_retry_after_a_reopening_gets_the_original_ack(
    tmp_path: Path, clock: ManualClock, storage: str
) -> None:
    async with open_store(tmp_path, clock, storage=storage) as store:
        await store.create_stream(BASIN, STREAM)
        first = await store.append(BASIN, STREAM, idempotent("p", 0, b"a"))
        await store.append(BASIN, STREAM, idempotent("p", 1, b"b"))
    reopened = await StreamStore.open(str(tmp_path), clock, MANUAL_JOBS, storage=storage)
    try:
        assert len(reopened.sequencers.producers) == 0
        retried = await reopened.append(BASIN, STREAM, idempotent("p", 0, b"a"))
        assert positions(retried) == positions(first)
        assert (await reopened.append(BASIN, STREAM, idempotent("p", 2, b"c"))).start.seq_num == 2
        assert await bodies(reopened) == [b"a", b"b", b"c"]
    finally:
        await reopened.close()


async def test_producers_dropped_from_memory_are_read_back(store: StreamStore) -> None:
    store.sequencers.producers = ProducerCache(states_max=2)  # before any sequencer exists
    await store.create_stream(BASIN, STREAM)
    firsts = [
        await store.append(BASIN, STREAM, idempotent(f"p{n}", 0, b"%d" % n)) for n in range(6)
    ]
    assert len(store.sequencers.producers) == 2
    for n, first in enumerate(firsts):
        assert positions(await store.append(BASIN, STREAM, idempotent(f"p{n}", 0, b"x"))) == (
            positions(first)
        )
    assert len(await bodies(store)) == 6


async def test_a_batch_whose_commit_failed_is_written_when_sent_again(
    tmp_path: Path, clock: ManualClock
) -> None:
    """A failed commit wrote neither the batch nor its producer's row: sending it again is
    not a retry of a written batch, and the batches queued behind it fail too."""
    kv = FaultyStore(key_value_store(tmp_path))
    store = StreamStore(kv, clock, MANUAL_JOBS)
    await store.start()
    try:
        await store.create_basin(BASIN)
        await store.create_stream(BASIN, STREAM)
        await store.append(BASIN, STREAM, idempotent("p", 0, b"a"))
        gate = kv.hold_commit()
        kv.fail_commit()
        failing = await store.submit(BASIN, STREAM, idempotent("p", 1, b"b"))
        await asyncio.to_thread(gate.entered.wait)
        behind = await store.submit(BASIN, STREAM, idempotent("p", 2, b"c"))
        gate.release.set()
        for ack in (failing, behind):
            with pytest.raises(S2Error) as info:
                await ack
            assert info.value.code == "storage"
        again = await store.append(BASIN, STREAM, idempotent("p", 1, b"b"))
        assert again.start.seq_num == 1
        assert (await store.append(BASIN, STREAM, idempotent("p", 2, b"c"))).start.seq_num == 2
        assert await bodies(store) == [b"a", b"b", b"c"]
    finally:
        await store.close()


# --- the jobs ----------------------------------------------------------------------------------


def producer_rows(store: StreamStore, sid: int) -> list[bytes]:
    prefix = producer_key_prefix(sid)
    return [key for key, _ in store.kv.scan(Table.PRODUCERS, prefix, prefix_end(prefix), 100)]


async def test_rows_of_idle_producers_expire(
    tmp_path: Path, clock: ManualClock, storage: str
) -> None:
    hour_ms = 3600 * 1000
    jobs = JobSettings(
        interval_s=3600, retention_interval_s=0, reclaim_interval_s=0, producer_expiry_s=3600
    )
    async with open_store(tmp_path, clock, jobs, storage) as store:
        record = (await store.create_stream(BASIN, STREAM)).record
        await store.append(BASIN, STREAM, idempotent("idle", 0, b"a"))
        clock.advance(hour_ms // 2)
        await store.append(BASIN, STREAM, idempotent("busy", 0, b"b"))
        clock.advance(hour_ms // 2 + 1)
        await store.jobs.run_once()
        assert producer_rows(store, record.sid) == [producer_key(record.sid, "busy")]
        # Forgotten: its next batch starts it afresh, whatever its number; the busy one's
        # retry is still recognised.
        await store.append(BASIN, STREAM, idempotent("idle", 0, b"a again"))
        await store.append(BASIN, STREAM, idempotent("busy", 0, b"b"))
        assert await bodies(store) == [b"a", b"b", b"a again"]


async def test_a_deleted_stream_s_producer_rows_go_with_it(store: StreamStore) -> None:
    record = (await store.create_stream(BASIN, STREAM)).record
    for n in range(3):
        await store.append(BASIN, STREAM, idempotent(f"p{n}", 0, b"x"))
    assert len(producer_rows(store, record.sid)) == 3
    await store.delete_stream(BASIN, STREAM)
    await store.jobs.run_once()
    assert producer_rows(store, record.sid) == []
    assert store.catalog.stored_tail(record.sid) is None


async def test_the_cache_keeps_busy_states_and_the_one_just_kept() -> None:
    cache: ProducerCache[int] = ProducerCache(states_max=2)
    busy = [ProducerState[int](None, epoch=1) for _ in range(2)]
    for n, state in enumerate(busy):
        state.inflight[0] = asyncio.get_running_loop().create_future()
        cache.put(1, f"busy{n}", state)
    cache.put(1, "new", ProducerState(None, epoch=1))
    assert cache.get(1, "new", 1) is not None, "kept, though over the bound"
    assert all(cache.get(1, f"busy{n}", 1) is busy[n] for n in range(2))
    cache.put(1, "newer", ProducerState(None, epoch=1))
    assert cache.get(1, "new", 1) is None and len(cache) == 3
    assert cache.get(1, "newer", 2) is None, "a state of another epoch is not this one's"


async def test_a_damaged_row_fails_its_producer_until_the_jobs_delete_it(
    store: StreamStore,
) -> None:
    record = (await store.create_stream(BASIN, STREAM)).record
    key = producer_key(record.sid, "damaged")
    # Version 1, but no acks and a last write far in the future: not a row this version writes.
    damaged = struct.pack("<BBHQQQ", 1, 0, 0, 2**63, 0, 0)
    await store.committer.commit([Put(Table.PRODUCERS, key, damaged)])
    with pytest.raises(S2Error) as refused:
        await store.append(BASIN, STREAM, idempotent("damaged", 0, b"a"))
    assert refused.value.code == "storage" and "damaged" in refused.value.message
    await store.append(BASIN, STREAM, idempotent("other", 0, b"b"))  # others are unaffected
    await store.jobs.run_once()
    assert producer_rows(store, record.sid) == [producer_key(record.sid, "other")]
    assert (await store.append(BASIN, STREAM, idempotent("damaged", 0, b"a"))).start.seq_num == 1


def test_a_producer_row_round_trips_and_keeps_the_last_acks() -> None:
    row = ProducerRow.first(5, (0, 100), (2, 101), 1_000)
    for seq in range(6, 30):
        start = (2 * (seq - 5), 100 + seq)
        row = row.then(seq, start, (start[0] + 2, start[1] + 1), 1_000 + seq)
    assert (row.first_batch_seq, row.last_batch_seq, row.acks_kept) == (5, 29, 16)
    assert len(row.encoded) == 28 + 16 * 32 and row.last_write_ms == 1_029
    decoded = ProducerRow.decode(row.encoded)
    assert decoded == row
    assert decoded.ack_of(29) == ((48, 129), (50, 130))
    assert decoded.ack_of(14) == ((18, 114), (20, 115))
    assert decoded.ack_of(13) is None and decoded.ack_of(30) is None
    for damaged in (
        row.encoded[:-1],
        b"\x02" + row.encoded[1:],
        row.encoded[:1] + b"\x11" + row.encoded[2:],
        row.encoded[:1] + b"\x00" + row.encoded[2:],
        b"",
    ):
        with pytest.raises(CorruptProducerRow):
            ProducerRow.decode(damaged)
