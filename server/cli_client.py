"""`s2s` commands that talk to a running server through the client SDK.

Each command prints results to stdout; a failure prints one line to stderr and exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from client import S2SClient, S2SError, SqlResult
from s2s.config import (
    basin_config_from_json,
    basin_config_to_json,
    stream_config_from_json,
    stream_config_to_json,
)
from s2s.errors import S2Error
from s2s.records import (
    BATCH_METERED_BYTES_MAX,
    BATCH_RECORDS_MAX,
    fence_record,
    metered_size,
    trim_record,
)
from s2s.v1 import lake_pb2 as lpb
from s2s.v1 import records_pb2 as pb
from server import allocator

SERVER_DEFAULT = "127.0.0.1:50051"


def add_commands(commands: Any, env_server: str) -> None:
    """Register the client commands on the `s2s` argument parser."""

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = commands.add_parser(name, help=help_text)
        parser.add_argument(
            "--server",
            default=env_server,
            help=f"gRPC address of the server (env S2S_SERVER, default {SERVER_DEFAULT})",
        )
        return parser

    basins = command("basins", "manage basins")
    basins.add_argument("action", choices=["create", "list", "delete", "config"])
    basins.add_argument("name", nargs="?", default="")
    basins.add_argument("--config", help="basin config as JSON (create)")
    basins.add_argument("--prefix", default="")

    streams = command("streams", "manage streams")
    streams.add_argument("action", choices=["create", "list", "delete", "config"])
    streams.add_argument("basin")
    streams.add_argument("name", nargs="?", default="")
    streams.add_argument("--config", help="stream config as JSON (create)")
    streams.add_argument("--prefix", default="")

    append = command("append", "append stdin lines as records (one batch per 1000 lines)")
    append.add_argument("basin")
    append.add_argument("stream")
    append.add_argument("--ndjson", action="store_true", help='lines are {"body","headers",...}')
    append.add_argument("--match-seq-num", type=int)
    append.add_argument("--fencing-token")

    read = command("read", "print records, one per line")
    read.add_argument("basin")
    read.add_argument("stream")
    start = read.add_mutually_exclusive_group()
    start.add_argument("--from-seq", type=int)
    start.add_argument("--from-ts", type=int)
    start.add_argument("--tail-offset", type=int)
    read.add_argument("--count", type=int)
    read.add_argument("--follow", action="store_true", help="keep reading new records")
    read.add_argument("--ndjson", action="store_true", help="print seq_num, timestamp, headers")

    tail = command("tail", "print the stream's tail")
    tail.add_argument("basin")
    tail.add_argument("stream")

    fence = command("fence", "set the stream's fencing token")
    fence.add_argument("basin")
    fence.add_argument("stream")
    fence.add_argument("token")
    fence.add_argument("--fencing-token", help="the current token, if the stream is fenced")

    trim = command("trim", "delete records before a sequence number")
    trim.add_argument("basin")
    trim.add_argument("stream")
    trim.add_argument("seq_num", type=int)

    materializations = command(
        "materializations", "manage materializations (streams applied to lake tables)"
    )
    materializations.add_argument(
        "action", choices=["create", "list", "get", "pause", "resume", "delete"]
    )
    materializations.add_argument("name", nargs="?", default="")
    materializations.add_argument("--table", help="target table, schema.table (create)")
    materializations.add_argument("--basin", help="source basin (default: the ingest stream)")
    materializations.add_argument("--stream", help="source stream (default: schema.table)")
    materializations.add_argument("--mode", choices=["append", "merge"], default="append")
    materializations.add_argument("--primary-key", help="the column merge mode upserts on")
    materializations.add_argument("--select", help="DuckDB select list over the record columns")
    materializations.add_argument("--where", help="DuckDB predicate over the record columns")
    materializations.add_argument(
        "--partition-by", nargs="+", action="extend", default=[], metavar="EXPR"
    )
    materializations.add_argument("--create-table", action="store_true")
    materializations.add_argument("--paused", action="store_true", help="create it paused")

    sql = command("sql", "run a read-only SQL query over the lake and print the rows")
    sql.add_argument("query")
    sql.add_argument("--limit", type=int, help="at most this many rows")
    sql.add_argument("--json", action="store_true", help="print one JSON object per row")

    bench = command("bench", "measure append throughput and ack latency")
    bench.add_argument("basin")
    bench.add_argument("--stream", default="s2s-bench")
    bench.add_argument("--record-bytes", type=int, default=1024)
    bench.add_argument("--batch-records", type=int, default=1000)
    bench.add_argument("--inflight", type=int, default=16)
    bench.add_argument("--seconds", type=float, default=10.0)


COMMANDS = (
    "basins",
    "streams",
    "append",
    "read",
    "tail",
    "fence",
    "trim",
    "materializations",
    "sql",
    "bench",
)


def run(args: argparse.Namespace) -> int:
    try:
        asyncio.run(_dispatch(args))
    except (S2SError, S2Error) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


async def _dispatch(args: argparse.Namespace) -> None:
    async with S2SClient(args.server, retries=1) as client:
        handler = globals()[f"_{args.command}"]
        await handler(client, args)


def _print_json(value: Any) -> None:
    print(json.dumps(value, ensure_ascii=False))


async def _basins(client: S2SClient, args: argparse.Namespace) -> None:
    if args.action == "list":
        response = await client.list_basins(prefix=args.prefix)
        for basin in response.basins:
            state = "deleting" if basin.HasField("deleted_at_ms") else "active"
            print(f"{basin.name}\t{state}")
        return
    if not args.name:
        raise S2Error("invalid", f"basins {args.action} needs a basin name")
    if args.action == "create":
        config = basin_config_from_json(json.loads(args.config) if args.config else None)
        await client.create_basin(args.name, config)
        print(f"created basin {args.name}")
    elif args.action == "delete":
        await client.delete_basin(args.name)
        print(f"deleting basin {args.name}")
    else:
        _print_json(basin_config_to_json(await client.get_basin_config(args.name)))


async def _streams(client: S2SClient, args: argparse.Namespace) -> None:
    if args.action == "list":
        response = await client.list_streams(args.basin, prefix=args.prefix)
        for stream in response.streams:
            state = "deleting" if stream.HasField("deleted_at_ms") else "active"
            print(f"{stream.name}\t{state}")
        return
    if not args.name:
        raise S2Error("invalid", f"streams {args.action} needs a stream name")
    if args.action == "create":
        config = stream_config_from_json(json.loads(args.config) if args.config else None)
        await client.create_stream(args.basin, args.name, config)
        print(f"created stream {args.name}")
    elif args.action == "delete":
        await client.delete_stream(args.basin, args.name)
        print(f"deleting stream {args.name}")
    else:
        _print_json(stream_config_to_json(await client.get_stream_config(args.basin, args.name)))


def _record_from_json(line: str) -> pb.AppendRecord:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as error:
        raise S2Error("invalid", f"not a JSON object: {error}") from None
    if not isinstance(obj, dict):
        raise S2Error("invalid", "each NDJSON line must be an object")
    record = pb.AppendRecord(body=str(obj.get("body", "")).encode())
    for name, value in obj.get("headers", []):
        record.headers.add(name=str(name).encode(), value=str(value).encode())
    if obj.get("timestamp") is not None:
        record.timestamp = int(obj["timestamp"])
    return record


def _batches(lines: Iterator[str], ndjson: bool) -> Iterator[list[pb.AppendRecord]]:
    batch: list[pb.AppendRecord] = []
    size = 0
    for line in lines:
        line = line.rstrip("\n")
        record = _record_from_json(line) if ndjson else pb.AppendRecord(body=line.encode())
        record_size = metered_size(record)
        if batch and (
            len(batch) >= BATCH_RECORDS_MAX or size + record_size > BATCH_METERED_BYTES_MAX
        ):
            yield batch
            batch, size = [], 0
        batch.append(record)
        size += record_size
    if batch:
        yield batch


async def _append(client: S2SClient, args: argparse.Namespace) -> None:
    stream = client.stream(args.basin, args.stream)
    match = args.match_seq_num
    total = 0
    last: pb.AppendAck | None = None
    for batch in _batches(iter(sys.stdin.readline, ""), args.ndjson):
        last = await stream.append(batch, match_seq_num=match, fencing_token=args.fencing_token)
        total += len(batch)
        match = None if match is None else last.end.seq_num
    if last is None:
        raise S2Error("invalid", "nothing to append: stdin was empty")
    print(f"appended {total} records, seq_num {last.end.seq_num - total}..{last.end.seq_num - 1}")


def _record_line(record: pb.SequencedRecord, ndjson: bool) -> str:
    body = record.body.decode("utf-8", errors="replace")
    if not ndjson:
        return body
    headers = [
        [h.name.decode("utf-8", errors="replace"), h.value.decode("utf-8", errors="replace")]
        for h in record.headers
    ]
    return json.dumps(
        {
            "seq_num": record.seq_num,
            "timestamp": record.timestamp,
            "headers": headers,
            "body": body,
        },
        ensure_ascii=False,
    )


async def _read(client: S2SClient, args: argparse.Namespace) -> None:
    stream = client.stream(args.basin, args.stream)
    start: dict[str, Any] = {}
    if args.from_ts is not None:
        start["timestamp"] = args.from_ts
    elif args.tail_offset is not None:
        start["tail_offset"] = args.tail_offset
    else:
        start["seq_num"] = args.from_seq or 0
    count = args.count
    if not args.follow and count is None:
        tail = await stream.check_tail()
        count = tail.seq_num  # everything up to now, then stop
        if count == 0:
            return
    async for batch in stream.read_session(count=count, clamp=True, **start):
        for record in batch.records:
            print(_record_line(record, args.ndjson), flush=args.follow)


async def _tail(client: S2SClient, args: argparse.Namespace) -> None:
    tail = await client.stream(args.basin, args.stream).check_tail()
    _print_json({"seq_num": tail.seq_num, "timestamp": tail.timestamp})


async def _fence(client: S2SClient, args: argparse.Namespace) -> None:
    ack = await client.stream(args.basin, args.stream).append(
        [fence_record(args.token)], fencing_token=args.fencing_token
    )
    print(f"fenced at seq_num {ack.start.seq_num}")


async def _trim(client: S2SClient, args: argparse.Namespace) -> None:
    ack = await client.stream(args.basin, args.stream).append([trim_record(args.seq_num)])
    print(f"trim requested at seq_num {ack.start.seq_num}")


def materialization_json(status: lpb.MaterializationStatus) -> dict[str, Any]:
    """The status in the JSON shape of the HTTP API: unset optional fields are null."""

    def optional(key: str) -> Any:
        return getattr(status, key) if status.HasField(key) else None

    return {
        "name": status.name,
        "source": {"basin": status.source.basin, "stream": status.source.stream},
        "table": status.table,
        "mode": status.mode,
        "primary_key": optional("primary_key"),
        "select": optional("select"),
        "where": optional("where"),
        "partition_by": list(status.partition_by),
        "create_table": status.create_table,
        "state": status.state,
        "last_error": optional("last_error"),
        "applied_seq_num": status.applied_seq_num,
        "tail_seq_num": optional("tail_seq_num"),
        "lag_records": status.lag_records,
        "lag_seconds": status.lag_seconds,
        "rows_applied": status.rows_applied,
        "rows_rejected": status.rows_rejected,
        "last_snapshot_id": optional("last_snapshot_id"),
        "last_commit_at": optional("last_commit_at"),
        "records_skipped": status.records_skipped,
    }


async def _materializations(client: S2SClient, args: argparse.Namespace) -> None:
    if args.action == "list":
        for status in await client.list_materializations():
            source = f"{status.source.basin}/{status.source.stream}"
            print(
                f"{status.name}\t{status.state}\t{source} -> {status.table}\t"
                f"{status.rows_applied} rows, {status.lag_records} behind"
            )
        return
    if not args.name:
        raise S2Error("invalid", f"materializations {args.action} needs a name")
    if args.action == "create":
        if not args.table:
            raise S2Error("invalid", "materializations create needs --table schema.table")
        status = await client.create_materialization(
            args.name,
            args.table,
            basin=args.basin,
            stream=args.stream,
            mode=args.mode,
            primary_key=args.primary_key,
            select=args.select,
            where=args.where,
            partition_by=args.partition_by,
            create_table=args.create_table,
            paused=args.paused,
        )
        source = f"{status.source.basin}/{status.source.stream}"
        print(f"created materialization {status.name}: {source} -> {status.table} ({status.state})")
    elif args.action == "get":
        _print_json(materialization_json(await client.get_materialization(args.name)))
    elif args.action == "pause":
        await client.pause_materialization(args.name)
        print(f"paused materialization {args.name}")
    elif args.action == "resume":
        await client.resume_materialization(args.name)
        print(f"resumed materialization {args.name}")
    else:
        await client.delete_materialization(args.name)
        print(f"deleted materialization {args.name}")


def _cell_text(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    # One line per row keeps the columns aligned.
    return str(value).replace("\n", "\\n")


def format_table(result: SqlResult) -> str:
    """Aligned columns under a header, numbers right-aligned, then the row count."""
    table = result.table
    columns = table.column_names
    # Column by column: a result may repeat a column name (SELECT 1 AS a, 2 AS a).
    cells = [[_cell_text(value) for value in column.to_pylist()] for column in table.columns]
    rows = [list(row) for row in zip(*cells, strict=True)] if cells else []
    numeric = [
        pa.types.is_integer(f.type) or pa.types.is_floating(f.type) or pa.types.is_decimal(f.type)
        for f in table.schema
    ]
    widths = [max([len(name)] + [len(row[i]) for row in rows]) for i, name in enumerate(columns)]

    def line(cells: list[str]) -> str:
        return " | ".join(
            cell.rjust(width) if right else cell.ljust(width)
            for cell, width, right in zip(cells, widths, numeric, strict=True)
        ).rstrip()

    lines = [line(columns), "-+-".join("-" * width for width in widths)]
    lines += [line(row) for row in rows]
    lines.append(f"({len(rows)} row{'' if len(rows) == 1 else 's'})")
    if result.truncated:
        lines.append("(truncated: more rows matched; raise --limit or narrow the query)")
    return "\n".join(lines)


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)  # timestamps, dates, decimals, UUIDs: their usual text form


async def _sql(client: S2SClient, args: argparse.Namespace) -> None:
    result = await client.sql(args.query, args.limit)
    if not args.json:
        print(format_table(result))
        return
    for row in result.table.to_pylist():
        print(json.dumps(row, ensure_ascii=False, default=_json_default))
    if result.truncated:
        print("truncated: more rows matched than were returned", file=sys.stderr)


async def _bench(client: S2SClient, args: argparse.Namespace) -> None:
    # Our own process: the server's allocator settings spare it re-faulting each batch buffer.
    allocator.tune()
    try:
        await client.create_stream(args.basin, args.stream)
    except S2SError as error:
        if error.code != "resource_already_exists":
            raise
    stream = client.stream(args.basin, args.stream)
    records = [pb.AppendRecord(body=b"x" * args.record_bytes) for _ in range(args.batch_records)]
    message = pb.AppendInput(records=records)
    batch_bytes = args.record_bytes * args.batch_records
    latencies: list[float] = []
    sent = 0
    started = time.perf_counter()
    deadline = started + args.seconds
    next_report = started + 1.0

    def on_ack(began: float) -> Any:
        return lambda _: latencies.append(time.perf_counter() - began)

    async with stream.append_session(inflight_batches_max=args.inflight) as session:
        while (now := time.perf_counter()) < deadline:
            future = await session.submit(message)
            future.add_done_callback(on_ack(now))
            sent += 1
            if now >= next_report:
                rate = len(latencies) * batch_bytes / (now - started) / 2**20
                print(
                    f"\r{len(latencies)} batches acked, {rate:.1f} MiB/s", end="", file=sys.stderr
                )
                next_report = now + 1.0
    elapsed = time.perf_counter() - started
    print(file=sys.stderr)
    ordered = sorted(latencies)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1e3

    _print_json(
        {
            "batches": len(latencies),
            "records_per_s": round(len(latencies) * args.batch_records / elapsed),
            "mib_per_s": round(len(latencies) * batch_bytes / elapsed / 2**20, 1),
            "ack_latency_ms": {
                "p50": round(pct(50), 2),
                "p90": round(pct(90), 2),
                "p99": round(pct(99), 2),
            },
        }
    )
