"""Background jobs: trim and retention delete data and free its space; delete-on-empty."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from s2s.config import StreamConfig
from s2s.errors import S2Error
from s2s.records import trim_record
from server.jobs import JobSettings
from server.reader import ReadLimits, ReadStart
from server.storage.kv import LmdbStore, Table
from server.storage.layout import batch_key
from server.streamstore import StreamStore
from tests.conftest import BASIN, MANUAL_JOBS, ManualClock, decode, make_batch, open_store

BODY = b"z" * 1000


def stored_batches(store: StreamStore, sid: int) -> int:
    return len(store.kv.scan(Table.BATCHES, batch_key(sid, 0), batch_key(sid + 1, 0), 10_000))


async def test_trimmed_batches_are_deleted_and_space_reused(store: StreamStore) -> None:
    """LMDB reuses freed pages from the next commit on; PostgreSQL once the jobs' `reclaim`
    (VACUUM) ran, without waiting for autovacuum."""
    record = (await store.create_stream(BASIN, "churn", StreamConfig(retention="infinite"))).record
    big = [BODY] * 500
    for _ in range(20):
        await store.append(BASIN, "churn", make_batch(*big))
    size_full = store.kv.size_bytes()
    for round_ in range(5):
        tail = await store.check_tail(BASIN, "churn")
        await store.append(BASIN, "churn", make_batch(records=[trim_record(tail.seq_num)]))
        await store.jobs.run_once()
        assert stored_batches(store, record.sid) <= 1
        for _ in range(20):
            await store.append(BASIN, "churn", make_batch(*big))
        # Each round rewrites as much as was there before; freed pages must absorb it.
        assert store.kv.size_bytes() < size_full * 1.5, f"file grew in round {round_}"


async def test_retention_by_age_expires_old_batches(store: StreamStore, clock: ManualClock) -> None:
    await store.create_stream(BASIN, "aging", StreamConfig(retention=60))
    await store.append(BASIN, "aging", make_batch(b"old-1", b"old-2"))
    clock.advance(30_000)
    await store.append(BASIN, "aging", make_batch(b"newer"))
    clock.advance(31_000)
    await store.jobs.run_once()
    out = await store.read(BASIN, "aging", ReadStart(seq_num=0), ReadLimits())
    assert out.records is not None
    assert [(r.seq_num, r.body) for r in decode(out.records.payload)] == [(2, b"newer")]
    # Timestamp lookups skip what expired too.
    out = await store.read(BASIN, "aging", ReadStart(timestamp=0), ReadLimits())
    assert out.records is not None and out.records.first_seq == 2
    assert (await store.check_tail(BASIN, "aging")).seq_num == 3


async def test_a_sweep_reads_no_stream_whose_front_is_not_due(
    store: StreamStore, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The jobs remember each stream's oldest batch: a sweep reads a stream again only once
    that batch is due (by age or by a trim), and then deletes what is due as before."""
    streams = [f"kept-{i}" for i in range(20)]
    for name in streams:
        await store.create_stream(BASIN, name, StreamConfig(retention=60))
        await store.append(BASIN, name, make_batch(b"first"))
    clock.advance(10_000)
    for name in streams:
        await store.append(BASIN, name, make_batch(b"second"))
    reads: list[bytes] = []
    scan_map = store.kv.scan_map

    def counted(table: Table, start: bytes, *args: Any) -> Any:
        if table is Table.BATCHES:
            reads.append(start)
        return scan_map(table, start, *args)

    monkeypatch.setattr(store.kv, "scan_map", counted)
    await store.jobs.run_once()
    assert len(reads) == len(streams)  # each front read once
    reads.clear()
    clock.advance(30_000)
    await store.jobs.run_once()
    assert reads == []  # nothing due: nothing read
    await store.append(BASIN, "kept-3", make_batch(records=[trim_record(1)]))
    await store.jobs.run_once()
    assert reads == [batch_key(store.catalog.require_stream(BASIN, "kept-3").sid, 0)] * 2
    clock.advance(25_000)  # the first batches (written 65 s ago) are due, not the second ones
    await store.jobs.run_once()
    for name in streams:
        out = await store.read(BASIN, name, ReadStart(seq_num=0), ReadLimits())
        assert out.records is not None
        assert next(r.body for r in decode(out.records.payload)) == b"second", name


async def test_infinite_retention_keeps_everything(store: StreamStore, clock: ManualClock) -> None:
    await store.create_stream(BASIN, "forever", StreamConfig(retention="infinite"))
    await store.append(BASIN, "forever", make_batch(b"a"))
    clock.advance(10 * 365 * 24 * 3600 * 1000)
    await store.jobs.run_once()
    out = await store.read(BASIN, "forever", ReadStart(seq_num=0), ReadLimits())
    assert out.records is not None and out.records.count == 1


async def test_delete_on_empty(store: StreamStore, clock: ManualClock) -> None:
    config = StreamConfig(retention=10, delete_on_empty_min_age_secs=60)
    await store.create_stream(BASIN, "ephemeral", config)
    await store.append(BASIN, "ephemeral", make_batch(b"x"))
    clock.advance(20_000)
    await store.jobs.run_once()  # records expired, but the last write is too recent
    assert (await store.check_tail(BASIN, "ephemeral")).seq_num == 1
    clock.advance(60_000)
    await store.jobs.run_once()  # now empty and idle long enough: marked deleting
    await store.jobs.run_once()  # and removed
    assert "ephemeral" not in {s.name for s in store.list_streams(BASIN)[0]}


