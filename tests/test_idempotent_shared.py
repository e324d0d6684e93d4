"""Idempotent appends across nodes sharing one PostgreSQL database (ADR 0013, ADR 0016): a
producer's retry through another node gets the original ack, and a node whose view of the
producer is stale (it heard no notices) never writes a retried batch again: its commit expects
the tail and the producer's row it numbered from, conflicts, and the batch is checked again on
the producer as stored."""

from __future__ import annotations

import pytest

from server.sequencer import AppendAck
from tests.conftest import BASIN, MANUAL_JOBS, ManualClock
from tests.storage_mode import empty_tables
from tests.test_idempotent_appends import bodies, idempotent, positions
from tests.test_shared_store import Deaf, node

STREAM = "idem-shared"


@pytest.fixture
def shared_db(postgres_storage: str) -> str:
    empty_tables(postgres_storage)
    return postgres_storage


async def test_a_retry_through_another_node_gets_the_original_ack(
    shared_db: str, clock: ManualClock
) -> None:
    async with node(shared_db, clock) as a, node(shared_db, clock) as b:
        await a.create_basin(BASIN)
        await a.create_stream(BASIN, STREAM)
        first = await a.append(BASIN, STREAM, idempotent("p", 0, b"a"))
        retried = await b.append(BASIN, STREAM, idempotent("p", 0, b"a"))
        assert positions(retried) == positions(first)
        next_ack = await b.append(BASIN, STREAM, idempotent("p", 1, b"b"))
        assert next_ack.start.seq_num == 1
        assert await bodies(a, STREAM) == [b"a", b"b"]


async def test_a_node_with_a_stale_view_of_the_producer_answers_its_retries(
    shared_db: str, clock: ManualClock
) -> None:
    async with (
        node(shared_db, clock, MANUAL_JOBS) as a,
        node(shared_db, clock, MANUAL_JOBS, Deaf) as b,
    ):
        await a.create_basin(BASIN)
        await a.create_stream(BASIN, STREAM)
        await b.append(BASIN, STREAM, idempotent("p", 0, b"zero"))  # b knows p up to 0
        originals: list[AppendAck] = [
            await a.append(BASIN, STREAM, idempotent("p", n, b"%d" % n)) for n in (1, 2)
        ]
        # Pipelined through b, which still takes 1 and 2 for new batches: both commits
        # conflict, and checked again on the stored row both are retries.
        pending = [await b.submit(BASIN, STREAM, idempotent("p", n, b"%d" % n)) for n in (1, 2)]
        retried = [await ack for ack in pending]
        assert [positions(ack) for ack in retried] == [positions(ack) for ack in originals]
        assert b.committer.conflicts >= 1, "b numbered them as new batches first"
        assert (await b.append(BASIN, STREAM, idempotent("p", 3, b"3"))).start.seq_num == 3
        assert await bodies(a, STREAM) == [b"zero", b"1", b"2", b"3"]
