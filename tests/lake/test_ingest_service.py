"""Ingest's append of a request's rows (pipelined batches, what a partial failure says) and the
watch through which a waiting request learns its rejected rows (server/lake/ingest_service.py,
server/lake/watch.py).

The rows go through a real `StreamStore` (on LMDB, or on PostgreSQL in the suite's PostgreSQL
mode) wrapped in a `FaultyStore` (tests/crash/faults.py): a held commit keeps acks pending, and
a failed one fails its appends and those pipelined behind it, as a full disk does.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import pytest

from s2s.errors import S2Error
from s2s.records import ValidatedBatch
from server.lake.apply import ApplyResult
from server.lake.definition import MaterializationSpec, build_materialization
from server.lake.ingest import IngestRequest
from server.lake.ingest_service import PlacedBatch, append_rows
from server.lake.watch import AppliedWatch
from server.sequencer import AppendAck
from server.storage.kv import StorageFull, Write
from server.streamstore import StreamStore
from tests.conftest import ManualClock, make_batch
from tests.crash.faults import FaultyStore, Gate
from tests.crash.test_faults import SETTINGS, entered, recovered
from tests.storage_mode import key_value_store

DEFINITION = build_materialization(MaterializationSpec(name="t", table="s.t"))


class DiskFullStore(FaultyStore):
    """A `FaultyStore` whose failed commits fail as a full disk does (503 `unavailable`)."""

    def commit(self, writes: Sequence[Write]) -> None:
        try:
            super().commit(writes)
        except OSError as error:
            if error.errno != errno.EIO:
                raise
            raise StorageFull("the disk is full") from error


class Pipeline:
    """The real store's `submit`, recording each ack in order; `between(n)` runs after the
    n-th submit, so a test can order commits around the request's batches."""

    def __init__(self, store: StreamStore) -> None:
        self.store = store
        self.acks: list[asyncio.Future[AppendAck]] = []
        self.between: Callable[[int], Awaitable[None]] | None = None

    async def submit(
        self, basin: str, stream: str, batch: ValidatedBatch
    ) -> asyncio.Future[AppendAck]:
        ack = await self.store.submit(basin, stream, batch)
        self.acks.append(ack)
        if self.between is not None:
            await self.between(len(self.acks))
        return ack


class Rig:
    def __init__(self, store: StreamStore, kv: DiskFullStore) -> None:
        self.store = store
        self.kv = kv
        self.pipeline = Pipeline(store)
        self.gates: list[Gate] = []

    def hold(self) -> Gate:
        """Hold the next commit until the gate is released (at the latest when the test ends)."""
        gate = self.kv.hold_commit()
        self.gates.append(gate)
        return gate


@pytest.fixture
async def rig(tmp_path: Path, clock: ManualClock) -> AsyncIterator[Rig]:
    kv = DiskFullStore(key_value_store(tmp_path))
    store = StreamStore(kv, clock, SETTINGS)
    await store.start()
    rig = Rig(store, kv)
    try:
        await store.create_basin(DEFINITION.basin)
        await store.create_stream(DEFINITION.basin, DEFINITION.stream)
        # The stream already holds another writer's records.
        await store.append(DEFINITION.basin, DEFINITION.stream, make_batch(*[b"x"] * 100))
        yield rig
    finally:
        for gate in rig.gates:
            gate.release.set()
        await store.close()


def request(rows: int) -> IngestRequest:
    return IngestRequest(
        schema="s",
        table="t",
        mode="append",
        primary_key=None,
        wait=False,
        tags={},
        rows=[b'{"i":%d}' % i for i in range(rows)],
        row_indexes=list(range(rows)),
        rejected=[],
    )


async def started(pipeline: Pipeline, rows: int, submits: int) -> asyncio.Task[list[PlacedBatch]]:
    """`append_rows` running, once it has made `submits` submits (at most 10 s)."""
    task = asyncio.create_task(append_rows(pipeline, DEFINITION, request(rows)))  # type: ignore[arg-type]
    for _ in range(10_000):
        if len(pipeline.acks) >= submits or task.done():
            break
        await asyncio.sleep(0.001)
    for _ in range(10):
        await asyncio.sleep(0)
    return task