async def test_delete_on_empty_spares_streams_with_records(
    store: StreamStore, clock: ManualClock
) -> None:
    config = StreamConfig(retention="infinite", delete_on_empty_min_age_secs=1)
    await store.create_stream(BASIN, "keeper", config)
    await store.append(BASIN, "keeper", make_batch(b"x"))
    clock.advance(3_600_000)
    await store.jobs.run_once()
    await store.jobs.run_once()
    assert (await store.check_tail(BASIN, "keeper")).seq_num == 1


async def test_stream_deletion_frees_data(store: StreamStore) -> None:
    record = (await store.create_stream(BASIN, "bulky")).record
    for _ in range(100):
        await store.append(BASIN, "bulky", make_batch(b"payload"))
    await store.delete_stream(BASIN, "bulky")
    for _ in range(3):
        await store.jobs.run_once()
    assert stored_batches(store, record.sid) == 0


SMALL_TURNS = JobSettings(
    interval_s=MANUAL_JOBS.interval_s,
    retention_interval_s=MANUAL_JOBS.retention_interval_s,
    batches_per_commit=4,
    commits_per_stream_max=2,
)
"""A stream's turn deletes at most 8 batches: the backlogs below are many turns long."""


@pytest.fixture
async def small_turns(tmp_path: object, clock: ManualClock) -> AsyncIterator[StreamStore]:
    async with open_store(tmp_path, clock, SMALL_TURNS) as opened:
        yield opened


async def test_one_run_deletes_every_due_batch_however_many(
    small_turns: StreamStore, clock: ManualClock
) -> None:
    """Deletion keeps up with appends: a stream appended in single records faster than one
    turn per run deletes must not grow without bound."""
    store = small_turns
    trimmed = await store.create_stream(BASIN, "trimmed", StreamConfig(retention="infinite"))
    aged = await store.create_stream(BASIN, "aged", StreamConfig(retention=60))
    doomed = await store.create_stream(BASIN, "doomed", StreamConfig(retention="infinite"))
    for name in ("trimmed", "aged", "doomed"):
        for _ in range(50):
            await store.append(BASIN, name, make_batch(b"x"))
    tail = await store.check_tail(BASIN, "trimmed")
    await store.append(BASIN, "trimmed", make_batch(records=[trim_record(tail.seq_num)]))
    await store.delete_stream(BASIN, "doomed")
    clock.advance(61_000)
    await store.jobs.run_once()
    assert stored_batches(store, trimmed.record.sid) == 1  # the trim record's own batch
    assert stored_batches(store, aged.record.sid) == 0
    assert stored_batches(store, doomed.record.sid) == 0
    assert "doomed" not in {s.name for s in store.list_streams(BASIN)[0]}


async def test_delete_on_empty_never_deletes_a_stream_with_an_append_in_flight(
    store: StreamStore, clock: ManualClock
) -> None:
    config = StreamConfig(retention="infinite", delete_on_empty_min_age_secs=60)
    await store.create_stream(BASIN, "racy", config)
    clock.advance(120_000)  # empty and idle long enough
    pending = await store.submit(BASIN, "racy", make_batch(b"just-in-time"))
    await store.jobs.run_once()
    ack = await pending
    await store.jobs.run_once()
    assert ack.start.seq_num == 0
    out = await store.read(BASIN, "racy", ReadStart(seq_num=0), ReadLimits())
    assert out.records is not None and decode(out.records.payload)[0].body == b"just-in-time"


@pytest.mark.lmdb_only("a full LMDB map (4 MiB)")
async def test_space_freed_by_a_trim_is_reused_once_storage_is_full(
    tmp_path: Path, clock: ManualClock
) -> None:
    """LMDB reuses a freed page only from the second commit after the one that freed it, and
    every commit needs pages. When storage is full and the appends are too large for the few
    older free pages, a trim whose deletion was the last commit freed space no append could use:
    they failed forever, across restarts too, however much was trimmed."""
    store = StreamStore(LmdbStore(str(tmp_path), map_size_bytes=4 << 20), clock, MANUAL_JOBS)
    await store.start()
    try:
        await store.create_basin(BASIN)
        await store.create_stream(BASIN, "full", StreamConfig(retention="infinite"))
        big = make_batch(*[b"f" * 10_000] * 10)
        with pytest.raises(S2Error) as full:
            for _ in range(1000):
                await store.append(BASIN, "full", big)
        assert full.value.code == "unavailable"  # 503, retryable: nothing was written
        assert "is full" in full.value.message and "--max-storage-gib" in full.value.message
        tail = await store.check_tail(BASIN, "full")
        await store.append(BASIN, "full", make_batch(records=[trim_record(tail.seq_num)]))
        await store.jobs.run_once()
        for _ in range(5):  # as much as was trimmed, and more
            await store.append(BASIN, "full", big)
    finally:
        await store.close()
