"""Several stores on one PostgreSQL database, as several s2s nodes will run (ADR 0013): a
stream's tail is decided by the commit's precondition on its tail row, so appends through
different nodes never reuse or skip a sequence number, and `match_seq_num` and fencing are
checked against the tail a batch actually lands on, however stale a node's view was.

The background jobs run on one node at a time (`KeyValueStore.leads`), another takes them over
within seconds of the leader's connection closing or being lost, and delete-on-empty keeps a
stream another node appended to after it looked.

Each "node" here is a whole `StreamStore` with its own connections, committer and sequencers,
in one process; what they share is the database, as separate processes would.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import statistics
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TypeVar

import psycopg
import pytest

from s2s.config import StreamConfig, stream_patch_from_json
from s2s.errors import FencingTokenMismatch, S2Error, SeqNumMismatch
from s2s.records import fence_record, trim_record
from server.access.scope import ROOT_SCOPE
from server.access.tokens import IssueRequest
from server.jobs import JobSettings
from server.reader import ReadLimits, ReadStart
from server.sequencer import AppendAck
from server.storage.choice import POSTGRES_PREFIX
from server.storage.kv import Changed, Conflict, Delete, Expect, KeyValueStore, Put, Table, Write
from server.storage.layout import DELETING_STREAM_PREFIX, batch_key
from server.storage.postgres import LEAD_LOCK_CLASS, PostgresStore
from server.streamstore import StreamStore
from server.usage.query import Accumulation, parse_query
from tests.conftest import BASIN, MANUAL_JOBS, ManualClock, decode, make_batch
from tests.crash.faults import FaultyStore, Gate
from tests.storage_mode import empty_tables

STREAM = "shared"
NOTICE_WAIT_S = 2.0
"""How long a test waits for another node's change to reach a node (it takes milliseconds)."""

T = TypeVar("T")


async def open_node(
    storage: str,
    clock: ManualClock,
    job_settings: JobSettings | None = None,
    wrap: Callable[[KeyValueStore], KeyValueStore] | None = None,
) -> StreamStore:
    """A node on the database; `wrap` its store, for a test to hold commits."""
    kv: KeyValueStore = await asyncio.to_thread(
        PostgresStore, storage[len(POSTGRES_PREFIX) :], exclusive=False
    )
    store = StreamStore(kv if wrap is None else wrap(kv), clock, job_settings)
    await store.start()
    return store


@contextlib.asynccontextmanager
async def node(
    storage: str,
    clock: ManualClock,
    job_settings: JobSettings | None = None,
    wrap: Callable[[KeyValueStore], KeyValueStore] | None = None,
) -> AsyncIterator[StreamStore]:
    store = await open_node(storage, clock, job_settings, wrap)
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
def shared_db(postgres_storage: str) -> str:
    empty_tables(postgres_storage)
    return postgres_storage


async def _eventually(check: Callable[[], T]) -> T:
    """`check()`'s value once it stops raising, within `NOTICE_WAIT_S`."""
    deadline = time.monotonic() + NOTICE_WAIT_S
    while True:
        try:
            return check()
        except (AssertionError, S2Error):
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.01)


async def _bodies_by_seq(storage: str, clock: ManualClock) -> list[bytes]:
    """Every record of the stream, read through a node that has never seen it."""
    async with node(storage, clock) as fresh:
        tail = (await fresh.check_tail(BASIN, STREAM)).seq_num
        bodies: list[bytes] = []
        while len(bodies) < tail:
            output = await fresh.read(
                BASIN, STREAM, ReadStart(seq_num=len(bodies)), ReadLimits(wait_secs=0)
            )
            assert output.records is not None
            for record in decode(output.records.payload):
                assert record.seq_num == len(bodies)
                bodies.append(record.body)
        return bodies


