"""`s2s bench`: append throughput and ack latency, then a catch-up read, on a stream of its
own that it deletes at the end, whatever happens (as S2's CLI bench does).

The write phase keeps `--inflight` batches in flight on one append session for `--seconds`;
each batch's ack latency is from its submission to its ack (p50, p90 and p99 by nearest
rank). The catch-up read then reads the stream from its start to its tail, checking that it
holds exactly the records acknowledged.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from client import S2SClient, S2SError, Stream
from client.cli_args import Parser, UsageError, number, whole_number
from client.cli_command import Command, basin_name
from client.cli_output import Output
from s2s import allocator
from s2s.logs import fields
from s2s.records import BATCH_METERED_BYTES_MAX, BATCH_RECORDS_MAX, metered_size
from s2s.v1 import records_pb2 as pb

log = logging.getLogger(__name__)

STREAM_PREFIX = "s2s-bench-"
STATUS_INTERVAL_S = 1.0
MIB = 2**20


def add_arguments(parser: Parser) -> None:
    parser.add_argument("basin", metavar="BASIN", help="the basin to bench in, or s2://BASIN")
    parser.add_argument(
        "--stream",
        help=f"the stream to create, write, read and delete; it must not exist (default "
        f"{STREAM_PREFIX} and a random suffix)",
    )
    parser.add_argument(
        "--record-bytes",
        type=whole_number(0, BATCH_METERED_BYTES_MAX),
        default=1024,
        help="each record's body, in bytes (default 1024)",
    )
    parser.add_argument(
        "--batch-records",
        type=whole_number(1, BATCH_RECORDS_MAX),
        default=BATCH_RECORDS_MAX,
        help=f"records per append batch (default {BATCH_RECORDS_MAX})",
    )
    parser.add_argument(
        "--inflight",
        type=whole_number(1, 1024),
        default=16,
        help="batches sent but not yet acknowledged, at most (default 16)",
    )
    parser.add_argument(
        "--seconds",
        type=number(0, low_inclusive=False),
        default=10.0,
        help="how long to write, in seconds (default 10)",
    )


@dataclass(frozen=True)
class Phase:
    """What one phase moved, and in how long."""

    records: int
    bytes: int
    seconds: float

    def report(self) -> dict[str, Any]:
        seconds = max(self.seconds, 1e-9)
        return {
            "records": self.records,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "records_per_s": round(self.records / seconds),
            "mib_per_s": round(self.bytes / seconds / MIB, 1),
        }

    def text(self) -> str:
        report = self.report()
        return (
            f"{self.records} records ({self.bytes / MIB:.1f} MiB) in {self.seconds:.2f} s: "
            f"{report['records_per_s']} records/s, {report['mib_per_s']} MiB/s"
        )


def percentiles_ms(latencies_s: list[float]) -> dict[str, float]:
    """min, p50, p90, p99 and max by nearest rank, in milliseconds."""
    ordered = sorted(latencies_s)

    def rank(p: float) -> float:
        return ordered[max(1, math.ceil(p * len(ordered))) - 1]

    values = {"min": ordered[0], "p50": rank(0.5), "p90": rank(0.9), "p99": rank(0.99)}
    values["max"] = ordered[-1]
    return {key: round(value * 1e3, 2) for key, value in values.items()}


async def bench(client: S2SClient, args: argparse.Namespace) -> None:
    record = pb.AppendRecord(body=b"x" * args.record_bytes)
    # Checked before the batch is built: 1000 records of 1 MiB would take 1 GiB to refuse.
    batch_metered = metered_size(record) * args.batch_records
    if batch_metered > BATCH_METERED_BYTES_MAX:
        raise UsageError(
            f"{args.batch_records} records of {args.record_bytes} bytes are {batch_metered} "
            f"metered bytes, more than an append takes ({BATCH_METERED_BYTES_MAX}): lower "
            "--record-bytes or --batch-records"
        )
    basin = basin_name(args.basin)
    name = args.stream or f"{STREAM_PREFIX}{uuid.uuid4().hex[:12]}"
    uri = f"s2://{basin}/{name}"
    # Our own process: the server's allocator settings spare it re-faulting each batch buffer.
    allocator.tune()
    try:
        await client.create_stream(basin, name)
    except S2SError as error:
        if error.code == "resource_already_exists":
            raise UsageError(
                f"--stream {name} exists: bench writes a stream of its own and deletes it, so "
                "name one that does not exist"
            ) from None
        raise
    log.info("created stream %s for the bench", uri, extra=fields(event="create", stream=uri))
    stream = client.stream(basin, name, encryption_key=args.encryption_key)
    try:
        latencies, write = await _write(stream, record, args)
        catchup = await _catch_up(stream, write.records)
    finally:
        await client.delete_stream(basin, name)
        log.info("deleted stream %s", uri, extra=fields(event="delete", stream=uri))
    ack = percentiles_ms(latencies)
    Output(args.json).result(
        f"stream     {uri} (deleted)\n"
        f"write      {write.text()}\n"
        f"ack        {len(latencies)} batches: "
        + ", ".join(f"{key} {value} ms" for key, value in ack.items())
        + f"\ncatch-up   {catchup.text()}",
        {
            "stream": uri,
            "batches": len(latencies),
            **write.report(),
            "ack_latency_ms": ack,
            "catchup": catchup.report(),
            "deleted": True,
        },
    )


async def _write(
    stream: Stream, record: pb.AppendRecord, args: argparse.Namespace
) -> tuple[list[float], Phase]:
    message = pb.AppendInput(records=[record] * args.batch_records)
    batch_bytes = metered_size(record) * args.batch_records
    latencies: list[float] = []
    failures: list[BaseException] = []
    status = sys.stderr.isatty()
    started = time.perf_counter()
    deadline = started + args.seconds
    next_status = started + STATUS_INTERVAL_S

    def on_ack(began: float) -> Callable[[asyncio.Future[pb.AppendAck]], None]:
        def done(future: asyncio.Future[pb.AppendAck]) -> None:
            if future.cancelled():
                return
            # Taking the exception marks it retrieved: no "never retrieved" traceback later.
            error = future.exception()
            if error is None:
                latencies.append(time.perf_counter() - began)
            else:
                failures.append(error)

        return done

    async with stream.append_session(inflight_batches_max=args.inflight) as session:
        while (now := time.perf_counter()) < deadline and not failures:
            future = await session.submit(message)
            future.add_done_callback(on_ack(now))
            if status and now >= next_status:
                rate = len(latencies) * batch_bytes / (now - started) / MIB
                print(
                    f"\rwrite: {len(latencies)} batches acked, {rate:.1f} MiB/s",
                    end="",
                    file=sys.stderr,
                )
                next_status = now + STATUS_INTERVAL_S
    elapsed = time.perf_counter() - started
    if status and next_status > started + STATUS_INTERVAL_S:
        print(file=sys.stderr)  # ends the status line
    if failures:
        raise failures[0]
    if not latencies:
        raise UsageError(f"no batch was acknowledged within --seconds {args.seconds:g}: give more")
    records = len(latencies) * args.batch_records
    return latencies, Phase(records, len(latencies) * batch_bytes, elapsed)


async def _catch_up(stream: Stream, written: int) -> Phase:
    """Reads the whole stream back; it must hold exactly the `written` records."""
    records = 0
    size = 0
    started = time.perf_counter()
    async for batch in stream.read_session(seq_num=0, wait_s=0):
        records += len(batch.records)
        size += sum(metered_size(record) for record in batch.records)
    elapsed = time.perf_counter() - started
    if records != written:
        raise S2SError(
            "other", f"the catch-up read found {records} records, but {written} were acknowledged"
        )
    return Phase(records, size, elapsed)


COMMAND = Command(
    "bench",
    "measure append throughput, ack latency and a catch-up read, on a stream it then deletes",
    add_arguments,
    bench,
    stream_key=True,
)
