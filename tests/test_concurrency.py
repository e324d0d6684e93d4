"""Concurrency: racing producers, pipelined writers, live followers and fencing handovers.

Every test runs many coroutines against one real `StreamStore` (LMDB, group commit) and checks
the contract's ordering guarantees (docs/s2-compat.md §7, §8): each sequence number is
assigned once, acks of a stream come back in submission order, commits are grouped, followers
see every record exactly once and only once it is durable, and a fence cuts off the previous
writer; and a large batch gives other tasks a turn on the event loop before its sender goes on.
"""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from s2s.errors import FencingTokenMismatch, SeqNumMismatch
from s2s.records import fence_record
from s2s.v1 import records_pb2 as pb
from server.reader import ReadLimits, ReadStart
from server.sequencer import AppendAck
from server.streamstore import YIELD_AROUND_BATCH_RECORDS, StreamStore
from tests.conftest import BASIN, decode, make_batch


async def read_all(store: StreamStore, stream: str) -> list[pb.SequencedRecord]:
    """Every record of the stream, via bounded unary reads."""
    tail = (await store.check_tail(BASIN, stream)).seq_num
    records: list[pb.SequencedRecord] = []
    while len(records) < tail:
        out = await store.read(BASIN, stream, ReadStart(seq_num=len(records)), ReadLimits())
        assert out.records is not None
        records.extend(decode(out.records.payload))
    return records


# --- (a) producers racing with match_seq_num ----------------------------------------------


@dataclass(frozen=True)
class Won:
    match_seq_num: int
    bodies: list[bytes]


@dataclass(frozen=True)
class Lost:
    match_seq_num: int
    expected_seq_num: int


async def test_match_seq_num_race_assigns_every_seq_num_once(store: StreamStore) -> None:
    await store.create_stream(BASIN, "race")
    producers, wins_each = 32, 8
    # One log for all producers, in the order the sequencer decided: for batches this small
    # (under YIELD_AROUND_BATCH_RECORDS), `submit` returns right after numbering the batch (or
    # raising), with no suspension in between, so appending to the log there records the
    # decision order.
    log: list[Won | Lost] = []
    acks: list[tuple[Won, AppendAck]] = []

    async def producer(p: int) -> None:
        rng = random.Random(p)
        for w in range(wins_each):
            match = (await store.check_tail(BASIN, "race")).seq_num
            bodies = [f"{p}/{w}/{i}".encode() for i in range(rng.randint(1, 3))]
            while True:
                try:
                    pending = await store.submit(
                        BASIN, "race", make_batch(*bodies, match_seq_num=match)
                    )
                except SeqNumMismatch as mismatch:
                    log.append(Lost(match, mismatch.expected_seq_num))
                    match = mismatch.expected_seq_num
                    await asyncio.sleep(0)
                    continue
                won = Won(match, bodies)
                log.append(won)
                acks.append((won, await pending))
                break

    await asyncio.gather(*(producer(p) for p in range(producers)))

    # Replay the decisions: each winner matched the next free number, each loser was told it.
    next_seq = 0
    losses = 0
    for entry in log:
        if isinstance(entry, Won):
            assert entry.match_seq_num == next_seq
            next_seq += len(entry.bodies)
        else:
            losses += 1
            assert entry.match_seq_num != next_seq
            assert entry.expected_seq_num == next_seq
    assert losses > producers, "the producers did not actually race"
    for won, ack in acks:
        assert ack.start.seq_num == won.match_seq_num
        assert ack.end.seq_num == won.match_seq_num + len(won.bodies)
        assert ack.tail.seq_num >= ack.end.seq_num

    # The stream holds exactly the winners' batches, in order: no duplicates, no gaps.
    winners = sorted((e for e in log if isinstance(e, Won)), key=lambda e: e.match_seq_num)
    assert len(winners) == producers * wins_each
    records = await read_all(store, "race")
    assert [r.seq_num for r in records] == list(range(next_seq))
    assert [r.body for r in records] == [body for won in winners for body in won.bodies]


# --- (b) pipelined writers over many streams ------------------------------------------------


