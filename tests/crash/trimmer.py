"""The child process of the trim crash tests: fills a stream, trims it, deletes what it trimmed.

Run as `python -m tests.crash.trimmer DATA_DIR STORAGE` (STORAGE in `--storage`'s form). It
appends `BATCHES` single-record batches (record `seq` holds `body_of(seq)`) and prints `FILLED`,
appends a trim command that keeps the last `KEPT` records and prints `TRIMMED <trim point>`,
then runs the background jobs and prints `RECLAIMED`. Each line is printed only once what it
reports is durable. The jobs' turns are small (`JOBS`), so the deletion takes hundreds of
commits for the parent to kill it among.
"""

from __future__ import annotations

import asyncio
import collections
import sys

from s2s.config import StreamConfig
from s2s.records import trim_record, validate_append_input
from s2s.v1 import records_pb2 as pb
from server.jobs import JobSettings
from server.sequencer import AppendAck
from server.streamstore import StreamStore

BASIN = "trim-crash"
STREAM = "reclaim"
BATCHES = 3000
KEPT = 500
TRIM_POINT = BATCHES - KEPT
JOBS = JobSettings(
    interval_s=3600, retention_interval_s=0, batches_per_commit=4, commits_per_stream_max=2
)
"""Runs happen only when called; a turn deletes at most 8 batches, 4 per commit."""


def body_of(seq: int) -> bytes:
    return f"record {seq:08d};".encode() * 8


async def main(data_dir: str, storage: str) -> None:
    store = await StreamStore.open(data_dir, job_settings=JOBS, storage=storage)
    await store.create_basin(BASIN)
    await store.create_stream(BASIN, STREAM, StreamConfig(retention="infinite"))
    inflight: collections.deque[asyncio.Future[AppendAck]] = collections.deque()
    for seq in range(BATCHES):
        if len(inflight) >= 64:
            await inflight.popleft()
        record = pb.AppendRecord(body=body_of(seq))
        batch = validate_append_input(pb.AppendInput(records=[record]))
        inflight.append(await store.submit(BASIN, STREAM, batch))
    for ack in inflight:
        await ack
    print("FILLED", flush=True)
    trim = validate_append_input(pb.AppendInput(records=[trim_record(TRIM_POINT)]))
    await store.append(BASIN, STREAM, trim)
    print(f"TRIMMED {TRIM_POINT}", flush=True)
    await store.jobs.run_once()
    print("RECLAIMED", flush=True)
    await asyncio.Event().wait()  # until killed


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
