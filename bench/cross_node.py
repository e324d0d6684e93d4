"""Two nodes on one PostgreSQL database (ADR 0013): how fast a record appended through one
reaches a follower on the other, and what writing one stream through both costs.

    .venv/bin/python bench/cross_node.py [--records 1000] [--rate 100] [--seconds 10]

A durable PostgreSQL 15 (fsync, synchronous_commit and full_page_writes on) is started by the
script; each node is a whole `StreamStore` with its own connections, in this one process, as
the tests run them.

(follow) single-record appends through node A at `--rate` a second, each read by a follower on
node B: time from the append's start (its durable commit included) to the record reaching
B's follower, p50/p99; beside it the same appends' own ack latency on A, the floor.
(contend) 16 writers of single records for `--seconds`: all through node A, then half through
each node, to one stream: records a second and conflicts (batches a node had to number
again), the price of writing one stream through two nodes at once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

from benchlib import probe

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from s2s.records import ValidatedBatch, validate_append_input  # noqa: E402
from s2s.v1 import records_pb2 as pb  # noqa: E402
from server.reader import ReadLimits, ReadStart  # noqa: E402
from server.storage.postgres import PostgresStore  # noqa: E402
from server.streamstore import StreamStore  # noqa: E402
from tests.postgres import running_postgres  # noqa: E402

BASIN = "bench-basin"


def one_record(body: bytes) -> ValidatedBatch:
    return validate_append_input(pb.AppendInput(records=[pb.AppendRecord(body=body)]))


@contextlib.asynccontextmanager
async def node(conninfo: str) -> AsyncIterator[StreamStore]:
    kv = await asyncio.to_thread(PostgresStore, conninfo, exclusive=False)
    store = StreamStore(kv)
    await store.start()
    try:
        yield store
    finally:
        await store.close()


def quantiles_ms(samples: list[float]) -> str:
    cuts = statistics.quantiles(samples, n=100)
    return f"p50 {cuts[49] * 1000:.1f} ms, p99 {cuts[98] * 1000:.1f} ms"


async def follow(a: StreamStore, b: StreamStore, records: int, rate: float) -> None:
    await a.create_stream(BASIN, "follow")
    session = await b.read_session(BASIN, "follow", ReadStart(seq_num=0), ReadLimits())
    sent_at: list[float] = []
    acked: list[float] = []
    seen: list[float] = []

    async def read() -> None:
        async for output in session:
            if output.records is None:
                continue
            for _ in range(output.records.count):
                seen.append(time.monotonic() - sent_at[len(seen)])
            if len(seen) == records:
                return

    reader = asyncio.ensure_future(read())
    await asyncio.sleep(0.5)
    for i in range(records):
        started = time.monotonic()
        sent_at.append(started)
        await a.append(BASIN, "follow", one_record(b"%d" % i))
        acked.append(time.monotonic() - started)
        await asyncio.sleep(max(0.0, 1 / rate - (time.monotonic() - started)))
    await asyncio.wait_for(reader, 30)
    await session.aclose()
    print(f"(follow) {records} records at {rate:g}/s: ack on A {quantiles_ms(acked)}; ", end="")
    print(f"on B's follower {quantiles_ms(seen)}", flush=True)


async def contend(a: StreamStore, b: StreamStore, seconds: float, stream: str, both: bool) -> None:
    await a.create_stream(BASIN, stream)
    stores = [a, b] if both else [a]
    conflicts_before = sum(s.committer.conflicts for s in (a, b))
    deadline = time.monotonic() + seconds
    counts = [0] * 16

    async def writer(index: int) -> None:
        store = stores[index % len(stores)]
        while time.monotonic() < deadline:
            await store.append(BASIN, stream, one_record(b"x" * 100))
            counts[index] += 1

    await asyncio.gather(*(writer(i) for i in range(16)))
    conflicts = sum(s.committer.conflicts for s in (a, b)) - conflicts_before
    where = "half through each node" if both else "all through node A"
    print(
        f"(contend) 16 writers, {where}: {sum(counts) / seconds:,.0f} records/s, "
        f"{conflicts} batches numbered again",
        flush=True,
    )


async def run(conninfo: str, args: argparse.Namespace) -> None:
    async with node(conninfo) as a, node(conninfo) as b:
        await a.create_basin(BASIN)
        await follow(a, b, args.records, args.rate)
        await contend(a, b, args.seconds, "one-node", both=False)
        await contend(a, b, args.seconds, "two-nodes", both=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        print(probe(directory), flush=True)
    with running_postgres(dbname="bench", durable=True) as server:
        asyncio.run(run(server.libpq(), args))


if __name__ == "__main__":
    main()