async def test_pipelined_submits_to_many_streams(store: StreamStore) -> None:
    stream_count, writers, per_writer = 1000, 64, 100
    names = [f"many-{i:04d}" for i in range(stream_count)]
    await asyncio.gather(*(store.create_stream(BASIN, name) for name in names))
    commits_before = store.committer.commits

    # Per writer and stream: submission order, and the order in which acks completed.
    submitted: dict[tuple[int, str], list[int]] = defaultdict(list)
    completed: dict[tuple[int, str], list[int]] = defaultdict(list)
    results: list[tuple[int, int, str, asyncio.Future[AppendAck]]] = []

    def on_completion(key: tuple[int, str], i: int) -> Callable[[object], None]:
        return lambda _: completed[key].append(i)

    async def writer(w: int) -> None:
        rng = random.Random(w)
        for i in range(per_writer):
            name = names[rng.randrange(stream_count)]
            future = await store.submit(BASIN, name, make_batch(f"{w}/{i}".encode()))
            submitted[w, name].append(i)
            future.add_done_callback(on_completion((w, name), i))
            results.append((w, i, name, future))
            if rng.random() < 0.2:
                await asyncio.sleep(0)  # let other writers interleave

    await asyncio.gather(*(writer(w) for w in range(writers)))
    acks = await asyncio.gather(*(future for _, _, _, future in results))
    total = writers * per_writer
    assert len(acks) == total

    commits = store.committer.commits - commits_before
    # Group sizes depend on scheduling: 3-5 commits for these 6,400 appends on an idle machine,
    # 423 once with other tests running beside it. One commit per append would be 6,400.
    assert commits <= total // 4, f"{commits} commits for {total} appends: not grouped"

    assert completed == submitted  # acks of one stream complete in submission order
    per_stream: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    seqs_in_submission_order: dict[tuple[int, str], list[int]] = defaultdict(list)
    for (w, i, name, _), ack in zip(results, acks, strict=True):
        assert ack.end.seq_num == ack.start.seq_num + 1
        assert ack.tail.seq_num >= ack.end.seq_num
        per_stream[name].append((ack.start.seq_num, w, i))
        seqs_in_submission_order[w, name].append(ack.start.seq_num)
    for seqs in seqs_in_submission_order.values():
        assert seqs == sorted(seqs)
    for name in names:
        entries = sorted(per_stream[name])
        assert [seq for seq, _, _ in entries] == list(range(len(entries)))
        records = await read_all(store, name)
        assert [r.body for r in records] == [f"{w}/{i}".encode() for _, w, i in entries]


# --- (c) followers see every record, in order, only once durable ----------------------------


async def test_followers_receive_every_record_once_durable(store: StreamStore) -> None:
    await store.create_stream(BASIN, "follow")
    rng = random.Random(7)
    batches = [[f"{b}/{i}".encode() for i in range(rng.randint(1, 5))] for b in range(600)]
    total = sum(len(batch) for batch in batches)
    # Bounded followers need a wait to be allowed to follow; they must stop exactly at their
    # bound, even when it falls inside an appended batch (a batch is split, a record never).
    count_bound, bytes_bound = total // 2 + 1, 5_000 + 3
    followers_spec = [
        (ReadStart(seq_num=0), ReadLimits()),
        (ReadStart(tail_offset=0), ReadLimits()),
        (ReadStart(timestamp=0), ReadLimits()),
        (ReadStart(seq_num=0), ReadLimits(count=count_bound, wait_secs=30)),
        (ReadStart(seq_num=0), ReadLimits(bytes=bytes_bound, wait_secs=30)),
    ]
    live = [asyncio.Event() for _ in followers_spec]
    received: list[list[pb.SequencedRecord]] = [[] for _ in followers_spec]
    beyond_durable: list[tuple[int, int]] = []

    async def follow(k: int) -> None:
        start, limits = followers_spec[k]
        session = await store.read_session(BASIN, "follow", start, limits)
        sequencer = store.sequencers.cached(BASIN, "follow")
        assert sequencer is not None
        async for output in session:
            live[k].set()
            if output.records is None:
                continue
            # Acks wait for durability (7.7); a follower must not see more than an ack would
            # vouch for, or a crash could take back records it already delivered.
            durable = sequencer.durable.next_seq
            for record in decode(output.records.payload):
                if record.seq_num >= durable:
                    beyond_durable.append((record.seq_num, durable))
                received[k].append(record)
            if len(received[k]) >= total:
                return

    followers = [asyncio.create_task(follow(k)) for k in range(len(followers_spec))]
    # Followers are live (they sent their first heartbeat) before anything is appended.
    await asyncio.wait_for(asyncio.gather(*(event.wait() for event in live)), 10)

    body_at: dict[int, bytes] = {}

    async def produce(part: list[list[bytes]], pipelined: bool) -> None:
        pending = []
        for bodies in part:
            if pipelined:
                pending.append((bodies, await store.submit(BASIN, "follow", make_batch(*bodies))))
                if len(pending) % 8 == 0:
                    await asyncio.sleep(0)
            else:
                ack = await store.append(BASIN, "follow", make_batch(*bodies))
                body_at.update(zip(range(ack.start.seq_num, ack.end.seq_num), bodies, strict=True))
        for bodies, future in pending:
            ack = await future
            body_at.update(zip(range(ack.start.seq_num, ack.end.seq_num), bodies, strict=True))

    await asyncio.gather(
        *(produce(batches[p::4], pipelined=p % 2 == 0) for p in range(4)),
    )
    await asyncio.wait_for(asyncio.gather(*followers), 30)

    assert sorted(body_at) == list(range(total))
    assert beyond_durable == []
    everything = [body_at[seq] for seq in range(total)]
    for got in received[:3]:
        assert [r.seq_num for r in got] == list(range(total))
        assert [r.body for r in got] == everything
    assert [r.body for r in received[3]] == everything[:count_bound]
    within_bytes: list[bytes] = []
    metered = 0
    for body in everything:
        metered += 8 + len(body)  # no headers: docs/s2-compat.md §6.5
        if metered > bytes_bound:
            break
        within_bytes.append(body)
    assert [r.body for r in received[4]] == within_bytes


