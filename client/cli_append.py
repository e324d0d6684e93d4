"""`s2s append`: input lines become records as they arrive, so `tail -f app.log | s2s append`
is a live feed.

A thread reads the input (stdin or `-i FILE`) in chunks of whatever is available, splits them
into lines and hands each chunk's lines to the event loop through a bounded queue; the loop
parses them, gathers records into batches and sends each batch through a `ProducerSession`. A
batch goes when it is full (1000 records or 1 MiB metered) or `--linger-ms` after its first
record, so a lone line is appended within milliseconds and a file is sent in full batches.

Batches are pipelined and idempotent (docs/adr/0016-idempotent-appends.md): each carries this
run's producer id and its number, so when the server restarts or the connection drops, the
session sends every unacknowledged batch again through a new connection, and the server writes
each once. It does so for up to `--retry-s` (60 s) without an ack, logging one warning when
the session is lost and one when it is back; meanwhile at most 16 batches wait, and the input
waits behind them. A failure that is not worth retrying (a bad line, a fencing token or
`--match-seq-num` that does not hold, no permission), or retries run out, ends the append, and
the error says which lines were appended (a prefix of the input, as acks come in order), so a
retry can start after them; if later lines may have been appended too (their acks were lost),
it says so.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import stat
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from client import ProducerSession, S2SClient, S2SError
from client.cli_args import Parser, UsageError, seq_num, whole_number
from client.cli_command import Command, add_stream_target
from client.cli_output import Output, progress_bar, progress_wanted
from client.cli_records import JSON, RECORD_FORMATS, TEXT, parse_line, record_format
from s2s.errors import ERROR_KINDS, S2Error
from s2s.logs import fields
from s2s.records import (
    BATCH_METERED_BYTES_MAX,
    BATCH_RECORDS_MAX,
    PRODUCER_WINDOW_BATCHES,
    metered_size,
)
from s2s.v1 import records_pb2 as pb

log = logging.getLogger(__name__)

LINE_BYTES_MAX = BATCH_METERED_BYTES_MAX
"""The longest input line read: a record longer than an append takes (1 MiB metered) could
never be appended, and reading it whole would take unbounded memory."""
CHUNK_BYTES = 64 * 1024
CHUNKS_QUEUED_MAX = 64
"""Read-ahead bound: at most 64 chunks of 64 KiB (4 MiB) wait for the loop."""
LINGER_MS_DEFAULT = 5
LINGER_MS_MAX = 60_000
INFLIGHT_BATCHES_MAX = PRODUCER_WINDOW_BATCHES
"""Batches sent and not yet acknowledged: as many as the server remembers of a producer, so
that every batch sent again is still answered from its row."""
RETRY_S_DEFAULT = 60
"""How long a lost session is retried without an ack: a restart or an upgrade takes seconds (a
starting server waits up to 5 s for PostgreSQL's writers' lock); a script pointed at a server
that is gone for good fails within a minute."""
RETRY_S_MAX = 7 * 24 * 3600
"""A week: the server forgets a producer idle for `--producer-expiry-hours` (a week by
default), and a batch sent again after that would be written again."""


def add_arguments(parser: Parser) -> None:
    add_stream_target(parser)
    parser.add_argument(
        "--format",
        type=record_format,
        default=None,
        metavar="|".join(RECORD_FORMATS),
        help="what an input line is: text (default: the line's bytes are the body), json "
        '({"body", "headers": [[name, value]], "timestamp"}) or json-base64 (the same with '
        "body and headers in base64, for binary data)",
    )
    parser.add_argument(
        "--ndjson", action="store_true", help="the same as --format json (the older spelling)"
    )
    parser.add_argument(
        "-i",
        "--input",
        metavar="FILE",
        default="-",
        help="read lines from FILE instead of stdin ('-')",
    )
    parser.add_argument(
        "--linger-ms",
        type=whole_number(0, LINGER_MS_MAX),
        default=LINGER_MS_DEFAULT,
        help="how long a batch waits for more lines before it is sent, in milliseconds "
        f"(default {LINGER_MS_DEFAULT}); a batch also goes when it holds {BATCH_RECORDS_MAX} "
        "records or 1 MiB",
    )
    parser.add_argument(
        "-m",
        "--match-seq-num",
        type=seq_num,
        help="append only if the stream's next sequence number is this (the first batch's; "
        "each later batch's follows on)",
    )
    parser.add_argument(
        "-f",
        "--fencing-token",
        help="append only if the stream's fencing token is this",
    )
    parser.add_argument(
        "--retry-s",
        type=whole_number(0, RETRY_S_MAX),
        default=RETRY_S_DEFAULT,
        metavar="SECONDS",
        help="when the server goes away (a restart, a dropped connection), how long to go on "
        "reconnecting and sending the unacknowledged lines again without an ack before "
        f"giving up (default {RETRY_S_DEFAULT}; 0: give up at once); no line is written twice",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar on stderr (default: when reading -i FILE and stderr is a "
        "terminal)",
    )


@dataclass(frozen=True)
class Chunk:
    """Lines read together, and how many input bytes they took."""

    lines: list[bytes]
    bytes_read: int


@dataclass(frozen=True)
class LineTooLong:
    """The next line is longer than LINE_BYTES_MAX."""


WAKE = Chunk([], 0)
"""What `LineReader.wake` hands `next()`: no lines, and no read-ahead slot taken."""


class LineReader:
    """Reads `file` in a thread; `next()` gives its chunks of lines on the loop, then None.

    The thread hands each chunk over with `call_soon_threadsafe` after taking one of
    CHUNKS_QUEUED_MAX slots, which `next()` gives back: the read-ahead is bounded, and the
    thread never creates a coroutine the loop might end without running.
    """

    def __init__(self, file: IO[bytes], loop: asyncio.AbstractEventLoop) -> None:
        self._file = file
        self._loop = loop
        self._queue: asyncio.Queue[Chunk | LineTooLong | OSError | None] = asyncio.Queue()
        """Unbounded as a queue: the thread puts an item only with a slot of `_slots`."""
        self._slots = threading.Semaphore(CHUNKS_QUEUED_MAX)
        # A daemon: blocked on a terminal's stdin it must not keep the process alive.
        threading.Thread(target=self._run, name="s2s-append-input", daemon=True).start()

    async def next(self) -> Chunk | LineTooLong | None:
        item = await self._queue.get()
        if item is WAKE:
            return item
        self._slots.release()
        if isinstance(item, OSError):
            raise UsageError(f"cannot read the input: {item.strerror or item}")
        return item

    def wake(self) -> None:
        """Ends a `next()` waiting for input (with an empty chunk): the append failed, and
        must end now, not when the next line comes."""
        self._queue.put_nowait(WAKE)

    def _put(self, item: Chunk | LineTooLong | OSError | None) -> bool:
        """Hands `item` to the loop, waiting while CHUNKS_QUEUED_MAX are unread; False once
        the loop has ended (nothing left to read for)."""
        self._slots.acquire()
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop is closed
            return False
        return True

    def _run(self) -> None:
        partial = b""
        try:
            while data := _read_available(self._file):
                lines = (partial + data).split(b"\n")
                partial = lines.pop()
                if len(partial) > LINE_BYTES_MAX:
                    self._put(Chunk(lines, len(data)))
                    self._put(LineTooLong())
                    return
                if not self._put(Chunk(lines, len(data))):
                    return
            if partial:
                self._put(Chunk([partial], 0))
            self._put(None)
        except OSError as error:
            self._put(error)


def _read_available(file: IO[bytes]) -> bytes:
    """Up to CHUNK_BYTES, as soon as any are there: a pipe's line is passed on when written.

    From the descriptor, not the buffered file: a thread blocked in a buffered read holds the
    file's lock, and an interpreter exiting meanwhile (the append failed, its pipe still open)
    aborts on that lock ("could not acquire lock for <stdin> at interpreter shutdown").
    """
    return os.read(file.fileno(), CHUNK_BYTES)


class Batcher:
    """Gathers records into batches and submits them, pipelined, through `session`."""

    def __init__(self, session: ProducerSession, on_failure: Callable[[], None]) -> None:
        self._session = session
        self._on_failure = on_failure
        """Called once, at the first failure: the input may be waiting for a line."""
        self._records: list[pb.AppendRecord] = []
        self._bytes = 0
        self.acked = 0
        self.first_ack: pb.AppendAck | None = None
        self.last_ack: pb.AppendAck | None = None
        self.failure: BaseException | None = None
        self.deadline: float | None = None
        """When the batch being gathered must go (loop time), None while it is empty."""

    def add(self, record: pb.AppendRecord, size: int, linger_s: float) -> None:
        if not self._records:
            self.deadline = asyncio.get_running_loop().time() + linger_s
        self._records.append(record)
        self._bytes += size

    def fits(self, size: int) -> bool:
        return not self._records or (
            len(self._records) < BATCH_RECORDS_MAX and self._bytes + size <= BATCH_METERED_BYTES_MAX
        )

    @property
    def full(self) -> bool:
        return len(self._records) >= BATCH_RECORDS_MAX or self._bytes >= BATCH_METERED_BYTES_MAX

    async def flush(self) -> None:
        records, self._records, self._bytes, self.deadline = self._records, [], 0, None
        if not records or self.failure is not None:
            return
        future = await self._session.submit(records)
        count = len(records)
        future.add_done_callback(lambda done: self._on_ack(done, count))

    def _on_ack(self, done: asyncio.Future[pb.AppendAck], count: int) -> None:
        if done.cancelled():
            return
        error = done.exception()
        if error is not None:
            if self.failure is None:
                self.failure = error
                self._on_failure()
            return
        ack = done.result()
        self.first_ack = self.first_ack or ack
        self.last_ack = ack
        self.acked += count
        log.debug(
            "appended %d records, seq_num %d..%d",
            count,
            ack.start.seq_num,
            ack.end.seq_num - 1,
            extra=fields(records=count, start=ack.start.seq_num, end=ack.end.seq_num),
        )

    def span(self) -> str:
        assert self.first_ack is not None and self.last_ack is not None
        return f"{self.first_ack.start.seq_num}..{self.last_ack.end.seq_num - 1}"


async def append(client: S2SClient, args: argparse.Namespace) -> None:
    if args.ndjson and args.format not in (None, JSON):
        raise UsageError(f"--ndjson is --format json: it cannot go with --format {args.format}")
    line_format = JSON if args.ndjson else (args.format or TEXT)
    source = "stdin" if args.input == "-" else args.input
    file = _open_input(args.input)
    stream = client.stream(args.basin, args.stream, encryption_key=args.encryption_key)
    session = ProducerSession(
        stream,
        INFLIGHT_BATCHES_MAX,
        retry_s_max=args.retry_s,
        match_seq_num=args.match_seq_num,
        fencing_token=args.fencing_token,
    )
    reader = LineReader(file, asyncio.get_running_loop())
    batcher = Batcher(session, on_failure=reader.wake)
    size = _size(file)
    try:
        wanted = progress_wanted(args.progress, args.input != "-")
        with progress_bar(wanted, f"append {Path(source).name}", "bytes") as bar:
            if size is not None:
                bar.set_total(size)
            try:
                lines = await _feed(reader, batcher, args, line_format, source, bar.advance)
            finally:
                # Not on Ctrl-C (this task cancelled): the acks may be a server restart away,
                # and the user asked to stop now.
                task = asyncio.current_task()
                if task is None or not task.cancelling():
                    await session.close()
    except (UsageError, S2SError, S2Error) as error:
        raise _with_progress(error, batcher, session, args.retry_s) from None
    if batcher.failure is not None:
        raise _with_progress(batcher.failure, batcher, session, args.retry_s) from None
    if lines == 0:
        raise UsageError(f"nothing to append: {source} was empty")
    assert batcher.first_ack is not None and batcher.last_ack is not None
    Output(args.json).result(
        f"appended {batcher.acked} record{'' if batcher.acked == 1 else 's'}, "
        f"seq_num {batcher.span()}",
        {
            "appended": batcher.acked,
            "start": _position(batcher.first_ack.start),
            "end": _position(batcher.last_ack.end),
            "tail": _position(batcher.last_ack.tail),
        },
    )


async def _feed(
    reader: LineReader,
    batcher: Batcher,
    args: argparse.Namespace,
    line_format: str,
    source: str,
    advance: Callable[[int], None],
) -> int:
    """Reads every line into batches; returns how many lines there were."""
    loop = asyncio.get_running_loop()
    linger_s = args.linger_ms / 1000
    number = 0
    while batcher.failure is None:
        timeout = None if batcher.deadline is None else max(0.0, batcher.deadline - loop.time())
        try:
            chunk = await asyncio.wait_for(reader.next(), timeout)
        except TimeoutError:
            await batcher.flush()
            continue
        if chunk is None:
            break
        if isinstance(chunk, LineTooLong):
            raise UsageError(
                f"{source} line {number + 1} is longer than an append takes "
                f"({LINE_BYTES_MAX} bytes)"
            )
        advance(chunk.bytes_read)
        for line in chunk.lines:
            number += 1
            where = f"{source} line {number}"
            record = parse_line(line, line_format, where)
            size = metered_size(record)
            if size > BATCH_METERED_BYTES_MAX:
                raise UsageError(
                    f"{where} is a record of {size} metered bytes, more than an append "
                    f"takes ({BATCH_METERED_BYTES_MAX})"
                )
            if not batcher.fits(size):
                await batcher.flush()
            batcher.add(record, size, linger_s)
            if batcher.full:
                await batcher.flush()
        if linger_s == 0:
            await batcher.flush()
    await batcher.flush()
    return number


def _open_input(path: str) -> IO[bytes]:
    if path == "-":
        # Bytes, not text: a plain line is stored exactly as it was, whatever its encoding.
        return sys.stdin.buffer
    try:
        return open(path, "rb")
    except OSError as error:
        raise UsageError(f"-i {path}: {error.strerror}") from None


def _size(file: IO[bytes]) -> int | None:
    """The input's size if it is a regular file (a bar then shows how much is left)."""
    try:
        status = os.fstat(file.fileno())
    except (OSError, ValueError):
        return None
    return status.st_size if stat.S_ISREG(status.st_mode) else None


