"""`s2s read` and `s2s tail`: a stream's records printed as lines, to stdout or `-o FILE`.

Without `--follow` a read stops at the tail as it was when the read got there. With it, the
read waits for new records and outlives the server: when the connection fails or the server
restarts, it reconnects (every 0.1 s at first, then every 2 s, until interrupted) and resumes
after the last record it printed, so no record is printed twice or skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from typing import IO, Any

from client import ReadUnwrittenError, S2SClient, S2SError, Stream
from client.cli_args import Parser, UsageError, duration_ms, seq_num, whole_number
from client.cli_command import Command, add_stream_target
from client.cli_output import ProgressBar, progress_bar, progress_wanted
from client.cli_records import (
    JSON,
    RECORD_FORMATS,
    TEMPLATE_HELP,
    TEXT,
    RecordWriter,
    describe_command,
    record_format,
    record_writer,
    template,
)
from s2s.errors import ERROR_KINDS
from s2s.logs import fields
from s2s.records import is_command_record, metered_size
from s2s.v1 import records_pb2 as pb
from s2s.wire import U64_MAX

log = logging.getLogger(__name__)

RECONNECT_DELAY_S_MIN = 0.1
RECONNECT_DELAY_S_MAX = 2.0
"""While following, a lost connection is tried again after 0.1 s, doubling up to every 2 s."""
TAIL_LINES_DEFAULT = 10
WAIT_S_FOLLOW = 2**32 - 1
"""A read session's longest wait for new records (`wait` is 32-bit seconds): 136 years."""


def _add_output_arguments(parser: Parser) -> None:
    parser.add_argument(
        "--format",
        type=record_format,
        default=None,
        metavar="|".join(RECORD_FORMATS),
        help="text (default: each record's body, command records left out), json (one "
        '{"seq_num", "timestamp", "headers", "body"} per line, UTF-8) or json-base64 (body and '
        "headers in base64: binary data survives)",
    )
    parser.add_argument("--template", type=template, metavar="TEMPLATE", help=TEMPLATE_HELP)
    parser.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        default="-",
        help="write the lines to the end of FILE (created if missing) instead of stdout ('-')",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar on stderr (default: when writing -o FILE and stderr is a "
        "terminal)",
    )


def add_read_arguments(parser: Parser) -> None:
    add_stream_target(parser)
    start = parser.add_mutually_exclusive_group()
    start.add_argument(
        "-s",
        "--seq-num",
        type=seq_num,
        dest="from_seq",
        help="start at this sequence number (default 0)",
    )
    start.add_argument(
        "--from-seq",
        type=seq_num,
        dest="from_seq",
        help="the same as --seq-num: a sequence number (older spelling)",
    )
    start.add_argument(
        "--timestamp",
        type=seq_num,
        dest="from_ts",
        metavar="MS",
        help="start at the first record with this timestamp or later, in milliseconds since "
        "the epoch",
    )
    start.add_argument(
        "--from-ts",
        type=seq_num,
        dest="from_ts",
        metavar="MS",
        help="the same as --timestamp: milliseconds since the epoch (older spelling)",
    )
    start.add_argument(
        "--ago",
        type=duration_ms,
        metavar="DURATION",
        help="start at the records of the last DURATION, e.g. 90s, 15m, 1h, 2d (by timestamp)",
    )
    start.add_argument(
        "--tail-offset",
        type=seq_num,
        metavar="N",
        help="start N records before the tail",
    )
    parser.add_argument(
        "-n", "--count", type=whole_number(1, U64_MAX), help="stop after this many records"
    )
    parser.add_argument(
        "--bytes",
        type=whole_number(1, U64_MAX),
        help="stop after this many metered bytes (a record's body, headers and 8 bytes)",
    )
    parser.add_argument(
        "--until",
        type=seq_num,
        metavar="MS",
        help="stop before the first record with this timestamp or later, in milliseconds "
        "since the epoch",
    )
    parser.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="keep reading new records as they are appended, reconnecting if the server goes away",
    )
    parser.add_argument(
        "--ndjson", action="store_true", help="the same as --format json (the older spelling)"
    )
    _add_output_arguments(parser)


def add_tail_arguments(parser: Parser) -> None:
    add_stream_target(parser)
    parser.add_argument(
        "-n",
        "--lines",
        type=whole_number(0, U64_MAX),
        default=TAIL_LINES_DEFAULT,
        metavar="N",
        help=f"print the last N records (default {TAIL_LINES_DEFAULT})",
    )
    parser.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="then keep printing new records as they are appended, reconnecting if the server "
        "goes away",
    )
    _add_output_arguments(parser)


async def read(client: S2SClient, args: argparse.Namespace) -> None:
    start: dict[str, int] = {}
    if args.from_ts is not None:
        start["timestamp"] = args.from_ts
    elif args.ago is not None:
        start["timestamp"] = max(0, int(time.time() * 1000) - args.ago)
    elif args.tail_offset is not None:
        start["tail_offset"] = args.tail_offset
    else:
        start["seq_num"] = args.from_seq or 0
    limits = {"count": args.count, "bytes_": args.bytes, "until": args.until}
    if args.ndjson and args.format not in (None, JSON):
        raise UsageError(f"--ndjson is --format json: it cannot go with --format {args.format}")
    await _print_records(client, args, start, limits)


