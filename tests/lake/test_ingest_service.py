"""Ingest's append of a request's rows (pipelined batches, what a partial failure says) and the
watch through which a waiting request learns its rejected rows (server/lake/ingest_service.py,
server/lake/watch.py)."""

from __future__ import annotations

import asyncio

import pytest

from s2s.errors import S2Error
from s2s.records import ValidatedBatch
from server.lake.apply import ApplyResult
from server.lake.definition import MaterializationSpec, build_materialization
from server.lake.ingest import IngestRequest
from server.lake.ingest_service import PlacedBatch, append_rows
from server.lake.watch import AppliedWatch
from server.sequencer import AppendAck, StreamPosition

DEFINITION = build_materialization(MaterializationSpec(name="t", table="s.t"))


class PipelineStore:
    """Sequences batches as `StreamStore.submit` does; each ack completes when the test says,
    with success or with an error."""

    def __init__(self, refuse_at: int | None = None) -> None:
        self.refuse_at = refuse_at
        self.acks: list[asyncio.Future[AppendAck]] = []
        self.positions: list[tuple[int, int]] = []
        self.next_seq = 100  # the stream already holds other records

    async def submit(
        self, basin: str, stream: str, batch: ValidatedBatch
    ) -> asyncio.Future[AppendAck]:
        if len(self.acks) == self.refuse_at:
            raise S2Error("stream_deletion_pending", "stream 's.t' is being deleted")
        ack: asyncio.Future[AppendAck] = asyncio.get_running_loop().create_future()
        start = self.next_seq
        self.next_seq += batch.count
        self.acks.append(ack)
        self.positions.append((start, self.next_seq))
        return ack

    def complete(self, *outcomes: bool) -> None:
        """Ack (True) or fail (False) the batches submitted, in order."""
        for ack, (start, end), ok in zip(self.acks, self.positions, outcomes, strict=True):
            if ok:
                tail = StreamPosition(end, 0)
                ack.set_result(AppendAck(StreamPosition(start, 0), tail, tail))
            else:
                ack.set_exception(S2Error("unavailable", "the disk is full"))


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


async def started(pipeline: PipelineStore, rows: int) -> asyncio.Task[list[PlacedBatch]]:
    """`append_rows` running, once it has submitted what it could."""
    task = asyncio.create_task(append_rows(pipeline, DEFINITION, request(rows)))  # type: ignore[arg-type]
    for _ in range(10):
        await asyncio.sleep(0)
    return task


async def test_every_batch_is_submitted_before_any_ack_is_awaited() -> None:
    pipeline = PipelineStore()
    task = await started(pipeline, 2500)
    assert len(pipeline.acks) == 3 and not task.done()
    pipeline.complete(True, True, True)
    placed = await task
    assert [(p.start_seq, p.end_seq, p.first_row) for p in placed] == [
        (100, 1100, 0),
        (1100, 2100, 1000),
        (2100, 2600, 2000),
    ]


async def test_a_failed_batch_reports_the_rows_before_it_as_durable() -> None:
    pipeline = PipelineStore()
    task = await started(pipeline, 2500)
    pipeline.complete(True, False, False)
    with pytest.raises(S2Error) as info:
        await task
    assert info.value.code == "unavailable"
    assert "the first 1000 accepted rows are already durable" in info.value.message


async def test_a_batch_that_lands_behind_a_failed_one_is_reported_too() -> None:
    pipeline = PipelineStore()
    task = await started(pipeline, 2500)
    pipeline.complete(True, False, True)
    with pytest.raises(S2Error) as info:
        await task
    assert "accepted rows 0-999, 2000-2499 are already durable" in info.value.message


async def test_nothing_durable_is_the_error_itself() -> None:
    pipeline = PipelineStore()
    task = await started(pipeline, 2500)
    pipeline.complete(False, False, False)
    with pytest.raises(S2Error) as info:
        await task
    assert info.value.message == "the disk is full"


async def test_a_refused_submit_waits_for_the_batches_before_it() -> None:
    pipeline = PipelineStore(refuse_at=2)
    task = await started(pipeline, 2500)
    assert len(pipeline.acks) == 2 and not task.done()
    pipeline.complete(True, True)
    with pytest.raises(S2Error) as info:
        await task
    assert info.value.code == "stream_deletion_pending"
    assert "the first 2000 accepted rows are already durable" in info.value.message


async def test_a_cancelled_request_leaves_its_acks_to_the_store() -> None:
    pipeline = PipelineStore()
    task = await started(pipeline, 2500)
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