async def test_every_batch_is_submitted_before_any_ack_is_awaited(rig: Rig) -> None:
    gate = rig.hold()
    pipeline = rig.pipeline
    task = await started(pipeline, 2500, submits=3)
    assert len(pipeline.acks) == 3 and not task.done()
    gate.release.set()
    placed = await task
    assert [(p.start_seq, p.end_seq, p.first_row) for p in placed] == [
        (100, 1100, 0),
        (1100, 2100, 1000),
        (2100, 2600, 2000),
    ]


async def test_a_failed_batch_reports_the_rows_before_it_as_durable(rig: Rig) -> None:
    gate = rig.hold()

    async def between(submits: int) -> None:
        if submits == 1:  # the first batch commits alone, the next commit fails
            await entered(gate)
            rig.kv.fail_commit()

    rig.pipeline.between = between
    task = await started(rig.pipeline, 2500, submits=3)
    gate.release.set()
    with pytest.raises(S2Error) as info:
        await task
    assert info.value.code == "unavailable"
    assert "the first 1000 accepted rows are already durable" in info.value.message


async def test_a_batch_that_lands_behind_a_failed_one_is_reported_too(rig: Rig) -> None:
    gate = rig.hold()

    async def between(submits: int) -> None:
        if submits == 1:  # the first batch commits alone, the second one's commit fails
            await entered(gate)
            rig.kv.fail_commit()
        elif submits == 2:  # the third is submitted once the store has recovered
            gate.release.set()
            await asyncio.wait([rig.pipeline.acks[1]])
            await recovered(rig.store)

    rig.pipeline.between = between
    task = await started(rig.pipeline, 2500, submits=3)
    with pytest.raises(S2Error) as info:
        await task
    assert "accepted rows 0-999, 2000-2499 are already durable" in info.value.message


async def test_nothing_durable_is_the_error_itself(rig: Rig) -> None:
    gate = rig.hold()
    rig.kv.fail_commit()  # the held commit, once released
    task = await started(rig.pipeline, 2500, submits=3)
    gate.release.set()
    with pytest.raises(S2Error) as info:
        await task
    assert info.value.message == "the disk is full"


async def test_a_refused_submit_waits_for_the_batches_before_it(rig: Rig) -> None:
    gate = rig.hold()

    async def between(submits: int) -> None:
        if submits == 2:  # the stream's deletion commits behind the two batches
            await rig.store.delete_stream(DEFINITION.basin, DEFINITION.stream)

    pipeline = rig.pipeline
    pipeline.between = between
    task = await started(pipeline, 2500, submits=2)
    assert len(pipeline.acks) == 2 and not task.done()
    gate.release.set()
    with pytest.raises(S2Error) as info:
        await task
    assert info.value.code == "stream_deletion_pending"
    assert "the first 2000 accepted rows are already durable" in info.value.message


async def test_a_cancelled_request_leaves_its_acks_to_the_store(rig: Rig) -> None:
    rig.hold()
    pipeline = rig.pipeline
    task = await started(pipeline, 2500, submits=3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Cancelled futures: the sequencer's callback sees nobody waits, and the outcome stands.
    assert all(ack.cancelled() for ack in pipeline.acks)


def applied(last_seq_num: int, *rejections: tuple[int, str]) -> ApplyResult:
    return ApplyResult(last_seq_num, 0, rejections, snapshot_id=last_seq_num * 10)


async def test_a_watch_keeps_the_rejections_of_the_expected_range() -> None:
    watch = AppliedWatch()
    # Committed before the append was acked: kept until the range is known.
    watch.note(applied(9, (5, "someone else's"), (9, "ours, early")))
    watch.expect(9, 20)
    watch.note(applied(15, (12, "ours")))
    watch.note(applied(25, (21, "after ours"), (20, "ours, last")))
    assert watch.rejections == [(9, "ours, early"), (12, "ours"), (20, "ours, last")]
    assert await watch.snapshot(1.0) == 250


async def test_a_released_watch_answers_none_and_an_unexpected_one_keeps_waiting() -> None:
    idle = AppliedWatch()
    idle.release()  # not waiting yet: nothing to answer
    idle.expect(0, 5)
    assert await idle.snapshot(0.01) is None  # timed out, not released
    waiting = AppliedWatch()
    waiting.expect(0, 5)
    waiting.release()
    assert await waiting.snapshot(10.0) is None