async def test_writers_on_two_nodes_share_one_sequence(shared_db: str, clock: ManualClock) -> None:
    async with node(shared_db, clock) as a, node(shared_db, clock) as b:
        await a.create_basin(BASIN)
        await a.create_stream(BASIN, STREAM)
        acked: list[tuple[AppendAck, list[bytes]]] = []

        async def writer(store: StreamStore, name: str) -> None:
            for i in range(25):
                bodies = [f"{name}-{i}-{j}".encode() for j in range(3)]
                ack = await store.append(BASIN, STREAM, make_batch(*bodies))
                acked.append((ack, bodies))

        await asyncio.gather(
            *(writer(store, f"{store is a}-{w}") for store in (a, b) for w in (0, 1))
        )

    acked.sort(key=lambda item: item[0].start.seq_num)
    assert [ack.start.seq_num for ack, _ in acked] == list(range(0, 300, 3)), "reused or skipped"
    stored = await _bodies_by_seq(shared_db, clock)
    assert stored == [body for _, bodies in acked for body in bodies]


async def test_a_stale_node_checks_match_seq_num_against_the_real_tail(
    shared_db: str, clock: ManualClock
) -> None:
    async with node(shared_db, clock) as a, node(shared_db, clock) as b:
        await a.create_basin(BASIN)
        await a.create_stream(BASIN, STREAM)
        await a.append(BASIN, STREAM, make_batch(b"a0"))  # a's view: next is 1
        await b.append(BASIN, STREAM, make_batch(b"b1"))  # the real tail: next is 2
        with pytest.raises(SeqNumMismatch) as info:
            await a.append(BASIN, STREAM, make_batch(b"stale", match_seq_num=1))
        assert info.value.expected_seq_num == 2
        ack = await a.append(BASIN, STREAM, make_batch(b"a2", match_seq_num=2))
        assert (ack.start.seq_num, ack.end.seq_num) == (2, 3)
    assert await _bodies_by_seq(shared_db, clock) == [b"a0", b"b1", b"a2"]


async def test_a_fence_set_on_one_node_holds_on_another(shared_db: str, clock: ManualClock) -> None:
    async with node(shared_db, clock) as a, node(shared_db, clock) as b:
        await a.create_basin(BASIN)
        await a.create_stream(BASIN, STREAM)
        await b.append(BASIN, STREAM, make_batch(b"b0"))  # b's view: no fencing token
        await a.append(BASIN, STREAM, make_batch(records=[fence_record("writer-a")]))
        with pytest.raises(FencingTokenMismatch) as info:
            await b.append(BASIN, STREAM, make_batch(b"fenced out", fencing_token=""))
        assert info.value.current_token == "writer-a"
        ack = await b.append(BASIN, STREAM, make_batch(b"a's", fencing_token="writer-a"))
        assert ack.start.seq_num == 2
    assert await _bodies_by_seq(shared_db, clock) == [b"b0", b"writer-a", b"a's"]


async def test_pipelined_appends_keep_their_order_through_a_conflict(
    shared_db: str, clock: ManualClock
) -> None:
    """A session's batches are in flight together when another node's append breaks the
    first one's precondition: all of them land again, in their order, contiguous."""
    async with node(shared_db, clock) as a, node(shared_db, clock) as b:
        await a.create_basin(BASIN)
        await a.create_stream(BASIN, STREAM)
        await a.append(BASIN, STREAM, make_batch(b"a0"))
        await b.append(BASIN, STREAM, make_batch(b"b1"))  # a's view is now stale
        sequencer = await a.sequencers.get(BASIN, STREAM)
        pipelined = [await sequencer.submit(make_batch(f"p{i}".encode())) for i in range(20)]
        acks = await asyncio.gather(*pipelined)
    assert [ack.start.seq_num for ack in acks] == list(range(2, 22))
    assert await _bodies_by_seq(shared_db, clock) == [b"a0", b"b1"] + [
        f"p{i}".encode() for i in range(20)
    ]