async def tail(client: S2SClient, args: argparse.Namespace) -> None:
    if args.lines == 0 and not args.follow:
        return
    count = None if args.follow else args.lines
    await _print_records(client, args, {"tail_offset": args.lines}, {"count": count})


async def _print_records(
    client: S2SClient,
    args: argparse.Namespace,
    start: dict[str, int],
    limits: dict[str, int | None],
) -> None:
    chosen = JSON if (args.json or getattr(args, "ndjson", False)) else None
    if args.format is not None and chosen is not None and args.format != chosen:
        raise UsageError(f"--json is --format json: it cannot go with --format {args.format}")
    output_format = args.format or chosen or TEXT
    if args.template is not None and output_format != TEXT:
        raise UsageError(f"--template prints text: it cannot go with --format {output_format}")
    write = record_writer(output_format, args.template, args.basin, args.stream)
    stream = client.stream(args.basin, args.stream, encryption_key=args.encryption_key)
    out = _open_output(args.output)
    wanted = progress_wanted(args.progress, args.output != "-")
    with progress_bar(wanted, f"read s2://{args.basin}/{args.stream}", "records") as bar:
        total = None if args.follow or not wanted else (await stream.check_tail()).seq_num
        position = dict(start)
        params: dict[str, Any] = {**position, **limits, "clamp": True}
        # 0: stop once caught up with the tail. Following with a count (or bytes, or until)
        # needs a wait too, or the server ends the read at the tail as a bounded one.
        params["wait_s"] = WAIT_S_FOLLOW if args.follow else 0
        await _follow(stream, params, args.follow, out, write, bar, total)


async def _follow(
    stream: Stream,
    params: dict[str, Any],
    follow: bool,
    out: IO[bytes],
    write: RecordWriter,
    bar: ProgressBar,
    tail_seq_num: int | None,
) -> None:
    """Reads from `params`, reconnecting while following; each batch written and flushed.

    A session ends cleanly only when its limits are reached (a follower's wait is 136
    years, and a server shutting down ends it with `server_draining`), so a clean end is
    the read's end.
    """
    failed_at: float | None = None
    attempt = 0
    while True:
        try:
            log.debug("read session opening", extra=fields(**_loggable(params)))
            # Heartbeats too: the server sends one on reaching the tail, which tells a
            # reconnected follower that it is reading again before any new record does.
            async for batch in stream.read_session(heartbeats=follow, **params):
                if failed_at is not None:
                    log.warning(
                        "reconnected after %.1f s; resuming at seq_num %s",
                        time.monotonic() - failed_at,
                        params.get("seq_num", "the start"),
                    )
                    failed_at, attempt = None, 0
                if not batch.records:
                    continue
                if tail_seq_num is not None:
                    bar.set_total(max(0, tail_seq_num - batch.records[0].seq_num))
                    tail_seq_num = None
                _write_batch(batch, out, write)
                bar.advance(len(batch.records))
                if _advance(params, batch):
                    return  # not asked again: a count or bytes of 0 would mean no limit
            return
        except ReadUnwrittenError:
            if follow:
                raise
            return  # nothing at or after the start
        except S2SError as error:
            kind = ERROR_KINDS.get(error.code)
            if not (follow and kind is not None and kind.retryable):
                raise
            if failed_at is None:
                failed_at = time.monotonic()
                log.warning(
                    "%s; reconnecting, then resuming at seq_num %s",
                    error,
                    params.get("seq_num", "the start"),
                    extra=fields(code=error.code),
                )
        attempt += 1
        await asyncio.sleep(min(RECONNECT_DELAY_S_MIN * 2 ** (attempt - 1), RECONNECT_DELAY_S_MAX))


def _advance(params: dict[str, Any], batch: pb.ReadBatch) -> bool:
    """Moves the read's start past `batch`, and its count and bytes left down, so that a
    reconnection goes on exactly where the output stopped; True once either is used up."""
    for key in ("seq_num", "timestamp", "tail_offset"):
        params.pop(key, None)
    params["seq_num"] = batch.records[-1].seq_num + 1
    if params.get("count") is not None:
        params["count"] -= len(batch.records)
    if params.get("bytes_") is not None:
        params["bytes_"] -= sum(metered_size(record) for record in batch.records)
    count, size = params.get("count"), params.get("bytes_")
    return (count is not None and count <= 0) or (size is not None and size <= 0)


def _write_batch(batch: pb.ReadBatch, out: IO[bytes], write: RecordWriter) -> None:
    lines = []
    for record in batch.records:
        line = write(record)
        if line is None:
            log.info(
                "seq_num %d is a command record (%s), left out of text output",
                record.seq_num,
                describe_command(record) if is_command_record(record) else "",
            )
            continue
        lines.append(line)
    out.write(b"".join(lines))
    out.flush()


def _loggable(params: dict[str, Any]) -> dict[str, Any]:
    return {key.rstrip("_"): value for key, value in params.items() if value is not None}


def _open_output(path: str) -> IO[bytes]:
    if path == "-":
        return sys.stdout.buffer
    try:
        return open(path, "ab")
    except OSError as error:
        raise UsageError(f"-o {path}: {error.strerror}") from None


READ = Command(
    "read",
    "print a stream's records, one per line (to the tail, or --follow)",
    add_read_arguments,
    read,
    stream_key=True,
    stream_target=True,
)
TAIL = Command(
    "tail",
    "print a stream's last records (-n N), and with -f the new ones as they come",
    add_tail_arguments,
    tail,
    stream_key=True,
    stream_target=True,
)