def _with_progress(
    error: BaseException, batcher: Batcher, session: ProducerSession, retry_s: int
) -> BaseException:
    """The error, saying which lines were appended before it (they are durable), so a retry
    can start after them, and whether the lines sent after them may have been too."""
    notes = []
    if isinstance(error, S2SError | S2Error):
        kind = ERROR_KINDS.get(error.code)
        if kind is not None and kind.retryable:
            notes.append(f"given up after {retry_s} s without an ack (--retry-s)")
    maybe = session.unacknowledged_may_be_written
    if batcher.acked:
        done = f"the first {batcher.acked} lines were appended as seq_num {batcher.span()}"
        notes.append(done if maybe else f"{done}, no more")
    if maybe and batcher.acked:
        notes.append(
            "the lines sent after them were not acknowledged, and may have been appended too"
        )
    elif maybe:
        notes.append("the lines sent were not acknowledged, and may have been appended")
    if isinstance(error, UsageError):
        return UsageError("; ".join([str(error), *notes]))
    if isinstance(error, S2SError | S2Error):
        return S2SError(error.code, "; ".join([error.message, *notes]))
    return S2SError("other", "; ".join([str(error), *notes]))


def _position(position: pb.StreamPosition) -> dict[str, int]:
    return {"seq_num": position.seq_num, "timestamp": position.timestamp}


COMMAND = Command(
    "append",
    "append lines (stdin or -i FILE) to a stream as records, as they arrive",
    add_arguments,
    append,
    stream_key=True,
    stream_target=True,
    description="Append input lines as records. Lines are sent as they arrive (a batch waits "
    "at most --linger-ms for more), so `tail -f app.log | s2s append s2://b/logs` is a live "
    "feed. If the server restarts or the connection drops, the lines not yet acknowledged are "
    "sent again through a new connection (for up to --retry-s), and none is written twice. On "
    "a failure, the error says which lines were appended.",
)