class InterposedAppends(FaultyStore):
    """Before each of the first `times` commits that append to the stream, has another node
    append to it first (from this store's committer thread), so the commit conflicts: the
    second one is a batch numbered again, mid-retry."""

    def __init__(self, inner: KeyValueStore, times: int) -> None:
        super().__init__(inner)
        self.times = times
        self.other: StreamStore | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def commit(self, writes: Sequence[Write]) -> None:
        appends = any(isinstance(w, Put) and w.table is Table.BATCHES for w in writes)
        if appends and self.times and self.other is not None and self.loop is not None:
            self.times -= 1
            interposed = self.other.append(BASIN, STREAM, make_batch(f"b{self.times}".encode()))
            asyncio.run_coroutine_threadsafe(interposed, self.loop).result(10)
        super().commit(writes)


async def test_a_batch_left_out_again_while_being_numbered_again_keeps_its_place(
    shared_db: str, clock: ManualClock
) -> None:
    """A session's batches conflict, are numbered again, and the first of them conflicts
    once more while the rest are being queued behind it: every batch still lands once, in
    the session's order, and no append submitted meanwhile gets ahead of them."""
    interposer: list[InterposedAppends] = []

    def interpose(kv: KeyValueStore) -> KeyValueStore:
        interposer.append(InterposedAppends(kv, times=2))
        return interposer[0]

    async with (
        node(shared_db, clock) as b,
        node(shared_db, clock, MANUAL_JOBS, interpose) as a,
    ):
        await b.create_basin(BASIN)
        await b.create_stream(BASIN, STREAM)
        interposer[0].other = b
        interposer[0].loop = asyncio.get_running_loop()
        sequencer = await a.sequencers.get(BASIN, STREAM)
        pipelined = [await sequencer.submit(make_batch(f"p{i}".encode())) for i in range(5)]
        late = await a.submit(BASIN, STREAM, make_batch(b"late"))
        acks = await asyncio.gather(*pipelined, late)
    assert interposer[0].times == 0
    starts = [ack.start.seq_num for ack in acks]
    assert starts == sorted(starts) and len(set(starts)) == 6, starts
    bodies = await _bodies_by_seq(shared_db, clock)
    ours = [body for body in bodies if not body.startswith(b"b")]
    assert ours == [f"p{i}".encode() for i in range(5)] + [b"late"], bodies
    assert sorted(bodies) == sorted([b"b1", b"b0", *ours]), bodies