async def test_unary_read_with_wait_returns_the_next_append(store: StreamStore) -> None:
    await store.create_stream(BASIN, "waiting")
    await store.append(BASIN, "waiting", make_batch(b"old"))
    loop = asyncio.get_running_loop()
    began = loop.time()
    # At the tail with `wait`, a unary read returns the first live batch (docs/s2-compat.md §8).
    read = asyncio.create_task(
        store.read(BASIN, "waiting", ReadStart(seq_num=1), ReadLimits(wait_secs=30))
    )
    await asyncio.sleep(0.05)
    assert not read.done()
    await store.append(BASIN, "waiting", make_batch(b"new1", b"new2"))
    out = await asyncio.wait_for(read, 10)
    assert loop.time() - began < 10
    assert out.records is not None
    assert [(r.seq_num, r.body) for r in decode(out.records.payload)] == [
        (1, b"new1"),
        (2, b"new2"),
    ]


# --- (d) fencing handover ---------------------------------------------------------------------


async def test_fencing_handover(store: StreamStore) -> None:
    await store.create_stream(BASIN, "fenced")

    await store.append(BASIN, "fenced", make_batch(records=[fence_record("a")]))
    a1 = await store.append(BASIN, "fenced", make_batch(b"a1", fencing_token="a"))
    # B takes over: its fence carries no token, so it is never fenced out itself.
    await store.append(BASIN, "fenced", make_batch(records=[fence_record("b")]))
    with pytest.raises(FencingTokenMismatch) as raised:
        await store.append(BASIN, "fenced", make_batch(b"a2", fencing_token="a"))
    assert raised.value.current_token == "b"
    b1 = await store.append(BASIN, "fenced", make_batch(b"b1", fencing_token="b"))

    assert (a1.start.seq_num, b1.start.seq_num) == (1, 3)
    records = await read_all(store, "fenced")
    assert [(r.body, [(h.name, h.value) for h in r.headers]) for r in records] == [
        (b"a", [(b"", b"fence")]),
        (b"a1", []),
        (b"b", [(b"", b"fence")]),
        (b"b1", []),
    ]


async def test_fencing_handover_while_old_writer_pipelines(store: StreamStore) -> None:
    await store.create_stream(BASIN, "handover")
    await store.append(BASIN, "handover", make_batch(records=[fence_record("a")]))
    fenced_out = asyncio.Event()
    accepted: list[asyncio.Future[AppendAck]] = []
    rejected_with: list[str] = []

    async def writer_a() -> None:
        i = 0
        after_fence = 0
        while after_fence < 30:  # keep going for a while after the fence
            after_fence += fenced_out.is_set()
            try:
                accepted.append(
                    await store.submit(
                        BASIN, "handover", make_batch(f"a{i}".encode(), fencing_token="a")
                    )
                )
            except FencingTokenMismatch as mismatch:
                rejected_with.append(mismatch.current_token)
            i += 1
            await asyncio.sleep(0)

    async def writer_b() -> None:
        for _ in range(20):
            await asyncio.sleep(0)
        ack = await store.append(BASIN, "handover", make_batch(records=[fence_record("b")]))
        fenced_out.set()
        for i in range(20):
            await store.append(BASIN, "handover", make_batch(f"b{i}".encode(), fencing_token="b"))
        assert ack.start.seq_num > 1, "the fence did not land amid A's appends"

    await asyncio.gather(writer_a(), writer_b())
    a_acks = await asyncio.gather(*accepted)

    assert rejected_with and set(rejected_with) == {"b"}
    records = await read_all(store, "handover")
    fence_b = next(r.seq_num for r in records if r.headers and r.body == b"b")
    # Everything A got acknowledged lies before B's fence; nothing of A's after it.
    assert all(ack.end.seq_num <= fence_b for ack in a_acks)
    after = [r.body for r in records if r.seq_num > fence_b]
    assert after == [f"b{i}".encode() for i in range(20)]
    assert len(a_acks) == sum(1 for r in records if r.body.startswith(b"a") and not r.headers)


# --- (f) a large batch gives other tasks turns on the loop, before and after it is sequenced


async def test_sequencing_a_large_batch_yields_before_and_after(store: StreamStore) -> None:
    await store.create_stream(BASIN, "large")
    await store.append(BASIN, "large", make_batch(b"warm"))  # the sequencer is loaded now
    for count, expected in ((1, []), (YIELD_AROUND_BATCH_RECORDS, ["first", "second"])):
        ran: list[str] = []
        spawned: list[asyncio.Task[None]] = []

        async def second(ran: list[str] = ran) -> None:
            ran.append("second")

        async def first(ran: list[str] = ran, spawned: list[asyncio.Task[None]] = spawned) -> None:
            ran.append("first")
            spawned.append(asyncio.create_task(second()))  # ready only after `first` ran

        task = asyncio.create_task(first())  # ready, but runs only when the submitter yields
        ack = await store.submit(BASIN, "large", make_batch(*[b"r"] * count))
        # `first` needs a yield before sequencing, `second` another one after it.
        assert ran == expected
        await asyncio.gather(task, ack, *spawned)
