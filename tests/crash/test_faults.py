"""Fault injection: storage commits that fail, and what the engine promises when they do.

The store runs on a `FaultyStore` (tests/crash/faults.py) around real LMDB, which fails chosen
commits before anything lands. The promises checked:

- a failed commit fails exactly the appends in it and those pipelined behind it, with the
  `storage` error code, and never acknowledges them; appends before it are acknowledged;
- afterwards appends succeed again and continue from the last durable record, so the failed
  batch's (never acknowledged) sequence numbers go to the next successful batch: no gap;
- after close and reopen the data is exactly the acknowledged batches, in order;
- under a pipelined flood over several streams with failures sprinkled in, every append is
  either acknowledged or failed with `storage`, and the acknowledged ones alone make up each
  stream, densely numbered, before and after reopening;
- a failed control-plane commit creates nothing; an append abandoned by its caller while its
  commit fails leaves no trace that blocks deleting the stream; and a job whose encoding
  fails never makes a stream reuse acknowledged sequence numbers.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from s2s.errors import S2Error
from server.jobs import JobSettings
from server.reader import ReadLimits, ReadStart
from server.sequencer import AppendAck
from server.storage.kv import Write
from server.streamstore import StreamStore
from tests.conftest import BASIN, ManualClock, decode, make_batch
from tests.crash.faults import FaultyStore, Gate
from tests.storage_mode import key_value_store, storage_for

SETTINGS = JobSettings(interval_s=3600)


@asynccontextmanager
async def faulty_store(
    path: Path, clock: ManualClock
) -> AsyncIterator[tuple[StreamStore, FaultyStore]]:
    kv = FaultyStore(key_value_store(path), seed=1)
    store = StreamStore(kv, clock, SETTINGS)
    await store.start()
    try:
        yield store, kv
    finally:
        await store.close()


async def entered(gate: Gate) -> None:
    assert await asyncio.to_thread(gate.entered.wait, 10), "the held commit never started"


async def bodies(store: StreamStore, stream: str) -> list[bytes]:
    """Every record body of the stream, checking that sequence numbers are dense up to the tail."""
    tail = (await store.check_tail(BASIN, stream)).seq_num
    found: list[bytes] = []
    while len(found) < tail:
        out = await store.read(BASIN, stream, ReadStart(seq_num=len(found)), ReadLimits())
        assert out.records is not None
        for record in decode(out.records.payload):
            assert record.seq_num == len(found), f"gap before {record.seq_num} in {stream}"
            found.append(record.body)
    return found


async def storage_error(future: asyncio.Future[AppendAck]) -> S2Error:
    with pytest.raises(S2Error) as raised:
        await future
    assert raised.value.code == "storage"
    return raised.value


async def append_when_recovered(store: StreamStore, stream: str, *body: bytes) -> AppendAck:
    """Append, retrying while the engine still rejects appends as recovering from a failure."""
    for _ in range(200):
        try:
            return await store.append(BASIN, stream, make_batch(*body))
        except S2Error as error:
            assert error.code == "storage"
            await asyncio.sleep(0.01)
    raise AssertionError("appends kept failing after the injected failure")


async def recovered(store: StreamStore) -> None:
    """Wait until the engine accepts work again after a failure (an empty commit succeeds)."""
    for _ in range(200):
        try:
            return await store.committer.commit([])
        except S2Error as error:
            assert error.code == "storage"
            await asyncio.sleep(0.01)
    raise AssertionError("the engine kept rejecting work after the injected failure")


def span(ack: AppendAck) -> tuple[int, int]:
    return ack.start.seq_num, ack.end.seq_num


async def test_failed_commit_fails_exactly_its_appends_and_those_behind_it(
    tmp_path: Path, clock: ManualClock
) -> None:
    async with faulty_store(tmp_path, clock) as (store, kv):
        await store.create_basin(BASIN)
        await store.create_stream(BASIN, "s")
        await store.create_stream(BASIN, "t")
        assert span(await store.append(BASIN, "s", make_batch(b"s0", b"s1"))) == (0, 2)

        gate = kv.hold_commit()
        before = await store.submit(BASIN, "s", make_batch(b"s2"))
        await entered(gate)
        failing = kv.fail_commit()
        behind = [
            await store.submit(BASIN, "s", make_batch(b"x0", b"x1", b"x2")),
            await store.submit(BASIN, "t", make_batch(b"y0")),
            await store.submit(BASIN, "s", make_batch(b"x3")),
        ]
        # Pipelined while `before` is being written: their sequence numbers are already taken.
        await asyncio.sleep(0.05)
        gate.release.set()

        assert span(await before) == (2, 3)
        for future in behind:
            await storage_error(future)
        assert kv.failed == [failing]
        assert (await store.check_tail(BASIN, "s")).seq_num == 3
        assert (await store.check_tail(BASIN, "t")).seq_num == 0
        assert await bodies(store, "s") == [b"s0", b"s1", b"s2"]
        assert await bodies(store, "t") == []


async def test_appends_after_a_failed_commit_continue_from_the_durable_tail(
    tmp_path: Path, clock: ManualClock
) -> None:
    async with faulty_store(tmp_path, clock) as (store, kv):
        await store.create_basin(BASIN)
        await store.create_stream(BASIN, "s")
        await store.append(BASIN, "s", make_batch(b"a0", b"a1"))

        kv.fail_commit()
        with pytest.raises(S2Error) as raised:
            await store.append(BASIN, "s", make_batch(b"lost0", b"lost1", b"lost2"))
        assert raised.value.code == "storage"

        # The failed batch had 2..5; it was never acknowledged, so 2 is next, not 5.
        assert span(await append_when_recovered(store, "s", b"c0")) == (2, 3)
        pipelined = [await store.submit(BASIN, "s", make_batch(b"d", b"e")) for _ in range(3)]
        assert [span(await f) for f in pipelined] == [(3, 5), (5, 7), (7, 9)]

        # Two failures in a row (the second hits the first append after recovering).
        kv.fail_commit()
        kv.fail_commit(after=1)
        await storage_error(await store.submit(BASIN, "s", make_batch(b"lost3")))
        retried = await append_when_recovered(store, "s", b"f0")
        assert span(retried) == (9, 10)
        assert len(kv.failed) == 3
        assert await bodies(store, "s") == [b"a0", b"a1", b"c0", *[b"d", b"e"] * 3, b"f0"]
        assert retried.tail.seq_num == 10


async def test_reopen_after_failed_commits_holds_exactly_the_acknowledged_batches(
    tmp_path: Path, clock: ManualClock
) -> None:
    acked: dict[str, list[bytes]] = {"s": [], "t": []}
    async with faulty_store(tmp_path, clock) as (store, kv):
        await store.create_basin(BASIN)
        for name in acked:
            await store.create_stream(BASIN, name)
        for round_ in range(6):
            failing = round_ % 2 == 1
            if failing:
                kv.fail_commit()
            batches = [
                (name, [f"{name}{round_}.{i}".encode() for i in range(round_ + 1)])
                for name in ("s", "t", "s")
            ]
            submitted = [
                (await store.submit(BASIN, name, make_batch(*batch)), name, batch)
                for name, batch in batches
            ]
            for future, name, batch in submitted:
                if failing:
                    # The first batch is in the failing commit, the others behind it.
                    await storage_error(future)
                    continue
                ack = await future
                assert ack.start.seq_num == len(acked[name])
                acked[name].extend(batch)
            # A failure can reach us before the engine is done recovering from it.
            await recovered(store)
        assert len(kv.failed) == 3
        assert acked["s"] and acked["t"]

    reopened = await StreamStore.open(
        str(tmp_path), clock=clock, job_settings=SETTINGS, storage=storage_for(tmp_path)
    )
    try:
        for name, expected in acked.items():
            assert await bodies(reopened, name) == expected
            ack = await reopened.append(BASIN, name, make_batch(b"after"))
            assert ack.start.seq_num == len(expected)
    finally:
        await reopened.close()


async def test_failures_during_a_pipelined_flood_over_several_streams(
    tmp_path: Path, clock: ManualClock
) -> None:
    streams = [f"flood-{i}" for i in range(4)]
    acked: dict[str, list[tuple[int, int, list[bytes]]]] = {name: [] for name in streams}
    outcomes = {"acked": 0, "failed": 0}

    async def flood(store: StreamStore, name: str, rng: random.Random) -> None:
        window: list[tuple[asyncio.Future[AppendAck], list[bytes]]] = []

        async def settle(future: asyncio.Future[AppendAck], batch: list[bytes]) -> None:
            try:
                ack = await future
            except S2Error as error:
                assert error.code == "storage", error
                outcomes["failed"] += 1
                return
            outcomes["acked"] += 1
            acked[name].append((ack.start.seq_num, ack.end.seq_num, batch))

        for batch_id in range(120):
            batch = [f"{name}/{batch_id}/{i}".encode() * rng.randint(1, 40) for i in range(20)]
            batch = batch[: rng.randint(1, 20)]
            window.append((await store.submit(BASIN, name, make_batch(*batch)), batch))
            while len(window) > rng.randint(0, 8):
                await settle(*window.pop(0))
            if rng.random() < 0.1:
                await asyncio.sleep(0)
        for entry in window:
            await settle(*entry)

    async with faulty_store(tmp_path, clock) as (store, kv):
        await store.create_basin(BASIN)
        for name in streams:
            await store.create_stream(BASIN, name)
        # Fixed failures that are sure to fall inside the flood, and random ones on top.
        for after in (2, 6, 11):
            kv.fail_commit(after=after)
        kv.failure_rate = 0.05
        await asyncio.gather(*(flood(store, n, random.Random(i)) for i, n in enumerate(streams)))
        kv.failure_rate = 0.0

        assert len(kv.failed) >= 3
        assert outcomes["failed"] >= 3 and outcomes["acked"] >= 100, outcomes
        expected: dict[str, list[bytes]] = {}
        for name in streams:
            # The acknowledged batches alone tile the stream from 0, in ack order.
            position = 0
            expected[name] = []
            for start, end, batch in acked[name]:
                assert (start, end) == (position, position + len(batch)), name
                position = end
                expected[name].extend(batch)
            assert await bodies(store, name) == expected[name]

    reopened = await StreamStore.open(
        str(tmp_path), clock=clock, job_settings=SETTINGS, storage=storage_for(tmp_path)
    )
    try:
        for name in streams:
            assert await bodies(reopened, name) == expected[name]
            ack = await reopened.append(BASIN, name, make_batch(b"after"))
            assert ack.start.seq_num == len(expected[name])
    finally:
        await reopened.close()


async def test_failed_control_plane_commit_creates_nothing(
    tmp_path: Path, clock: ManualClock
) -> None:
    async with faulty_store(tmp_path, clock) as (store, kv):
        await store.create_basin(BASIN)
        await store.create_stream(BASIN, "s")
        await store.append(BASIN, "s", make_batch(b"a"))
        kv.fail_commit()
        with pytest.raises(S2Error) as raised:
            await store.create_stream(BASIN, "new")
        assert raised.value.code == "storage"
        with pytest.raises(S2Error) as missing:
            store.get_stream(BASIN, "new")
        assert missing.value.code == "stream_not_found"

        assert span(await append_when_recovered(store, "s", b"b")) == (1, 2)
        await store.create_stream(BASIN, "new")
        assert span(await store.append(BASIN, "new", make_batch(b"n"))) == (0, 1)
        assert await bodies(store, "s") == [b"a", b"b"]


async def test_cancelled_append_whose_commit_fails_does_not_block_stream_deletion(
    tmp_path: Path, clock: ManualClock
) -> None:
    # A client that gives up (the awaiting task is cancelled) while its commit fails must not
    # leave the stream counted as having an append in flight: deletion waits for those.
    async with faulty_store(tmp_path, clock) as (store, kv):
        await store.create_basin(BASIN)
        await store.create_stream(BASIN, "s")
        gate = kv.hold_commit()
        kv.fail_commit()
        task = asyncio.create_task(store.append(BASIN, "s", make_batch(b"x")))
        await entered(gate)
        task.cancel()
        gate.release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert span(await append_when_recovered(store, "s", b"y")) == (0, 1)

        await store.delete_stream(BASIN, "s")
        # Let the jobs' own loop take the kick first, so close() does not hit the hang that
        # test_shutdown.py shows.
        await asyncio.sleep(0.05)
        await store.jobs.run_once()
        assert store.catalog.get_stream(BASIN, "s") is None, "the deleted stream was never removed"
        await store.create_stream(BASIN, "s")


async def test_failed_prepare_does_not_rewind_a_stream_behind_its_durable_tail(
    tmp_path: Path, clock: ManualClock
) -> None:
    # The committer also handles a job whose `prepare` raises (encoding fails). If that
    # happens while an earlier group is being written, that group still lands and is
    # acknowledged; the recovery must not make the stream reuse its sequence numbers.
    async with faulty_store(tmp_path, clock) as (store, kv):
        await store.create_basin(BASIN)
        await store.create_stream(BASIN, "s")
        await store.append(BASIN, "s", make_batch(b"a"))
        gate = kv.hold_commit()
        held = await store.submit(BASIN, "s", make_batch(b"b0", b"b1"))
        await entered(gate)

        def broken() -> Sequence[Write]:
            raise RuntimeError("injected encoding failure")

        failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def on_done(error: S2Error | None) -> None:
            if error is None:
                failed.set_result(None)
            else:
                failed.set_exception(error)

        store.committer.submit(broken, on_done)
        # Give the failure every chance to be handled while `held` is still being written.
        await asyncio.wait([failed], timeout=0.5)
        gate.release.set()
        assert span(await held) == (1, 3)
        with pytest.raises(S2Error) as raised:
            await failed
        assert raised.value.code == "storage"

        after = await append_when_recovered(store, "s", b"c")
        assert span(after) == (3, 4), "acknowledged sequence numbers were reused"
        assert await bodies(store, "s") == [b"a", b"b0", b"b1", b"c"]
