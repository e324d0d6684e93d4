"""Shared fixtures: a real `StreamStore` with a controllable clock, on each storage engine:
LMDB in a temporary directory, and a PostgreSQL database (one durable server per test worker,
its tables emptied before each test). In the suite's PostgreSQL mode (`S2S_TEST_STORAGE=postgres`,
tests/storage_mode.py) stores run on PostgreSQL only, and tests marked `lmdb_only` are skipped."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator

import pytest

from s2s.records import ValidatedBatch, validate_append_input
from s2s.v1 import records_pb2 as pb
from server.jobs import JobSettings
from server.storage.choice import LMDB
from server.streamstore import StreamStore
from tests.storage_mode import (
    empty_tables,
    postgres_database,
    postgres_mode,
    stop_postgres_server,
    storage_for,
)

BASIN = "test-basin"

MANUAL_JOBS = JobSettings(
    interval_s=3600, retention_interval_s=0, reclaim_interval_s=0, scheduled=False
)
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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """In the PostgreSQL mode, skips the tests about LMDB itself, each with its reason."""
    if not postgres_mode():
        return
    for item in items:
        marker = item.get_closest_marker("lmdb_only")
        if marker is not None:
            reason = marker.args[0] if marker.args else "a test of LMDB itself"
            item.add_marker(pytest.mark.skip(reason=f"LMDB only: {reason}"))


@pytest.fixture(scope="session", autouse=True)
def _postgres_server_stopped() -> Iterator[None]:
    """Stops this worker's PostgreSQL server, if a test started it, when the session ends."""
    yield
    stop_postgres_server()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@contextlib.asynccontextmanager
async def open_store(
    path: object,
    clock: ManualClock,
    job_settings: JobSettings = MANUAL_JOBS,
    storage: str | None = None,
) -> AsyncIterator[StreamStore]:
    """A `StreamStore` in `path` (or `storage`; by default the suite's storage of `path`) with
    `BASIN` created, closed on exit."""
    opened = await StreamStore.open(
        str(path),
        clock=clock,
        job_settings=job_settings,
        storage=storage_for(path) if storage is None else storage,
    )
    await opened.create_basin(BASIN)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture(scope="session")
def postgres_storage() -> str:
    """`--storage` for a database on this test worker's durable PostgreSQL server."""
    return postgres_database("s2s_store")


@pytest.fixture(params=["postgres"] if postgres_mode() else [LMDB, "postgres"])
def storage(request: pytest.FixtureRequest) -> str:
    """Each engine in turn: `lmdb`, or a PostgreSQL database emptied for this test (only the
    latter in the PostgreSQL mode)."""
    if request.param == LMDB:
        return LMDB
    storage: str = request.getfixturevalue("postgres_storage")
    empty_tables(storage)
    return storage


@pytest.fixture
async def store(tmp_path: object, clock: ManualClock, storage: str) -> AsyncIterator[StreamStore]:
    async with open_store(tmp_path, clock, storage=storage) as opened:
        yield opened
