"""Soak: steady mixed load on one server for minutes, its memory and latency every interval.

    .venv/bin/python bench/soak.py --minutes 30 [--seed 1] [--interval-s 60] [--kinds a,b]
        [--serve-arg=--lake-maintenance-interval-s=60] [--server-command "python wrapper.py"]

One `s2s serve` process (temporary data directory, 127.0.0.1, `--open-metrics`) takes, until
the end, a modest rate-limited load of every kind at once (the run is about memory, not
throughput; each kind waits for its previous operation, so a slow server sees less load, never
a backlog):

  grpc-unary      gRPC unary appends, one record, 40/s
  grpc-session    gRPC AppendSession, 10 batches/s of 10 records; a new session every 15 s
  s2s-session     official SDK S2S session over HTTP, 10 batches/s of 10; new every 15 s
  follow          3 read sessions at the tail (2 gRPC, 1 SDK) of the session streams and the
                  unary stream, each reopened every 30 s
  http-json       HTTP JSON unary appends (httpx), 20/s
  ingest          `POST /v2/stream` of 50 rows into an append table, 1/s (ingest-append),
                  and with wait into a merge table of 1,000 keys, 0.5/s (ingest-merge)
  json-append     gRPC appends of 10 JSON records, 5/s, into a stream a materialization reads
  sql             a count over each lake table, every 10 s
  trim            trims the unary and gRPC session streams to their last 500 records, every 5 s
  retention       appends 10/s into a stream with a 10 s retention age (the jobs delete them)
  churn           creates a stream, appends, reads it back and deletes it, every 2 s

Each interval it prints one line: the server's RSS, anonymous memory (RssAnon), Python's
allocated blocks, glibc's bytes in use and kept free, DuckDB's memory and its TRANSACTION
part (scraped from `/metrics`), open file descriptors, threads, operations, p50/p99 latency
per kind and errors by kind. At the end: the memory curve, its slopes over the second half
of the run (MB/min) and a verdict. Exit 1 on any failed operation or a traceback in the
server's log.

To find which load grows memory, run some kinds only (`--kinds ingest,json-append,sql`); to
look inside the server, `--server-command` runs a wrapper (given `serve ...`) instead of the
tree's `s2s`, e.g. one that starts tracemalloc in the server's process.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from s2_sdk import S2, AppendInput, Endpoints, Record, TailOffset

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchlib import percentile, probe  # noqa: E402

from client import S2SClient  # noqa: E402
from s2s import allocator  # noqa: E402
from s2s.config import StreamConfig  # noqa: E402
from s2s.records import trim_record  # noqa: E402
from tests.server_process import SOURCE_TREE_S2S, ServerProcess  # noqa: E402

BASIN = "soak-basin"
MIB = 1024 * 1024
SESSION_LIFE_S = 15.0
FOLLOW_LIFE_S = 30.0
SDK_FOLLOW_IDLE_S = 2
RETENTION_S = 10
TRIM_KEEP = 500
END_GRACE_S = 30.0
GROWTH_MB_PER_MIN_LIMIT = 0.5
"""Above this slope over the second half, the verdict is "still growing"."""


class Stats:
    """Latencies, operation counts and errors per kind, for the current interval."""

    def __init__(self) -> None:
        self.latencies: dict[str, list[float]] = collections.defaultdict(list)
        self.errors: collections.Counter[str] = collections.Counter()
        self.errors_total: collections.Counter[str] = collections.Counter()
        self.first_errors: list[str] = []
        self.followed = 0

    def ok(self, kind: str, began: float) -> None:
        self.latencies[kind].append(time.perf_counter() - began)

    def failed(self, kind: str, error: BaseException) -> None:
        self.errors[kind] += 1
        self.errors_total[kind] += 1
        if len(self.first_errors) < 20:
            self.first_errors.append(f"{kind}: {type(error).__name__}: {error}")

    def take(self) -> tuple[dict[str, list[float]], collections.Counter[str]]:
        latencies, errors = self.latencies, self.errors
        self.latencies, self.errors = collections.defaultdict(list), collections.Counter()
        return latencies, errors


@dataclasses.dataclass
class Load:
    """What every load task shares."""

    grpc: S2SClient
    sdk: S2
    http: httpx.AsyncClient
    stats: Stats
    rng: random.Random
    deadline: float


def body(rng: random.Random) -> bytes:
    return b"r" * rng.randrange(50, 400)


async def paced(
    load: Load, kind: str, rate: float, op: Callable[[], Awaitable[object]], until: float = 0
) -> None:
    """Run `op` at most `rate` times a second until the deadline (or `until`), one at a time."""
    end = until or load.deadline
    interval = 1.0 / rate
    due = time.perf_counter()
    while due < end:
        began = time.perf_counter()
        try:
            await op()
        except Exception as error:  # every failure is counted and fails the run
            load.stats.failed(kind, error)
        else:
            load.stats.ok(kind, began)
        due = max(due + interval, time.perf_counter())
        await asyncio.sleep(max(0.0, due - time.perf_counter()))


async def grpc_unary(load: Load) -> None:
    stream = load.grpc.stream(BASIN, "unary")
    await paced(load, "grpc-unary", 40, lambda: stream.append([body(load.rng)]))


async def grpc_sessions(load: Load) -> None:
    """A new session every SESSION_LIFE_S: opening and closing is part of the soak."""
    stream = load.grpc.stream(BASIN, "session")
    while time.perf_counter() < load.deadline:
        until = min(load.deadline, time.perf_counter() + SESSION_LIFE_S)
        try:
            async with stream.append_session(8) as session:

                async def submit() -> None:
                    began = time.perf_counter()
                    future = await session.submit([body(load.rng) for _ in range(10)])
                    future.add_done_callback(lambda f: _session_ack(load, "grpc-session", f, began))

                await paced(load, "grpc-submit", 10, submit, until)
        except Exception as error:
            load.stats.failed("grpc-session", error)
    load.stats.latencies.pop("grpc-submit", None)


def _session_ack(load: Load, kind: str, future: asyncio.Future[Any], began: float) -> None:
    if future.cancelled():
        load.stats.failed(kind, asyncio.CancelledError())
    elif (error := future.exception()) is not None:
        load.stats.failed(kind, error)
    else:
        load.stats.ok(kind, began)


async def sdk_sessions(load: Load) -> None:
    stream = load.sdk.basin(BASIN).stream("sdk-session")
    while time.perf_counter() < load.deadline:
        until = min(load.deadline, time.perf_counter() + SESSION_LIFE_S)
        try:
            async with stream.append_session() as session:

                async def submit() -> None:
                    began = time.perf_counter()
                    batch = AppendInput(records=[Record(body=body(load.rng)) for _ in range(10)])
                    ticket = await session.submit(batch)
                    task = asyncio.ensure_future(_await(ticket))
                    task.add_done_callback(lambda f: _session_ack(load, "s2s-session", f, began))

                await paced(load, "s2s-submit", 10, submit, until)
        except Exception as error:
            load.stats.failed("s2s-session", error)


async def _await(awaitable: Awaitable[object]) -> object:
    return await awaitable


async def grpc_follow(load: Load, stream_name: str) -> None:
    stream = load.grpc.stream(BASIN, stream_name)
    while time.perf_counter() < load.deadline:
        life = min(FOLLOW_LIFE_S, load.deadline - time.perf_counter())
        try:
            async with asyncio.timeout(life):
                async for batch in stream.read_session(tail_offset=0):
                    load.stats.followed += len(batch.records)
        except TimeoutError:
            pass
        except Exception as error:
            load.stats.failed("follow", error)
            await asyncio.sleep(1)


async def sdk_follow(load: Load) -> None:
    """Each session ends by itself: at a timestamp FOLLOW_LIFE_S ahead, or once idle for
    SDK_FOLLOW_IDLE_S (after the deadline). Cancelled instead, the SDK's session sometimes
    never finished closing (bench/RESULTS.md, "Soak")."""
    stream = load.sdk.basin(BASIN).stream("sdk-session")
    while time.perf_counter() < load.deadline:
        until_ms = int(time.time() * 1000 + FOLLOW_LIFE_S * 1000)
        session = stream.read_session(
            start=TailOffset(0), until_timestamp=until_ms, wait=SDK_FOLLOW_IDLE_S
        )
        try:
            async for batch in session:
                load.stats.followed += len(batch.records)
        except Exception as error:
            load.stats.failed("follow", error)
            await asyncio.sleep(1)


async def http_json(load: Load) -> None:
    async def append() -> None:
        records = [{"body": body(load.rng).decode()}]
        response = await load.http.post(
            "/v1/streams/http-json/records", json={"records": records}, headers={"s2-basin": BASIN}
        )
        _check(response)

    await paced(load, "http-json", 20, append)


def _check(response: httpx.Response) -> None:
    if response.status_code != 200:
        raise RuntimeError(f"{response.request.url.path}: {response.status_code} {response.text}")


def row(rng: random.Random, key: int) -> dict[str, object]:
    return {"id": key, "user": f"user-{key % 97}", "amount": rng.random() * 100, "pad": "p" * 100}


async def ingest(load: Load) -> None:
    counter = iter(range(10**9))

    async def append() -> None:
        data = [row(load.rng, next(counter)) for _ in range(50)]
        config = {"table": "soak.events"}
        _check(await load.http.post("/v2/stream", json={"data": data, "config": config}))

    async def merge() -> None:
        # 1,000 keys: the table stops growing and every batch updates rows. A key appears once
        # per batch, as ingest requires.
        data = [row(load.rng, key) for key in load.rng.sample(range(1000), 50)]
        config = {"table": "soak.users", "mode": "merge", "primary_key": "id", "wait": True}
        _check(await load.http.post("/v2/stream", json={"data": data, "config": config}))

    await asyncio.gather(
        paced(load, "ingest-append", 1, append), paced(load, "ingest-merge", 0.5, merge)
    )


async def json_append(load: Load) -> None:
    stream = load.grpc.stream(BASIN, "json-src")
    counter = iter(range(10**9))

    def records() -> list[bytes]:
        return [json.dumps(row(load.rng, next(counter))).encode() for _ in range(10)]

    await paced(load, "json-append", 5, lambda: stream.append(records()))


async def sql(load: Load) -> None:
    async def count() -> None:
        for table in ("soak.events", "soak.users", "soak.json_src"):
            _check(
                await load.http.post(
                    "/v1/lake/query", json={"sql": f"SELECT count(*) FROM {table}"}
                )
            )

    await paced(load, "sql", 0.1, count)


async def trims(load: Load) -> None:
    async def trim() -> None:
        for name in ("unary", "session"):
            stream = load.grpc.stream(BASIN, name)
            tail = (await stream.check_tail()).seq_num
            if tail > TRIM_KEEP:
                await stream.append([trim_record(tail - TRIM_KEEP)])

    await paced(load, "trim", 0.2, trim)


async def retention(load: Load) -> None:
    stream = load.grpc.stream(BASIN, "short-retention")
    await paced(load, "retention", 10, lambda: stream.append([body(load.rng)]))


async def churn(load: Load) -> None:
    counter = iter(range(10**9))

    async def cycle() -> None:
        name = f"churn-{next(counter)}"
        await load.grpc.create_stream(BASIN, name)
        stream = load.grpc.stream(BASIN, name)
        await stream.append([body(load.rng) for _ in range(5)])
        batch = await stream.read(seq_num=0)
        if len(batch.records) != 5:
            raise RuntimeError(f"{name}: read {len(batch.records)} of 5 records")
        await load.grpc.delete_stream(BASIN, name)

    await paced(load, "churn", 0.5, cycle)


# --- the server's side ------------------------------------------------------------------------


@dataclasses.dataclass
class Sample:
    minute: float
    rss_mb: float
    anon_mb: float
    py_blocks: int
    malloc_used_mb: float
    malloc_free_mb: float
    duckdb_mb: float
    duckdb_transaction_mb: float
    fds: int
    threads: int


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":", 1) for line in lines if ":" in line)


def kib_as_mb(value: str) -> float:
    return int(value.split()[0]) * 1024 / MIB


async def sample(http: httpx.AsyncClient, pid: int, minute: float) -> Sample:
    response = await http.get("/metrics")
    _check(response)
    families = {
        family.name: family.samples for family in text_string_to_metric_families(response.text)
    }
    gauges = {name: samples[0].value for name, samples in families.items() if samples}
    duckdb = {s.labels["tag"]: s.value for s in families.get("s2s_lake_duckdb_memory_bytes", [])}
    status = proc_status(pid)
    return Sample(
        minute=minute,
        rss_mb=kib_as_mb(status["VmRSS"]),
        anon_mb=kib_as_mb(status["RssAnon"]),
        py_blocks=int(gauges.get("s2s_python_allocated_blocks", -1)),
        malloc_used_mb=gauges.get("s2s_malloc_in_use_bytes", -MIB) / MIB,
        malloc_free_mb=gauges.get("s2s_malloc_free_bytes", -MIB) / MIB,
        duckdb_mb=sum(duckdb.values()) / MIB,
        duckdb_transaction_mb=duckdb.get("TRANSACTION", 0) / MIB,
        fds=len(os.listdir(f"/proc/{pid}/fd")),
        threads=int(status["Threads"]),
    )


def interval_line(
    point: Sample, latencies: dict[str, list[float]], errors: collections.Counter[str]
) -> str:
    ops = sum(len(values) for values in latencies.values())
    kinds = " ".join(
        f"{kind}={percentile(values, 50) * 1e3:.0f}/{percentile(values, 99) * 1e3:.0f}"
        for kind, values in sorted(latencies.items())
        if values and not kind.endswith("-submit")
    )
    failed = ",".join(f"{kind}:{count}" for kind, count in sorted(errors.items())) or "0"
    return (
        f"min {point.minute:5.1f} rss {point.rss_mb:6.1f} anon {point.anon_mb:6.1f} "
        f"pyblocks {point.py_blocks:8d} malloc used {point.malloc_used_mb:6.1f} "
        f"free {point.malloc_free_mb:6.1f} duckdb {point.duckdb_mb:5.1f} "
        f"(transaction {point.duckdb_transaction_mb:5.1f}) MB "
        f"fds {point.fds} threads {point.threads} "
        f"ops {ops} errors {failed} | p50/p99 ms {kinds}"
    )


def slope_per_min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (minute, value) points."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread if spread else 0.0


def verdict(curve: list[Sample]) -> list[str]:
    second_half = [p for p in curve if p.minute >= curve[-1].minute / 2]
    if len(second_half) < 2:
        return ["verdict: too few intervals for a slope"]
    lines = []
    for name, values in (
        ("anon MB", [(p.minute, p.anon_mb) for p in second_half]),
        ("rss MB", [(p.minute, p.rss_mb) for p in second_half]),
        ("malloc used MB", [(p.minute, p.malloc_used_mb) for p in second_half]),
        ("duckdb MB", [(p.minute, p.duckdb_mb) for p in second_half]),
        ("python blocks", [(p.minute, float(p.py_blocks)) for p in second_half]),
    ):
        lines.append(f"slope over the second half: {name} {slope_per_min(values):+.3f}/min")
    anon = slope_per_min([(p.minute, p.anon_mb) for p in second_half])
    word = "still growing" if anon > GROWTH_MB_PER_MIN_LIMIT else "flat"
    lines.append(
        f"verdict: anonymous memory {word} ({anon:+.3f} MB/min over minutes "
        f"{second_half[0].minute:.1f}-{second_half[-1].minute:.1f}; limit "
        f"{GROWTH_MB_PER_MIN_LIMIT} MB/min)"
    )
    return lines


async def setup(grpc: S2SClient, http: httpx.AsyncClient, rng: random.Random) -> None:
    await grpc.create_basin(BASIN)
    for name in ("unary", "session", "sdk-session", "http-json", "json-src"):
        await grpc.create_stream(BASIN, name)
    await grpc.create_stream(BASIN, "short-retention", StreamConfig(retention=RETENTION_S))
    await grpc.create_materialization("events", "soak.events", create_table=True)
    await grpc.create_materialization(
        "users", "soak.users", mode="merge", primary_key="id", create_table=True
    )
    await grpc.create_materialization(
        "json_src", "soak.json_src", basin=BASIN, stream="json-src", create_table=True
    )
    # A table exists once its first batch is applied: before the SQL counts run.
    for table, mode in (("soak.events", "append"), ("soak.users", "merge")):
        config = {"table": table, "mode": mode, "primary_key": "id", "wait": True}
        _check(await http.post("/v2/stream", json={"data": [row(rng, -1)], "config": config}))
    await grpc.stream(BASIN, "json-src").append([json.dumps(row(rng, -1)).encode()])
    deadline = time.perf_counter() + 60
    while (await grpc.get_materialization("json_src")).applied_seq_num < 1:
        if time.perf_counter() > deadline:
            raise TimeoutError("json_src applied nothing in 60 s")
        await asyncio.sleep(0.1)


async def follow(load: Load) -> None:
    await asyncio.gather(grpc_follow(load, "unary"), grpc_follow(load, "session"), sdk_follow(load))


JOBS: dict[str, Callable[[Load], Coroutine[Any, Any, None]]] = {
    "grpc-unary": grpc_unary,
    "grpc-session": grpc_sessions,
    "s2s-session": sdk_sessions,
    "follow": follow,
    "http-json": http_json,
    "ingest": ingest,
    "json-append": json_append,
    "sql": sql,
    "trim": trims,
    "retention": retention,
    "churn": churn,
}
"""Every load, by the name `--kinds` takes."""


async def run(
    server: ServerProcess, minutes: float, interval_s: float, seed: int, kinds: list[str]
) -> int:
    stats = Stats()
    endpoints = Endpoints(account=server.http_url, basin=server.http_url)
    limits = httpx.Limits(max_connections=8)
    async with (
        S2SClient(server.target) as grpc,
        S2("unused-token", endpoints=endpoints) as sdk,
        httpx.AsyncClient(base_url=server.http_url, limits=limits, timeout=30) as http,
    ):
        rng = random.Random(seed)
        await setup(grpc, http, rng)
        began = time.perf_counter()
        load = Load(grpc, sdk, http, stats, rng, began + minutes * 60)
        tasks = [asyncio.create_task(JOBS[kind](load), name=kind) for kind in kinds]
        curve = [await sample(http, server.pid, 0.0)]
        print(interval_line(curve[0], {}, collections.Counter()), flush=True)
        next_at = began + interval_s
        while next_at <= load.deadline + 0.5:
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            latencies, errors = stats.take()
            point = await sample(http, server.pid, (time.perf_counter() - began) / 60)
            curve.append(point)
            print(interval_line(point, latencies, errors), flush=True)
            next_at += interval_s
        await finish(tasks, stats)
        status = (await grpc.get_materialization("json_src")).applied_seq_num
    print(
        "memory curve (minute: anon MB):",
        " ".join(f"{p.minute:.0f}:{p.anon_mb:.0f}" for p in curve),
    )
    for line in verdict(curve):
        print(line)
    print(f"records delivered to followers: {stats.followed}; json_src applied up to {status}")
    return report_failures(stats, server, followers="follow" in kinds)


async def finish(tasks: list[asyncio.Task[None]], stats: Stats) -> None:
    """Wait for every load to end after the deadline; one that does not end within
    END_GRACE_S (a session whose close never returns) is an error, reported with its stack,
    and cancelled."""
    _, stuck = await asyncio.wait(tasks, timeout=END_GRACE_S)
    for task in stuck:
        print(f"{task.get_name()} did not end within {END_GRACE_S:g} s of the deadline:")
        task.print_stack(file=sys.stdout)
        stats.failed(task.get_name(), TimeoutError("did not end"))
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for task, result in zip(tasks, results, strict=True):
        if isinstance(result, Exception) and task not in stuck:
            stats.failed(task.get_name(), result)


def report_failures(stats: Stats, server: ServerProcess, followers: bool) -> int:
    tracebacks = [line for line in server.log if "Traceback" in line]
    total = sum(stats.errors_total.values())
    print(f"errors: {total} ({dict(stats.errors_total)}); server log tracebacks: {len(tracebacks)}")
    for line in stats.first_errors:
        print("  " + line)
    starved = followers and stats.followed == 0
    if starved:
        print("  followers received no records")
    return 1 if total or tracebacks or starved else 0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--interval-s", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--kinds",
        default=",".join(JOBS),
        help="the loads to run, comma-separated (default: all); to tell which one grows memory",
    )
    parser.add_argument(
        "--serve-arg",
        action="append",
        default=[],
        help="one more `s2s serve` argument (repeat it), e.g. --serve-arg=--lake-linger-ms=100",
    )
    parser.add_argument(
        "--server-command",
        help="run this instead of the tree's `s2s` (it gets `serve ...`), e.g. a wrapper "
        "that profiles the server in its own process",
    )
    args = parser.parse_args()
    kinds = args.kinds.split(",")
    if unknown := set(kinds) - set(JOBS):
        parser.error(f"unknown kinds {sorted(unknown)}; the kinds are {', '.join(JOBS)}")
    allocator.tune()
    scratch = tempfile.mkdtemp(prefix="s2s-bench-soak-")
    try:
        print(probe(scratch), flush=True)
        command = args.server_command.split() if args.server_command else SOURCE_TREE_S2S
        data = os.path.join(scratch, "data")
        server = ServerProcess(
            data, extra_args=["--open-metrics", *args.serve_arg], command=command
        )
        server.start()
        try:
            failed = asyncio.run(run(server, args.minutes, args.interval_s, args.seed, kinds))
        finally:
            code = server.stop()
        if code != 0:
            print(f"server exited with {code}")
            failed = 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    sys.exit(failed)


if __name__ == "__main__":
    main()
