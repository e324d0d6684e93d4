"""Shared fixtures: a real `StreamStore` with a controllable clock, on each storage engine:
LMDB in a temporary directory, and a PostgreSQL database (one durable server per test worker,
its tables emptied before each test)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator

import psycopg
import pytest

from s2s.records import ValidatedBatch, validate_append_input
from s2s.v1 import records_pb2 as pb
from server.jobs import JobSettings
from server.storage.choice import LMDB, POSTGRES_PREFIX
from server.storage.kv import Table
from server.storage.postgres import table_name
from server.streamstore import StreamStore
from tests.postgres import running_postgres

BASIN = "test-basin"

MANUAL_JOBS = JobSettings(interval_s=3600, retention_interval_s=0, reclaim_interval_s=0)
"""Background jobs that run only when a test calls `store.jobs.run_once()`, sweeping fully."""


class ManualClock:
    """Wall clock in ms that tests move by hand."""

    def __init__(self, now_ms: int = 1_700_000_000_000) -> None:
        self.now = now_ms

    def now_ms(self) -> int:
        return self.now

    def advance(self, ms: int) -> None:
        self.now += ms


def make_batch(
    *bodies: bytes,
    timestamps: list[int | None] | None = None,
    match_seq_num: int | None = None,
    fencing_token: str | None = None,
    records: list[pb.AppendRecord] | None = None,
) -> ValidatedBatch:
    if records is None:
        records = []
        for i, body in enumerate(bodies):
            record = pb.AppendRecord(body=body)
            if timestamps is not None and timestamps[i] is not None:
                record.timestamp = timestamps[i]  # type: ignore[assignment]
            records.append(record)
    message = pb.AppendInput(records=records)
    if match_seq_num is not None:
        message.match_seq_num = match_seq_num
    if fencing_token is not None:
        message.fencing_token = fencing_token
    return validate_append_input(message)


def decode(payload: bytes) -> list[pb.SequencedRecord]:
    return list(pb.ReadBatch.FromString(payload).records)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@contextlib.asynccontextmanager
async def open_store(
    path: object,
    clock: ManualClock,
    job_settings: JobSettings = MANUAL_JOBS,
    storage: str = LMDB,
) -> AsyncIterator[StreamStore]:
    """A `StreamStore` in `path` (or `storage`) with `BASIN` created, closed on exit."""
    opened = await StreamStore.open(
        str(path), clock=clock, job_settings=job_settings, storage=storage
    )
    await opened.create_basin(BASIN)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture(scope="session")
def postgres_storage() -> Iterator[str]:
    """`--storage` for a durable PostgreSQL server of this test worker's own."""
    with running_postgres(dbname="s2s_store", durable=True) as server:
        yield POSTGRES_PREFIX + server.libpq()


def _empty_tables(storage: str) -> None:
    with psycopg.connect(storage[len(POSTGRES_PREFIX) :], autocommit=True) as connection:
        names = [table_name(table) for table in Table]
        existing = connection.execute(
            "SELECT tablename FROM pg_tables WHERE tablename = ANY(%s)", (names,)
        ).fetchall()
        if existing:
            connection.execute(f"TRUNCATE {', '.join(row[0] for row in existing)}")


@pytest.fixture(params=[LMDB, "postgres"])
def storage(request: pytest.FixtureRequest) -> str:
    """Each engine in turn: `lmdb`, or a PostgreSQL database emptied for this test."""
    if request.param == LMDB:
        return LMDB
    storage: str = request.getfixturevalue("postgres_storage")
    _empty_tables(storage)
    return storage


@pytest.fixture
async def store(tmp_path: object, clock: ManualClock, storage: str) -> AsyncIterator[StreamStore]:
    async with open_store(tmp_path, clock, storage=storage) as opened:
        yield opened
