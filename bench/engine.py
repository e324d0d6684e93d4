"""Engine benchmarks: durable append throughput and read throughput, in-process.

    .venv/bin/python bench/engine.py [--reps 3] [--only a,b,c,read,reclaim] [--read-gib 1]

(a) 1000 x 1 KiB batches on one stream, 16 batches in flight (pipelined `submit`);
(b) single 1 KiB records from 64 concurrent writers over 1000 streams, each writer waiting
    for its ack before the next append (group commit is what makes this fast); with the CPU
    this process and PostgreSQL's processes spent per record (where the time goes);
(c) sequential conditional appends: one writer, single 1 KiB records each with
    `match_seq_num` at the tail, each waiting for its ack (no group commit to share: the
    engine's commit latency);
(read) a 1 GiB stream read from seq 0 through `Reader.session`;
(reclaim) a stream of 100,000 single-record batches is trimmed, and one run of the background
    jobs (the server's settings) deletes them while another stream takes single-record appends
    paced at 500/s: how fast trimmed data is reclaimed, and what that costs appends meanwhile.

Every append is durable (fsync'd) before its ack. Data lives in a temporary directory on the
disk of $TMPDIR. Each scenario prints the median (min, max) of `--reps` runs, after a probe line
(1 KiB append+fdatasync latency and a CPU loop) because this VM drifts.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import functools
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from benchlib import percentile, probe, processes_cpu_s

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from s2s.config import StreamConfig  # noqa: E402
from s2s.records import ValidatedBatch, trim_record, validate_append_input  # noqa: E402
from s2s.v1 import records_pb2 as pb  # noqa: E402
from server.cli import GIL_SWITCH_INTERVAL_S  # noqa: E402
from server.jobs import JobSettings  # noqa: E402
from server.reader import ReadLimits, ReadStart  # noqa: E402
from server.sequencer import AppendAck  # noqa: E402
from server.storage.kv import Table  # noqa: E402
from server.storage.layout import batch_key  # noqa: E402
from server.streamstore import StreamStore  # noqa: E402
from tests.postgres import running_postgres  # noqa: E402

BASIN = "bench-basin"
RECORD_BYTES = 1024
MIB = 1024 * 1024


def batch_of(count: int) -> ValidatedBatch:
    body = os.urandom(RECORD_BYTES)
    return validate_append_input(
        pb.AppendInput(records=[pb.AppendRecord(body=body) for _ in range(count)])
    )


STORAGE = ["lmdb"]
"""The engine the scenarios run on (`--engines`): `lmdb`, or a `postgres:` connection string."""


async def open_store(path: str, job_settings: JobSettings | None = None) -> StreamStore:
    store = await StreamStore.open(path, job_settings=job_settings, storage=STORAGE[0])
    await store.create_basin(BASIN)
    return store


async def append_pipelined(
    store: StreamStore, stream: str, batch: ValidatedBatch, batches: int, window: int
) -> None:
    """Append `batch` `batches` times, keeping `window` appends in flight."""
    inflight: collections.deque[asyncio.Future[AppendAck]] = collections.deque()
    for _ in range(batches):
        if len(inflight) >= window:
            await inflight.popleft()
        inflight.append(await store.submit(BASIN, stream, batch))
    await asyncio.gather(*inflight)


async def scenario_a(path: str, batches: int = 400, window: int = 16) -> dict[str, float]:
    store = await open_store(path)
    await store.create_stream(BASIN, "a", StreamConfig(retention="infinite"))
    start = time.perf_counter()
    await append_pipelined(store, "a", batch_of(1000), batches, window)
    elapsed = time.perf_counter() - start
    commits = store.committer.commits
    await store.close()
    records = batches * 1000
    return {
        "records_s": records / elapsed,
        "mib_s": records * RECORD_BYTES / elapsed / MIB,
        "commits": commits,
    }


async def scenario_b(
    path: str, writers: int = 64, streams: int = 1000, seconds: float = 8.0
) -> dict[str, float]:
    store = await open_store(path)
    for i in range(streams):
        await store.create_stream(BASIN, f"s{i:04d}")
    batch = batch_of(1)
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def writer(index: int) -> None:
        turn = 0
        while time.perf_counter() < deadline:
            stream = f"s{(index + turn * writers) % streams:04d}"
            turn += 1
            began = time.perf_counter()
            await store.append(BASIN, stream, batch)
            latencies.append(time.perf_counter() - began)

    commits_before = store.committer.commits
    cpu_before = time.process_time(), processes_cpu_s("postgres")
    start = time.perf_counter()
    await asyncio.gather(*(writer(i) for i in range(writers)))
    elapsed = time.perf_counter() - start
    node_cpu_s = time.process_time() - cpu_before[0]
    db_cpu_s = processes_cpu_s("postgres") - cpu_before[1]
    commits = store.committer.commits - commits_before
    await store.close()
    return {
        "node_cpu_us_per_record": node_cpu_s / len(latencies) * 1e6,
        "db_cpu_us_per_record": db_cpu_s / len(latencies) * 1e6,
        "records_s": len(latencies) / elapsed,
        "mib_s": len(latencies) * RECORD_BYTES / elapsed / MIB,
        "ack_p50_ms": percentile(latencies, 50) * 1e3,
        "ack_p99_ms": percentile(latencies, 99) * 1e3,
        "records_per_commit": len(latencies) / max(commits, 1),
    }


async def scenario_c(path: str, seconds: float = 5.0) -> dict[str, float]:
    store = await open_store(path)
    await store.create_stream(BASIN, "c")
    body = os.urandom(RECORD_BYTES)
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < deadline:
        batch = validate_append_input(
            pb.AppendInput(records=[pb.AppendRecord(body=body)], match_seq_num=len(latencies))
        )
        began = time.perf_counter()
        await store.append(BASIN, "c", batch)
        latencies.append(time.perf_counter() - began)
    elapsed = time.perf_counter() - start
    await store.close()
    return {
        "appends_s": len(latencies) / elapsed,
        "ack_p50_ms": percentile(latencies, 50) * 1e3,
        "ack_p99_ms": percentile(latencies, 99) * 1e3,
    }


async def scenario_read(path: str, gib: float = 1.0) -> dict[str, float]:
    store = await open_store(path)
    await store.create_stream(BASIN, "r", StreamConfig(retention="infinite"))
    batches = int(gib * 1024 * MIB / (1000 * RECORD_BYTES))
    await append_pipelined(store, "r", batch_of(1000), batches, 16)
    total = batches * 1000
    session = await store.read_session(BASIN, "r", ReadStart(seq_num=0), ReadLimits(count=total))
    records = 0
    payload_bytes = 0
    start = time.perf_counter()
    async for output in session:
        if output.records is not None:
            records += output.records.count
            payload_bytes += len(output.records.payload)
    elapsed = time.perf_counter() - start
    await store.close()
    assert records == total, (records, total)
    return {
        "records_s": records / elapsed,
        "mib_s": records * RECORD_BYTES / elapsed / MIB,
        "wire_mib_s": payload_bytes / elapsed / MIB,
    }


async def scenario_reclaim(
    path: str, batches: int = 100_000, rate: float = 500.0
) -> dict[str, float]:
    # The server's job settings, but runs happen only when called (no timer in between).
    store = await open_store(path, JobSettings(interval_s=3600, retention_interval_s=0))
    old = (await store.create_stream(BASIN, "old", StreamConfig(retention="infinite"))).record
    await store.create_stream(BASIN, "live", StreamConfig(retention="infinite"))
    batch = batch_of(1)
    await append_pipelined(store, "old", batch, batches, 256)
    trim = validate_append_input(pb.AppendInput(records=[trim_record(batches)]))
    await store.append(BASIN, "old", trim)
    latencies: list[float] = []
    reclaimed = asyncio.Event()

    async def paced_appends() -> None:
        start = time.perf_counter()
        sent = 0
        while not reclaimed.is_set():
            await asyncio.sleep(max(0.0, start + sent / rate - time.perf_counter()))
            sent += 1
            began = time.perf_counter()
            await store.append(BASIN, "live", batch)
            latencies.append(time.perf_counter() - began)

    appender = asyncio.create_task(paced_appends())
    start = time.perf_counter()
    await store.jobs.run_once()
    elapsed = time.perf_counter() - start
    reclaimed.set()
    await appender
    left = len(
        store.kv.scan(Table.BATCHES, batch_key(old.sid, 0), batch_key(old.sid + 1, 0), 10**6)
    )
    await store.close()
    deleted = batches + 1 - left  # the trim record's own batch stays
    return {
        "run_s": elapsed,
        "deleted_batches_s": deleted / elapsed,
        "left_batches": left,
        "append_p50_ms": percentile(latencies, 50) * 1e3,
        "append_p99_ms": percentile(latencies, 99) * 1e3,
    }


def summarize(name: str, runs: list[dict[str, float]]) -> None:
    keys = runs[0].keys()
    parts = []
    for key in keys:
        values = [run[key] for run in runs]
        parts.append(
            f"{key} {statistics.median(values):,.1f} ({min(values):,.1f}-{max(values):,.1f})"
        )
    print(f"{name}: " + "; ".join(parts), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--only", default="a,b,read,reclaim")
    parser.add_argument("--read-gib", type=float, default=1.0)
    parser.add_argument(
        "--engines",
        default="lmdb",
        help="lmdb,postgres: each scenario on each engine, in one run (postgres: a durable "
        "PostgreSQL server started here, a fresh database per repetition)",
    )
    args = parser.parse_args()
    scenarios: dict[str, tuple[str, Callable[[str], Coroutine[Any, Any, dict[str, float]]]]] = {
        "a": ("(a) 1000 x 1 KiB batches, one stream, 16 in flight", scenario_a),
        "b": ("(b) 1 KiB single-record appends, 64 writers, 1000 streams", scenario_b),
        "c": ("(c) sequential conditional 1 KiB appends, one writer", scenario_c),
        "read": (
            f"(read) {args.read_gib:g} GiB stream from seq 0",
            functools.partial(scenario_read, gib=args.read_gib),
        ),
        "reclaim": ("(reclaim) 100,000 trimmed batches, one jobs run", scenario_reclaim),
    }
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)  # as `s2s serve` does
    scratch = tempfile.mkdtemp(prefix="s2s-bench-")
    engines = args.engines.split(",")
    with contextlib.ExitStack() as stack:
        postgres = (
            stack.enter_context(running_postgres(durable=True)) if "postgres" in engines else None
        )
        try:
            print(probe(scratch), flush=True)
            for key in args.only.split(","):
                title, run = scenarios[key]
                for engine in engines:
                    results: list[dict[str, float]] = []
                    for rep in range(args.reps):
                        path = os.path.join(scratch, f"{key}-{rep}")
                        STORAGE[0] = "lmdb"
                        if engine == "postgres":
                            assert postgres is not None
                            dbname = f"bench_{key}_{rep}"
                            postgres.psql(f'CREATE DATABASE "{dbname}"', dbname="postgres")
                            conninfo = postgres.libpq().replace(
                                f"dbname={postgres.dbname}", f"dbname={dbname}"
                            )
                            STORAGE[0] = f"postgres:{conninfo}"
                        os.sync()
                        results.append(asyncio.run(run(path)))
                        shutil.rmtree(path, ignore_errors=True)
                    summarize(f"{title} [{engine}]", results)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
