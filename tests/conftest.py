"""Shared fixtures: a real `StreamStore` on a temporary directory, with a controllable clock."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest

from s2s.records import ValidatedBatch, validate_append_input
from s2s.v1 import records_pb2 as pb
from server.jobs import JobSettings
from server.streamstore import StreamStore

BASIN = "test-basin"

MANUAL_JOBS = JobSettings(interval_s=3600, retention_interval_s=0)
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
    path: object, clock: ManualClock, job_settings: JobSettings = MANUAL_JOBS
) -> AsyncIterator[StreamStore]:
    """A `StreamStore` in `path` with `BASIN` created, closed on exit."""
    opened = await StreamStore.open(str(path), clock=clock, job_settings=job_settings)
    await opened.create_basin(BASIN)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def store(tmp_path: object, clock: ManualClock) -> AsyncIterator[StreamStore]:
    async with open_store(tmp_path, clock) as opened:
        yield opened
