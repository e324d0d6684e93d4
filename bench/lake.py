"""Lake benchmarks: rows/s a materialization applies, and end-to-end lag at a steady rate.

    .venv/bin/python bench/lake.py [--append-rows 1000000] [--rows 300000]
                                   [--merge-base 1000000] [--lag-seconds 30]

One real server process (`s2s serve`, default lake settings) on a temp data dir; records
are written over gRPC with the SDK, materializations are declared and watched over HTTP.
Records are JSON objects of about 1 KiB (ten fields, one of them padding).

Scenarios:
  append    a stream of --append-rows records already written; a new append-mode
            materialization applies them all (rows/s from creation until the checkpoint covers
            the stream; the first batch also creates the table and infers its types)
  merge     a merge-mode table loaded with --merge-base distinct keys, then --rows updates
            to random existing keys, written while the materialization is paused (rows/s from
            resume until the updates are applied)
  lag       --lag-seconds of appends at 5,000 rows/s (batches of 50 every 10 ms) into a
            running materialization; lag = time a record's append was acknowledged until the
            status shows it applied (polled every 10 ms), p50/p99 over every record
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchlib import percentile, probe  # noqa: E402

from client import S2SClient  # noqa: E402
from tests.server_process import ServerProcess  # noqa: E402

BASIN = "lake-bench"
APPEND_BATCH = 1000
LAG_RATE = 5000
LAG_BATCH = 50


def record(i: int, key: int | None = None) -> bytes:
    row = {
        "id": i if key is None else key,
        "user": f"user-{i % 1000}",
        "kind": ("click", "view", "buy")[i % 3],
        "amount": i * 0.25,
        "ok": i % 2 == 0,
        "at": "2026-11-22T12:00:00Z",
        "n1": i,
        "n2": i * 2,
        "n3": "y",
        "pad": "x" * 800,
    }
    return json.dumps(row).encode()


async def write(target: str, stream: str, bodies: list[bytes]) -> None:
    async with S2SClient(target) as client:
        handle = client.stream(BASIN, stream)
        for start in range(0, len(bodies), APPEND_BATCH):
            await handle.append(bodies[start : start + APPEND_BATCH])


def status(http: httpx.Client, name: str) -> dict[str, Any]:
    response = http.get(f"/v1/lake/materializations/{name}")
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


def materialize(http: httpx.Client, name: str, stream: str, **spec: Any) -> None:
    body = {"name": name, "table": f"bench.{name}", "basin": BASIN, "stream": stream}
    response = http.post("/v1/lake/materializations", json={**body, **spec, "create_table": True})
    response.raise_for_status()


def wait_applied(http: httpx.Client, name: str, seq_num: int, timeout_s: float = 600) -> float:
    began = time.perf_counter()
    while status(http, name)["applied_seq_num"] < seq_num:
        if time.perf_counter() - began > timeout_s:
            raise TimeoutError(f"{name} did not reach {seq_num}")
        time.sleep(0.02)
    return time.perf_counter() - began


async def make_stream(target: str, stream: str) -> None:
    async with S2SClient(target) as client:
        await client.create_stream(BASIN, stream)


async def bench_append(server: ServerProcess, http: httpx.Client, rows: int) -> str:
    await make_stream(server.target, "append-src")
    await write(server.target, "append-src", [record(i) for i in range(rows)])
    began = time.perf_counter()
    materialize(http, "append_rows", "append-src")
    wait_applied(http, "append_rows", rows)
    elapsed = time.perf_counter() - began
    return f"append: {rows} rows in {elapsed:.1f} s = {rows / elapsed:,.0f} rows/s (target 100,000)"


async def bench_merge(server: ServerProcess, http: httpx.Client, rows: int, base: int) -> str:
    await make_stream(server.target, "merge-src")
    await write(server.target, "merge-src", [record(i) for i in range(base)])
    materialize(http, "merge_rows", "merge-src", mode="merge", primary_key="id")
    load_s = wait_applied(http, "merge_rows", base)
    updates = [record(base + i, key=random.randrange(base)) for i in range(rows)]
    # Paused while writing, so the timing covers applying the updates and nothing else.
    http.post("/v1/lake/materializations/merge_rows/pause").raise_for_status()
    await write(server.target, "merge-src", updates)
    began = time.perf_counter()
    http.post("/v1/lake/materializations/merge_rows/resume").raise_for_status()
    wait_applied(http, "merge_rows", base + rows)
    elapsed = time.perf_counter() - began
    return (
        f"merge: load {base} keys {base / load_s:,.0f} rows/s; {rows} updates into a "
        f"{base}-row table in {elapsed:.1f} s = {rows / elapsed:,.0f} rows/s (target 30,000)"
    )


async def bench_lag(server: ServerProcess, http: httpx.Client, seconds: float) -> str:
    await make_stream(server.target, "lag-src")
    materialize(http, "lag_rows", "lag-src")
    acked: list[tuple[int, float]] = []  # (end seq_num, ack time) per batch
    async with S2SClient(server.target) as client:
        handle = client.stream(BASIN, "lag-src")
        period = LAG_BATCH / LAG_RATE
        began = time.perf_counter()
        batches = int(seconds * LAG_RATE / LAG_BATCH)
        seen: list[tuple[int, float]] = []

        async def poll() -> None:
            while True:
                applied = await asyncio.to_thread(status, http, "lag_rows")
                seen.append((applied["applied_seq_num"], time.perf_counter()))
                await asyncio.sleep(0.01)

        poller = asyncio.create_task(poll())
        for index in range(batches):
            await asyncio.sleep(max(0.0, began + index * period - time.perf_counter()))
            bodies = [record(index * LAG_BATCH + j) for j in range(LAG_BATCH)]
            ack = await handle.append(bodies)
            acked.append((ack.end.seq_num, time.perf_counter()))
        total = acked[-1][0]
        while not seen or seen[-1][0] < total:
            await asyncio.sleep(0.05)
        poller.cancel()
    lags = []
    cursor = 0
    for end_seq, ack_time in acked:
        while seen[cursor][0] < end_seq:
            cursor += 1
        lags.extend([seen[cursor][1] - ack_time] * LAG_BATCH)
    offered = total / (acked[-1][1] - acked[0][1] + period)
    return (
        f"lag at {offered:,.0f} rows/s offered: p50 {percentile(lags, 50):.2f} s, "
        f"p99 {percentile(lags, 99):.2f} s (target p99 < 2 s)"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--append-rows", type=int, default=1_000_000)
    parser.add_argument("--rows", type=int, default=300_000, help="merge updates")
    parser.add_argument("--merge-base", type=int, default=1_000_000)
    parser.add_argument("--lag-seconds", type=float, default=30.0)
    parser.add_argument("--only", nargs="*", default=["append", "merge", "lag"])
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="s2s-lake-bench-")
    print(probe(workdir), flush=True)
    server = ServerProcess(str(Path(workdir) / "data")).start()
    try:
        async with S2SClient(server.target) as client:
            await client.create_basin(BASIN)
        with httpx.Client(base_url=server.http_url, timeout=60) as http:
            if "append" in args.only:
                print(await bench_append(server, http, args.append_rows), flush=True)
            if "merge" in args.only:
                print(await bench_merge(server, http, args.rows, args.merge_base), flush=True)
            if "lag" in args.only:
                print(await bench_lag(server, http, args.lag_seconds), flush=True)
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
