"""What usage accounting costs per batch, in-process: the calls the hot paths make once per
batch, timed over many batches against a real `StreamStore` on a temp dir (nothing else
running, no server, no network).

    .venv/bin/python bench/metrics_cost.py [--seconds 5]

Measured (us per batch, the median of 5 rounds):

  append      `StreamAccount.appended`: what a sequencer reports when a batch is durable
              (Prometheus totals, stored bytes, two minute counters, the ack histogram)
  unary-read  `Usage.read` for a unary read that returned records
  session     one batch through `Usage.counted_session`, against the same generator
              unwrapped (the difference is the accounting's cost)
  flush       one flush of a minute's counters and samples for 100 streams in 10 basins,
              per stream (off the hot path: every 10 s by default)

The per-batch numbers are what a batch pays on the event loop; compare them with a unary
append's ~100-200 us of server CPU (bench/auth_cost.py).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncGenerator, Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from server.reader import ReadOutput, RecordSlice  # noqa: E402
from server.streamstore import StreamStore  # noqa: E402

ROUNDS = 5
RECORDS = RecordSlice(
    b"x" * 1024, count=10, metered_bytes=10_320, first_seq=0, last_seq=9, last_timestamp=0
)


def _per_call_us(call: Callable[[], object], seconds: float) -> float:
    """Median over rounds of the mean time of one call, in microseconds."""
    results = []
    for _ in range(ROUNDS):
        calls = 0
        deadline = time.perf_counter() + seconds / ROUNDS
        started = time.perf_counter()
        while time.perf_counter() < deadline:
            for _ in range(1000):
                call()
            calls += 1000
        results.append((time.perf_counter() - started) / calls * 1e6)
    return statistics.median(results)


async def _outputs(count: int) -> AsyncGenerator[ReadOutput, None]:
    output = ReadOutput(RECORDS)
    for _ in range(count):
        yield output


async def _session_us(store: StreamStore, counted: bool, batches: int) -> float:
    outputs = _outputs(batches)
    session = store.counted_session("bench-basin", outputs) if counted else outputs
    started = time.perf_counter()
    async for _ in session:
        pass
    return (time.perf_counter() - started) / batches * 1e6


async def main(seconds: float) -> None:
    with tempfile.TemporaryDirectory() as data_dir:
        store = await StreamStore.open(data_dir)
        try:
            usage = store.usage
            account = usage.stream("bench-basin", "bench-stream", 1)
            append_us = _per_call_us(
                lambda: account.appended("express", 10, 10_320, 10, 0.002), seconds
            )
            read_us = _per_call_us(
                lambda: usage.read("bench-basin", RECORDS, streaming=False), seconds
            )
            batches = max(1000, int(seconds * 20_000))
            plain = statistics.median([await _session_us(store, False, batches) for _ in range(5)])
            counted = statistics.median([await _session_us(store, True, batches) for _ in range(5)])
            accounts = [usage.stream(f"bench-basin-{i % 10}", f"s{i}", 100 + i) for i in range(100)]
            flushes = []
            for _ in range(ROUNDS):
                for a in accounts:
                    a.appended("express", 1, 100, 1, 0.001)
                started = time.perf_counter()
                await usage.flush()
                flushes.append((time.perf_counter() - started) / len(accounts) * 1e6)
        finally:
            await store.close()
    print(f"append      {append_us:8.2f} us per batch")
    print(f"unary-read  {read_us:8.2f} us per read")
    print(
        f"session     {counted - plain:8.2f} us per batch "
        f"({plain:.2f} unwrapped, {counted:.2f} counted)"
    )
    print(f"flush       {statistics.median(flushes):8.2f} us per changed stream")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="time per measured call")
    args = parser.parse_args()
    asyncio.run(main(args.seconds))
