"""Reads: where a read starts, what a bounded read returns, and how a session follows the tail.

Records come out of storage as slices of stored batch payloads (already protobuf-encoded
`ReadBatch.records` entries), so a read does per-batch work, not per-record work. Reads see
only the durable tail: `end_seq` is always the sequencer's durable next sequence number.
Semantics follow docs/s2-compat.md §8.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass

from s2s.errors import ReadUnwritten, S2Error, invalid, server_draining
from server.sequencer import StreamPosition, StreamSequencer
from server.storage.kv import KeyValueStore, Table
from server.storage.layout import (
    Batch,
    batch_key,
    batch_key_last_seq,
    timestamp_key,
    timestamp_key_last_seq,
)

READ_RECORDS_MAX = 1000
READ_BYTES_MAX = 1024 * 1024
UNARY_WAIT_SECS_MAX = 60
HEARTBEAT_SECS_MIN = 5.0
HEARTBEAT_SECS_MAX = 15.0
_BATCHES_PER_SCAN_MAX = 256


@dataclass(frozen=True)
class ReadStart:
    """Exactly one of the three may be set; none means `tail_offset=0`."""

    seq_num: int | None = None
    timestamp: int | None = None
    tail_offset: int | None = None


@dataclass(frozen=True)
class ReadLimits:
    count: int | None = None
    bytes: int | None = None
    until: int | None = None
    clamp: bool = False
    wait_secs: float | None = None

    @property
    def bounded(self) -> bool:
        return self.count is not None or self.bytes is not None or self.until is not None

    @property
    def may_follow(self) -> bool:
        return not self.bounded or bool(self.wait_secs)


@dataclass(frozen=True)
class RecordSlice:
    """Consecutive records, encoded as `ReadBatch.records` entries."""

    payload: bytes
    count: int
    metered_bytes: int
    first_seq: int
    last_seq: int
    last_timestamp: int


@dataclass(frozen=True)
class ReadOutput:
    """One batch of a read: records (None for a heartbeat) and, on live batches and on a
    batch that ends at the tail, the tail."""

    records: RecordSlice | None
    tail: StreamPosition | None = None


@dataclass(frozen=True)
class ReadChunk:
    """Records read in one go, which bound stopped the read ("count", "bytes", "until", or
    None at the end of the durable records), and where the next read continues."""

    records: RecordSlice | None
    stopped_by: str | None
    next_seq: int


def validate_read(start: ReadStart, limits: ReadLimits) -> None:
    given = [v for v in (start.seq_num, start.timestamp, start.tail_offset) if v is not None]
    if len(given) > 1:
        raise invalid("only one of seq_num, timestamp and tail_offset may be given")
    if start.timestamp is not None and limits.until is not None and limits.until <= start.timestamp:
        raise invalid("start `timestamp` exceeds or equal to `until`")


def read_stored(
    kv: KeyValueStore,
    sid: int,
    start_seq: int,
    end_seq: int,
    count_max: int,
    bytes_max: int,
    until: int | None,
) -> ReadChunk:
    """Read up to the limits from `start_seq` (before `end_seq`). Blocking: run off the loop."""
    parts: list[memoryview] = []
    count = 0
    size = 0
    first_seq = last_seq = last_ts = -1
    position = start_seq
    # Batches hold 1..1000 records; scan one first and widen geometrically, so a read of big
    # batches copies no batch it will not use, and a read of tiny ones needs few scans.
    scan_batches = 1
    while position < end_seq:
        if count >= count_max:
            records = _slice(parts, count, size, first_seq, last_seq, last_ts)
            return ReadChunk(records, "count", position)
        items = kv.scan(
            Table.BATCHES, batch_key(sid, position), batch_key(sid, end_seq), scan_batches
        )
        scan_batches = min(scan_batches * 2, _BATCHES_PER_SCAN_MAX, count_max - count)
        if not items:  # the rest of the range was deleted (trimmed or expired)
            position = end_seq
            break
        for key, value in items:
            batch = Batch(value)
            if batch.last_seq != batch_key_last_seq(key):
                raise S2Error("storage", f"batch key and value disagree at seq {batch.last_seq}")
            begin = batch.index_of_seq(position)
            bounds = [
                ("count", begin + count_max - count),
                ("bytes", batch.index_within_bytes(begin, bytes_max - size)),
            ]
            if until is not None:
                bounds.append(("until", batch.index_before_timestamp(until, begin)))
            stop = min(batch.count, *(index for _, index in bounds))
            if stop > begin:
                parts.append(batch.slice(begin, stop))
                if first_seq < 0:
                    first_seq = batch.first_seq + begin
                count += stop - begin
                size += batch.metered_between(begin, stop)
                last_seq = batch.first_seq + stop - 1
                last_ts = batch.timestamps[stop - 1]
            if stop < batch.count:
                reason = next(name for name, index in bounds if index == stop)
                records = _slice(parts, count, size, first_seq, last_seq, last_ts)
                return ReadChunk(records, reason, batch.first_seq + stop)
            position = batch.last_seq + 1
    return ReadChunk(_slice(parts, count, size, first_seq, last_seq, last_ts), None, position)


def _slice(
    parts: list[memoryview], count: int, size: int, first: int, last: int, last_ts: int
) -> RecordSlice | None:
    if not count:
        return None
    return RecordSlice(b"".join(parts), count, size, first, last, last_ts)


def seq_at_timestamp(kv: KeyValueStore, sid: int, timestamp: int, tail_seq: int) -> int:
    """First sequence number with a timestamp at or after `timestamp`, else the tail."""
    keys = kv.scan(
        Table.TIMESTAMPS, timestamp_key(sid, timestamp, 0), timestamp_key(sid + 1, 0, 0), 1
    )
    if not keys:
        return tail_seq
    last_seq = timestamp_key_last_seq(keys[0][0])
    value = kv.get(Table.BATCHES, batch_key(sid, last_seq))
    if value is None:  # deleted between the two lookups: the next batch starts later
        return seq_at_timestamp(kv, sid, timestamp, tail_seq)
    batch = Batch(value)
    return batch.first_seq + batch.index_of_timestamp(timestamp)


class Reader:
    """Serves reads of sequencers' streams from a key-value store."""

    def __init__(self, kv: KeyValueStore, draining: asyncio.Event) -> None:
        """`draining` is the store's: once set, unary reads waiting for records end, and
        later ones do not wait (`server_draining`)."""
        self._kv = kv
        self._draining = draining

    async def resolve_start(
        self, stream: StreamSequencer, start: ReadStart, limits: ReadLimits, can_follow: bool
    ) -> int:
        """The first sequence number to read, or `ReadUnwritten` (416) per docs/s2-compat.md §8."""
        tail = stream.tail
        by_timestamp = start.timestamp is not None
        if start.seq_num is not None:
            seq = start.seq_num
            beyond = seq > tail.seq_num
        elif start.timestamp is not None:
            beyond = start.timestamp > tail.timestamp
            seq = tail.seq_num
            if not beyond:
                seq = await asyncio.to_thread(
                    seq_at_timestamp, self._kv, stream.sid, start.timestamp, tail.seq_num
                )
        else:
            seq = max(tail.seq_num - (start.tail_offset or 0), 0)
            beyond = False
        if beyond:
            if not limits.clamp:
                raise ReadUnwritten(tail.seq_num, tail.timestamp)
            seq = tail.seq_num
            by_timestamp = False
        if seq == tail.seq_num and not can_follow and not by_timestamp:
            raise ReadUnwritten(tail.seq_num, tail.timestamp)
        return max(seq, stream.durable.trim_point)

    async def read_once(
        self,
        stream: StreamSequencer,
        start_seq: int,
        count_max: int,
        bytes_max: int,
        until: int | None,
        skip_trimmed: bool = True,
    ) -> ReadChunk:
        """Records from `start_seq`, or from the trim point if that is beyond it.

        A live session passes `skip_trimmed=False`: S2 trims eventually, and a reader already
        following a stream receives every batch appended after it caught up, trimmed or not
        (and the trim command itself), while the batches are still stored."""
        if stream.deleting:
            raise S2Error("stream_deletion_pending", f"stream {stream.name!r} is being deleted")
        if count_max <= 0:
            return ReadChunk(None, "count", start_seq)
        if bytes_max <= 0:
            return ReadChunk(None, "bytes", start_seq)
        if skip_trimmed:
            start_seq = max(start_seq, stream.durable.trim_point)
        end_seq = stream.durable.next_seq
        if start_seq >= end_seq:
            return ReadChunk(None, None, start_seq)
        return await asyncio.to_thread(
            read_stored, self._kv, stream.sid, start_seq, end_seq, count_max, bytes_max, until
        )

    async def read_unary(
        self, stream: StreamSequencer, start: ReadStart, limits: ReadLimits
    ) -> ReadOutput:
        """One bounded batch (at most 1000 records and 1 MiB), waiting up to `wait` if empty."""
        wait = min(limits.wait_secs or 0, UNARY_WAIT_SECS_MAX)
        seq = await self.resolve_start(stream, start, limits, can_follow=wait > 0)
        count = min(READ_RECORDS_MAX if limits.count is None else limits.count, READ_RECORDS_MAX)
        size = min(READ_BYTES_MAX if limits.bytes is None else limits.bytes, READ_BYTES_MAX)
        chunk = await self.read_once(stream, seq, count, size, limits.until)
        if chunk.records is not None or chunk.stopped_by is not None or wait <= 0:
            return ReadOutput(chunk.records)
        if self._draining.is_set():
            raise server_draining()
        stream.followers += 1
        try:
            arrived = await _unless_draining(stream.wait_durable_beyond(seq, wait), self._draining)
        finally:
            stream.followers -= 1
        if not arrived:
            return ReadOutput(None)
        chunk = await self.read_once(stream, seq, count, size, limits.until)
        return ReadOutput(chunk.records, stream.tail)

    async def session(
        self,
        stream: StreamSequencer,
        start: ReadStart,
        limits: ReadLimits,
        heartbeat_secs: Callable[[], float] = lambda: random.uniform(
            HEARTBEAT_SECS_MIN, HEARTBEAT_SECS_MAX
        ),
    ) -> AsyncGenerator[ReadOutput, None]:
        """Catch up from storage, then follow the tail live, with heartbeats while idle.

        Ends when count, bytes or `until` are exhausted, or when `wait` seconds pass without a
        new batch; follows forever if unbounded and no `wait` is given. An explicit `wait` of 0
        ends it once it has caught up to the tail, as S2 does.
        """
        seq = await self.resolve_start(stream, start, limits, can_follow=limits.may_follow)
        count_left = limits.count
        bytes_left = limits.bytes
        live = False
        loop = asyncio.get_running_loop()
        idle_since = loop.time()
        stream.followers += 1
        try:
            while True:
                chunk = await self.read_once(
                    stream,
                    seq,
                    READ_RECORDS_MAX if count_left is None else min(count_left, READ_RECORDS_MAX),
                    READ_BYTES_MAX if bytes_left is None else min(bytes_left, READ_BYTES_MAX),
                    limits.until,
                    skip_trimmed=not live,
                )
                records, stopped_by, seq = chunk.records, chunk.stopped_by, chunk.next_seq
                if records is not None:
                    # A batch that reaches the durable tail carries it, live or not: it tells
                    # the client it is caught up (the SDK's `is_caught_up`) with the batch.
                    at_tail = live or seq == stream.durable.next_seq
                    yield ReadOutput(records, stream.tail if at_tail else None)
                    idle_since = loop.time()
                    if count_left is not None:
                        count_left -= records.count
                    if bytes_left is not None:
                        bytes_left -= records.metered_bytes
                if count_left == 0 or bytes_left == 0 or stopped_by == "until":
                    return
                if stopped_by == "bytes" and records is None:
                    return  # the next record is larger than the bytes still allowed
                if stopped_by is not None or seq < stream.durable.next_seq:
                    continue
                if not limits.may_follow or limits.wait_secs == 0:
                    return
                if not live:
                    live = True
                    yield ReadOutput(None, stream.tail)
                while not await stream.wait_durable_beyond(
                    seq, _idle_timeout(heartbeat_secs(), limits.wait_secs, idle_since, loop.time())
                ):
                    if limits.wait_secs and loop.time() - idle_since >= limits.wait_secs:
                        return
                    yield ReadOutput(None, stream.tail)
        finally:
            stream.followers -= 1


async def _unless_draining(wait: Awaitable[bool], draining: asyncio.Event) -> bool:
    """`wait`'s outcome, or `server_draining` once the server drains first: a unary read may
    wait up to a minute, longer than shutdown grants a call, and cut off by the frontend's
    deadline it answered 500. It only waits, so cutting it changes nothing."""
    waiting = asyncio.ensure_future(wait)
    drained = asyncio.ensure_future(draining.wait())
    try:
        await asyncio.wait((waiting, drained), return_when=asyncio.FIRST_COMPLETED)
    finally:
        unfinished = [future for future in (waiting, drained) if not future.done()]
        for future in unfinished:
            future.cancel()
        if unfinished:
            # `asyncio.wait` lets them finish cancelling without raising their CancelledError,
            # so a cancellation of this task itself, arriving meanwhile, is not swallowed.
            await asyncio.wait(unfinished)
    if waiting.cancelled():
        raise server_draining()
    return waiting.result()


def _idle_timeout(heartbeat_s: float, wait_s: float | None, idle_since: float, now: float) -> float:
    """Sleep until the next heartbeat, or until `wait` expires if that comes first."""
    if not wait_s:
        return heartbeat_s
    return max(0.0, min(heartbeat_s, idle_since + wait_s - now))