def test_racing_commits_expecting_a_key_absent_let_one_win(shared_db: str) -> None:
    """Row locks cannot hold a key that is not there yet: two stores each expecting it absent
    must still not both write it (the per-key advisory lock)."""
    conninfo = shared_db[len(POSTGRES_PREFIX) :]
    stores = [PostgresStore(conninfo, exclusive=False) for _ in range(2)]
    won: list[list[bytes]] = [[], []]
    start = threading.Barrier(2)

    def race(index: int) -> None:
        start.wait()
        for round_ in range(200):
            key = b"k%d" % round_
            try:
                stores[index].commit(
                    [Expect(Table.STREAMS, key, None), Put(Table.STREAMS, key, b"%d" % index)]
                )
            except Conflict:
                continue
            won[index].append(key)

    threads = [threading.Thread(target=race, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert sorted(won[0] + won[1]) == sorted(b"k%d" % r for r in range(200)), (
            "both or neither won"
        )
        for index, keys in enumerate(won):
            assert all(stores[0].get(Table.STREAMS, key) == b"%d" % index for key in keys)
    finally:
        for store in stores:
            store.close()


def test_a_shared_store_announces_what_other_stores_commit(shared_db: str) -> None:
    """The keys of the tables nodes hold in memory, put or deleted, once their commit lands:
    none of a commit that did not, none of other tables, none of the watching store's own.
    Keys of LMDB's greatest length fill several notifications."""
    conninfo = shared_db[len(POSTGRES_PREFIX) :]
    a, b = (PostgresStore(conninfo, exclusive=False) for _ in range(2))
    seen: queue.Queue[Changed | None] = queue.Queue()
    try:
        b.watch_changes(seen.put)
        assert seen.get(timeout=5) is None, "listening begins with: anything may have changed"
        a.commit(
            [
                Put(Table.STREAMS, b"s", b"record"),
                Delete(Table.ACCESS_TOKENS, b"revoked"),
                Put(Table.BATCHES, b"batch", b""),
            ]
        )
        with pytest.raises(Conflict):
            a.commit([Expect(Table.BASINS, b"b", b"held"), Put(Table.BASINS, b"b", b"")])
        long_keys = [bytes([i]) * 511 for i in range(40)]
        a.commit([Put(Table.TAILS, key, b"") for key in long_keys])
        b.commit([Put(Table.STREAMS, b"b's own", b"")])
        a.commit([Put(Table.BASINS, b"last", b"")])
        announced: dict[Table, list[bytes]] = {}
        while Table.BASINS not in announced:
            change = seen.get(timeout=5)
            assert change is not None
            announced.setdefault(change.table, []).extend(change.keys)
    finally:
        a.close()
        b.close()
    assert announced == {
        Table.STREAMS: [b"s"],
        Table.ACCESS_TOKENS: [b"revoked"],
        Table.TAILS: long_keys,
        Table.BASINS: [b"last"],
    }
    assert seen.empty()


async def test_control_plane_changes_through_two_nodes_never_collide(
    shared_db: str, clock: ManualClock
) -> None:
    """Each node checks, then writes; the write expects what was checked. Stream ids come from
    one counter, one name is created once, and a change never lands on a record another node
    deleted meanwhile."""
    # Manual jobs: a deletion's kick could otherwise finish it before the check below.
    async with node(shared_db, clock, MANUAL_JOBS) as a, node(shared_db, clock, MANUAL_JOBS) as b:
        await a.create_basin(BASIN)
        created = await asyncio.gather(
            *(store.create_stream(BASIN, f"s{i}") for i in range(15) for store in (a, b)),
            return_exceptions=True,
        )
        outcomes = [o if isinstance(o, BaseException) else o.outcome for o in created]
        assert outcomes.count("created") == 15, outcomes
        assert all(
            isinstance(o, S2Error) and o.code == "resource_already_exists"
            for o in outcomes
            if o != "created"
        )
        sids = [record.sid for record in a.catalog.list_streams(BASIN)[0]]
        assert len(sids) == len(set(sids)) == 15

        await a.delete_stream(BASIN, "s0")
        with pytest.raises(S2Error) as info:
            await b.reconfigure_stream(BASIN, "s0", {"retention": "infinite"})
        assert info.value.code == "stream_deletion_pending"


async def test_a_follower_on_one_node_gets_what_another_node_appends(
    shared_db: str, clock: ManualClock
) -> None:
    """Each commit announces the tails it moved (NOTIFY); the other node reads them back and
    wakes its followers. Its check-tail sees them too."""
    async with node(shared_db, clock) as a, node(shared_db, clock) as b:
        await a.create_basin(BASIN)
        await a.create_stream(BASIN, STREAM)
        session = await b.read_session(BASIN, STREAM, ReadStart(seq_num=0), ReadLimits())
        sent_at: dict[int, float] = {}
        latencies: list[float] = []

        async def follow() -> None:
            async for output in session:
                if output.records is None:
                    continue
                for record in decode(output.records.payload):
                    latencies.append(time.monotonic() - sent_at[record.seq_num])
                    if record.seq_num == 49:
                        return

        follower = asyncio.ensure_future(follow())
        await asyncio.sleep(0.2)
        for i in range(50):
            sent_at[i] = time.monotonic()  # its sequence number: the appends are one at a time
            await a.append(BASIN, STREAM, make_batch(b"%d" % i))
            await asyncio.sleep(0.01)
        await asyncio.wait_for(follower, 10)
        await session.aclose()
        assert (await b.check_tail(BASIN, STREAM)).seq_num == 50
    p99 = statistics.quantiles(latencies, n=100)[98]
    p50 = statistics.median(latencies)
    print(f"append through one node, read on the other: p50 {p50:.4f} s, p99 {p99:.4f} s")
    assert len(latencies) == 50 and p99 < 0.5, f"append to read on the other node p99 {p99:.3f} s"


# --- background jobs ---------------------------------------------------------------------------


def _stored_batches(store: StreamStore, sid: int) -> int:
    return len(store.kv.scan(Table.BATCHES, batch_key(sid, 0), batch_key(sid + 1, 0), 100))


async def test_only_the_leading_node_runs_the_background_jobs(
    shared_db: str, clock: ManualClock
) -> None:
    async with node(shared_db, clock, MANUAL_JOBS) as a, node(shared_db, clock, MANUAL_JOBS) as b:
        await a.create_basin(BASIN)
        sid = (await a.create_stream(BASIN, STREAM)).record.sid
        await a.append(BASIN, STREAM, make_batch(b"doomed"))
        assert await a.jobs.run_if_leader(), "the first node to ask leads"
        await b.delete_stream(BASIN, STREAM)
        b_ran = await b.jobs.run_if_leader()
        record = b.catalog.get_stream(BASIN, STREAM)
        assert record is not None and record.deleting
        assert _stored_batches(b, sid) == 1, "a node that does not lead ran the deletion"
        assert not b_ran
        assert await a.jobs.run_if_leader()
        assert _stored_batches(b, sid) == 0
        assert b.catalog.get_stream(BASIN, STREAM) is None


def test_one_shared_store_at_a_time_leads_a_role(shared_db: str) -> None:
    conninfo = shared_db[len(POSTGRES_PREFIX) :]
    first, second = (PostgresStore(conninfo, exclusive=False) for _ in range(2))
    try:
        assert first.shared and second.shared
        assert first.leads("jobs") and first.leads("jobs"), "the first to ask leads, and keeps it"
        assert not second.leads("jobs")
        assert second.leads("other"), "each role has a leader of its own"
        first.close()
        assert not first.leads("jobs")
        # Its backend ends a moment after the socket closes: the lock goes with it.
        deadline = time.monotonic() + NOTICE_WAIT_S
        while not second.leads("jobs"):
            assert time.monotonic() < deadline, "closing the leader did not free its roles"
            time.sleep(0.01)
    finally:
        first.close()
        second.close()


def _terminate_leader(storage: str) -> None:
    """End the session holding a leadership lock, as a network fault or a database restart
    would."""
    with psycopg.connect(storage[len(POSTGRES_PREFIX) :], autocommit=True) as connection:
        ended = connection.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
            "AND classid = %s AND objsubid = 2 AND granted",
            (LEAD_LOCK_CLASS,),
        ).fetchall()
    assert ended == [(True,)]


@pytest.mark.parametrize("leader_ends", ["closed", "cut off"])
async def test_another_node_takes_over_the_jobs_when_the_leader_goes(
    shared_db: str, clock: ManualClock, leader_ends: str, caplog: pytest.LogCaptureFixture
) -> None:
    a = await open_node(shared_db, clock, MANUAL_JOBS)
    try:
        assert await a.jobs.run_if_leader()
        async with node(shared_db, clock, JobSettings(interval_s=0.1)) as b:
            await a.create_basin(BASIN)
            sid = (await a.create_stream(BASIN, STREAM)).record.sid
            await a.append(BASIN, STREAM, make_batch(b"doomed"))
            await b.delete_stream(BASIN, STREAM)
            await asyncio.sleep(0.5)  # b's jobs loop asks about five times meanwhile
            assert _stored_batches(b, sid) == 1, "a node that does not lead ran the deletion"

            ended_at = time.monotonic()
            if leader_ends == "closed":
                await a.close()
            else:
                await asyncio.to_thread(_terminate_leader, shared_db)
            while b.catalog.get_stream(BASIN, STREAM) is not None:
                assert time.monotonic() - ended_at < 5, "no node took the jobs over"
                await asyncio.sleep(0.05)
            assert _stored_batches(b, sid) == 0
            taken_over_s = time.monotonic() - ended_at
            print(f"jobs taken over {taken_over_s:.2f} s after the leader was {leader_ends}")

            if leader_ends == "cut off":
                with caplog.at_level(logging.WARNING, logger="server.jobs"):
                    assert not await a.jobs.run_if_leader(), "two nodes lead"
                assert "no longer run on this node" in caplog.text
    finally:
        if leader_ends == "cut off":
            await a.close()


class HeldDeletion(FaultyStore):
    """Holds the first commit that marks a stream deleting until the test releases it."""

    def __init__(self, inner: KeyValueStore) -> None:
        super().__init__(inner)
        self.gate = Gate()

    def commit(self, writes: Sequence[Write]) -> None:
        marks = any(
            isinstance(write, Put) and write.key.startswith(DELETING_STREAM_PREFIX)
            for write in writes
        )
        if marks and not self.gate.entered.is_set():
            self.gate.entered.set()
            self.gate.release.wait()
        super().commit(writes)


async def test_delete_on_empty_keeps_a_stream_another_node_appended_to(
    shared_db: str, clock: ManualClock
) -> None:
    """Node a finds the stream empty and idle, and commits its deletion; node b appends to it
    in between. The deletion expects the tail row a checked, so it does not land."""
    held: list[HeldDeletion] = []

    def hold(kv: KeyValueStore) -> KeyValueStore:
        held.append(HeldDeletion(kv))
        return held[0]

    config = StreamConfig(retention="infinite", delete_on_empty_min_age_secs=60)
    async with (
        node(shared_db, clock, MANUAL_JOBS, hold) as a,
        node(shared_db, clock, MANUAL_JOBS) as b,
    ):
        await a.create_basin(BASIN)
        await a.create_stream(BASIN, STREAM, config)
        clock.advance(120_000)  # empty and idle long enough
        run = asyncio.ensure_future(a.jobs.run_if_leader())
        assert await asyncio.to_thread(held[0].gate.entered.wait, 10), "no deletion committed"
        ack = await b.append(BASIN, STREAM, make_batch(b"b's"))
        held[0].gate.release.set()
        assert await run
        assert ack.start.seq_num == 0
        record = b.catalog.get_stream(BASIN, STREAM)
        assert record is not None and not record.deleting, "deleted with a record in it"
        # Node a's sequencer takes appends again, after b's.
        assert (await a.append(BASIN, STREAM, make_batch(b"a's"))).start.seq_num == 1
        await a.jobs.run_if_leader()
    assert await _bodies_by_seq(shared_db, clock) == [b"b's", b"a's"]


async def test_a_stream_reconfigured_through_one_node_is_appended_to_on_another_with_its_new_config(
    shared_db: str, clock: ManualClock
) -> None:
    """A reconfiguration writes the stream's record, no tail: the other node's live sequencer
    takes the new config from the record's notice, with no append through the first."""
    async with node(shared_db, clock) as a, node(shared_db, clock) as b:
        await a.create_basin(BASIN)
        await a.create_stream(BASIN, STREAM)
        await b.append(BASIN, STREAM, make_batch(b"no timestamp, client-prefer"))
        patch = stream_patch_from_json({"timestamping": {"mode": "client-require"}})
        await a.reconfigure_stream(BASIN, STREAM, patch)
        sequencer = b.sequencers.cached(BASIN, STREAM)
        assert sequencer is not None

        def adopted() -> None:
            assert sequencer.config.timestamping_mode == "client-require"

        await _eventually(adopted)
        with pytest.raises(S2Error) as info:
            await b.append(BASIN, STREAM, make_batch(b"no timestamp, client-require"))
        assert info.value.code == "invalid"
        ack = await b.append(BASIN, STREAM, make_batch(b"stamped", timestamps=[5]))
        assert ack.start.seq_num == 1


class Deaf(FaultyStore):
    """A node that hears none of the other nodes' notices, as one frozen (SIGSTOP, a long
    pause) while they were sent: its view of streams and basins is as old as can be."""

    def watch_changes(self, on_change: Callable[[Changed | None], None]) -> None:
        pass


@pytest.mark.parametrize(
    ("change", "refusal"),
    [
        ("reconfigure", "invalid"),
        ("delete stream", "stream_deletion_pending"),
        ("delete basin", "stream_deletion_pending"),
    ],
)
async def test_a_node_that_missed_a_change_never_appends_on_the_old_record(
    shared_db: str, clock: ManualClock, change: str, refusal: str
) -> None:
    """Nothing about the stream's tail changed, only its record or its basin's: node b's
    append expects the records its checks used, conflicts, and is checked again on the new
    ones."""
    async with (
        node(shared_db, clock, MANUAL_JOBS) as a,
        node(shared_db, clock, MANUAL_JOBS, Deaf) as b,
    ):
        await a.create_basin(BASIN)
        record = (await a.create_stream(BASIN, STREAM)).record
        await b.append(BASIN, STREAM, make_batch(b"b0"))  # b's sequencer is live
        if change == "reconfigure":
            patch = stream_patch_from_json({"timestamping": {"mode": "client-require"}})
            await a.reconfigure_stream(BASIN, STREAM, patch)
        elif change == "delete stream":
            await a.delete_stream(BASIN, STREAM)
        else:
            await a.delete_basin(BASIN)
        with pytest.raises(S2Error) as info:
            await b.append(BASIN, STREAM, make_batch(b"no timestamp, after the change"))
        assert info.value.code == refusal
        tail = a.catalog.stored_tail(record.sid)
        assert tail is not None and tail.next_seq == 1


async def test_a_stream_deleted_through_one_node_ends_the_other_nodes_follower(
    shared_db: str, clock: ManualClock
) -> None:
    # Manual jobs: the deletion stays pending, and the follower is told so.
    async with node(shared_db, clock, MANUAL_JOBS) as a, node(shared_db, clock, MANUAL_JOBS) as b:
        await a.create_basin(BASIN)
        await a.create_stream(BASIN, STREAM)
        await b.append(BASIN, STREAM, make_batch(b"b0"))
        session = await b.read_session(BASIN, STREAM, ReadStart(seq_num=1), ReadLimits())

        async def follow() -> None:
            async for _ in session:
                pass

        follower = asyncio.ensure_future(follow())
        await asyncio.sleep(0.2)
        assert not follower.done()
        await a.delete_stream(BASIN, STREAM)
        with pytest.raises(S2Error) as info:
            await asyncio.wait_for(follower, NOTICE_WAIT_S)
        assert info.value.code == "stream_deletion_pending"
        with pytest.raises(S2Error) as info:
            await b.append(BASIN, STREAM, make_batch(b"after the deletion"))
        assert info.value.code == "stream_deletion_pending"


async def test_a_token_revoked_through_one_node_stops_working_on_another(
    shared_db: str, clock: ManualClock
) -> None:
    """Each node holds every token in memory: one issued through a node is known to the other,
    and once revoked it stops working there too, its sessions ended."""
    async with node(shared_db, clock) as a, node(shared_db, clock) as b:
        tokens = a.access_tokens
        secret = await tokens.issue(tokens.anyone, IssueRequest("reader", ROOT_SCOPE))
        header = f"Bearer {secret}"
        principal = await _eventually(lambda: b.access_tokens.authenticate(header))
        await tokens.revoke(tokens.anyone, "reader")
        revoked_at = time.monotonic()

        def refused() -> None:
            try:
                b.access_tokens.authenticate(header)
            except S2Error as error:
                assert error.code == "authn"
                return
            raise AssertionError("b still accepts the revoked token")

        await _eventually(refused)
        assert time.monotonic() - revoked_at < 1.0
        assert principal.ended.is_set(), "sessions opened with the token on b go on"


async def test_usage_counted_on_two_nodes_adds_up(shared_db: str, clock: ManualClock) -> None:
    """Both nodes add to the same counter rows: flushing at the same moment, each expects
    the count it read, and the one that lost the race adds its amount again."""
    async with node(shared_db, clock) as a, node(shared_db, clock) as b:
        await a.create_basin(BASIN)
        await a.create_stream(BASIN, STREAM)
        for round_ in range(1, 5):
            for store in (a, b):
                for _ in range(round_):
                    await store.append(BASIN, STREAM, make_batch(b"x"))
            await asyncio.gather(a.usage.flush(), b.usage.flush())
    async with node(shared_db, clock) as fresh:
        now_s = clock.now_ms() // 1000
        params = {"set": "append-ops", "start": str(now_s), "end": str(now_s)}
        query = parse_query("basin", params, now_s)
        (metric,) = await fresh.basin_metrics(BASIN, query)
    assert isinstance(metric, Accumulation)
    assert sum(value for _, value in metric.values) == 2 * (1 + 2 + 3 + 4)


async def test_stored_bytes_are_the_clusters_on_every_node(
    shared_db: str, clock: ManualClock
) -> None:
    """Appends through both nodes and a trim: after a flush of each, both report what the
    stream stores, counted from the store by the node that leads the jobs (it deletes the
    batches), not each node's own appends."""
    async with (
        node(shared_db, clock, MANUAL_JOBS) as a,
        node(shared_db, clock, MANUAL_JOBS) as b,
    ):
        assert await a.jobs.run_if_leader() and not await b.jobs.run_if_leader()
        await a.create_basin(BASIN)
        await b.create_stream(BASIN, STREAM)  # a learns of it from the store
        batches = [make_batch(b"x" * 100 * (i + 1)) for i in range(5)]
        for index, batch in enumerate(batches):
            await (a if index < 3 else b).append(BASIN, STREAM, batch)
        total = sum(batch.metered_bytes for batch in batches)

        async def flush_both() -> tuple[int, int]:
            await a.usage.flush()  # the leader counts and writes
            await b.usage.flush()  # the other takes the leader's counts
            return a.usage.storage_by_label()[BASIN], b.usage.storage_by_label()[BASIN]

        assert await flush_both() == (total, total)
        await b.append(BASIN, STREAM, make_batch(records=[trim_record(2)]))
        sequencer = a.sequencers.cached(BASIN, STREAM)
        assert sequencer is not None

        def trim_seen() -> None:
            assert sequencer.durable.trim_point == 2

        await _eventually(trim_seen)  # the jobs read the trim point where the node sees it
        await a.jobs.run_if_leader()  # deletes batches 0 and 1
        trimmed = total - batches[0].metered_bytes - batches[1].metered_bytes
        trim_bytes = make_batch(records=[trim_record(2)]).metered_bytes
        assert await flush_both() == (trimmed + trim_bytes, trimmed + trim_bytes)
    # The counts are in the store: a node started now (leading) agrees without counting all.
    async with node(shared_db, clock, MANUAL_JOBS) as fresh:
        assert await fresh.jobs.run_if_leader()
        await fresh.usage.flush()
        assert fresh.usage.storage_by_label()[BASIN] == trimmed + trim_bytes


async def test_a_node_taking_the_jobs_over_recounts_what_the_last_leader_deleted_unflushed(
    shared_db: str, clock: ManualClock
) -> None:
    """The leader deleted batches and lost the lead before its next flush: its snapshot still
    counts them. The node that takes over checks each snapshot against the store first."""
    async with (
        node(shared_db, clock, MANUAL_JOBS) as a,
        node(shared_db, clock, MANUAL_JOBS) as b,
    ):
        assert await a.jobs.run_if_leader()
        await a.create_basin(BASIN)
        await a.create_stream(BASIN, STREAM)
        batches = [make_batch(b"y" * 50 * (i + 1)) for i in range(4)]
        for batch in batches:
            await a.append(BASIN, STREAM, batch)
        await a.usage.flush()
        await b.usage.flush()  # b holds the leader's counts
        trim = make_batch(records=[trim_record(3)])
        await a.append(BASIN, STREAM, trim)
        await a.jobs.run_if_leader()  # deletes batches 0-2; no flush after
        await asyncio.to_thread(_terminate_leader, shared_db)
        ended_at = time.monotonic()
        while not await b.jobs.run_if_leader():  # the lock goes as the backend exits
            assert time.monotonic() - ended_at < 5, "b never took the jobs over"
            await asyncio.sleep(0.05)
        await b.usage.flush()
        assert b.usage.storage_by_label()[BASIN] == batches[3].metered_bytes + trim.metered_bytes
