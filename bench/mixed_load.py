"""Mixed load: a session of large batches and, beside it, paced single-record appends.

    .venv/bin/python bench/mixed_load.py [--seconds 5] [--batch-rate 20] [--headers 1]

One `s2s serve` process (temporary data directory, 127.0.0.1) takes, for `--seconds`:

- an AppendSession of 1000-record batches (~1 KiB each, `--headers` headers per record, 4 in
  flight) offered at `--batch-rate` batches/s (0: as fast as acks allow);
- unary appends of one 100-byte record to another stream, offered open-loop at 200/s (each
  starts at its due time; latency runs from then).

It prints the batches acked per second and the unary latency p50/p99. The unary figures show
how much event-loop time one large batch costs everyone else: every batch is validated and
encoded on the loop (ADR 0001, point 3), and headers are the costliest part of a record.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchlib import percentile, probe  # noqa: E402

from client import S2SClient  # noqa: E402
from s2s import allocator  # noqa: E402
from s2s.v1 import records_pb2 as pb  # noqa: E402
from tests.server_process import ServerProcess  # noqa: E402

BASIN = "mixed-basin"
UNARY_RATE = 200.0
BATCH_RECORDS = 1000
IN_FLIGHT = 4


async def batch_flood(
    client: S2SClient, message: pb.AppendInput, rate: float, deadline: float
) -> int:
    acked = [0]
    start = time.perf_counter()
    sent = 0
    async with client.stream(BASIN, "batches").append_session(IN_FLIGHT) as session:
        while time.perf_counter() < deadline:
            if rate > 0:
                delay = start + sent / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            future = await session.submit(message)
            future.add_done_callback(lambda _: acked.__setitem__(0, acked[0] + 1))
            sent += 1
    return acked[0]


async def paced_unary(client: S2SClient, deadline: float) -> list[float]:
    stream = client.stream(BASIN, "unary")
    latencies: list[float] = []
    start = time.perf_counter()

    async def one(due: float) -> None:
        await stream.append([b"u" * 100])
        latencies.append(time.perf_counter() - due)

    tasks = []
    index = 0
    while (due := start + index / UNARY_RATE) < deadline:
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(due)))
        index += 1
    await asyncio.gather(*tasks)
    return latencies


async def run(target: str, seconds: float, batch_rate: float, headers: int) -> None:
    header_list = [pb.Header(name=b"trace-id-%d" % k, value=b"abc123") for k in range(headers)]
    message = pb.AppendInput(
        records=[pb.AppendRecord(body=b"x" * 900, headers=header_list)] * BATCH_RECORDS
    )
    async with S2SClient(target) as client:
        await client.create_basin(BASIN)
        await client.create_stream(BASIN, "batches")
        await client.create_stream(BASIN, "unary")
        gc.freeze()
        deadline = time.perf_counter() + seconds
        batches, latencies = await asyncio.gather(
            batch_flood(client, message, batch_rate, deadline), paced_unary(client, deadline)
        )
    print(
        f"batches of {BATCH_RECORDS} x 900 B with {headers} header(s) per record: "
        f"{batches / seconds:,.1f} acked/s (offered: {batch_rate or 'as fast as acked'}/s)"
    )
    p50, p99 = (percentile(latencies, p) * 1e3 for p in (50, 99))
    print(
        f"unary appends at {UNARY_RATE:.0f}/s: {len(latencies) / seconds:,.1f} acked/s, "
        f"p50 {p50:.1f} ms, p99 {p99:.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--batch-rate", type=float, default=20.0)
    parser.add_argument("--headers", type=int, default=1)
    args = parser.parse_args()
    # The load generator gets the server's allocator settings (see bench/grpc_append.py).
    allocator.tune()
    scratch = tempfile.mkdtemp(prefix="s2s-bench-mixed-")
    try:
        print(probe(scratch), flush=True)
        server = ServerProcess(os.path.join(scratch, "data")).start()
        try:
            asyncio.run(run(server.target, args.seconds, args.batch_rate, args.headers))
        finally:
            server.stop()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
