"""The on-disk data model: every key's byte layout and every value's encoding.

Invariants (the engine relies on them; tests check them after crashes):

- Stream ids are assigned once from `SYSTEM[next_stream_id]`, never reused, and must stay
  stable: a deleted stream's data is found only through its id.
- A stream's records live in whole batches: `BATCHES[sid ‖ last_seq]` holds records
  first_seq..last_seq of one append, written in the same commit as the stream's `TAILS` row.
  Batches of a stream are contiguous: each batch's first_seq is the previous batch's
  last_seq + 1, and the last batch's last_seq + 1 equals the tail row's `next_seq`. Deleting
  (trim, expiry) removes whole batches from the front only, so the survivors stay contiguous.
- Timestamps never decrease along a stream, so `TIMESTAMPS[sid ‖ last_ts ‖ last_seq]` (one key
  per batch, same commit) is ordered like the batches and finds the first batch whose last
  record is at or after a time.
- A stream's `PRODUCERS` rows change only in the commit of one of that producer's batches to
  the stream (with its tail row), or are deleted (idle past the expiry, or the stream deleted):
  a row's newest ack is the producer's last batch that is durable, never one in flight.
- A batch's payload is already the protobuf encoding of `ReadBatch.records` entries, so a read
  returns slices of it without decoding records. Every batch is checked on read: version 2
  (written now) ends in a CRC-32C of all its other bytes; version 1 (still read) holds a
  CRC-32 of its payload in the header.

All integers in keys are big-endian (so byte order is numeric order); in values they are
little-endian.

| table      | key                             | value                       | lifecycle       |
|------------|---------------------------------|-----------------------------|-----------------|
| BASINS     | basin name (UTF-8)              | JSON basin record           | updatable, del. |
| STREAMS    | basin ‖ 0x00 ‖ `stream_key`     | JSON stream record (+ sid)  | updatable, del. |
| TAILS      | sid (u64)                       | `TailRow`                   | every append    |
| BATCHES    | sid (u64) ‖ last_seq (u64)      | batch (`encode_batch`)      | immutable, del. |
| TIMESTAMPS | sid ‖ last_ts (u64) ‖ last_seq  | empty                       | immutable, del. |
| SYSTEM     | b"next_stream_id"               | u64 little-endian           | updatable       |
| SYSTEM     | b"deleting/basin/" ‖ basin      | empty: awaits deletion      | deletable       |
| SYSTEM     | b"deleting/stream/" ‖ stream key| u64 BE sid: awaits deletion | deletable       |
| SYSTEM     | b"reclaimed_at_ms"              | u64 LE: last deletion's end | updatable       |
| ACCESS_TOKENS | token id (UTF-8)          | JSON: secret digest, scope  | issued, revoked |
| USAGE      | metrics: server/usage/layout.py | counts, storage samples     | flushed, expire |
| PRODUCERS  | sid (u64) ‖ producer id (ASCII) | `ProducerRow`               | per batch, exp. |
"""

from __future__ import annotations

import hashlib
import struct
import sys
import zlib
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate

import google_crc32c

from s2s.records import BATCH_RECORDS_MAX, PRODUCER_WINDOW_BATCHES
from s2s.wire import Headers, record_entries

NEXT_STREAM_ID_KEY = b"next_stream_id"
RECLAIMED_AT_KEY = b"reclaimed_at_ms"
DELETING_BASIN_PREFIX = b"deleting/basin/"
DELETING_STREAM_PREFIX = b"deleting/stream/"

_U64_BE = struct.Struct(">Q")
_SID_SEQ = struct.Struct(">QQ")
_SID_TS_SEQ = struct.Struct(">QQQ")


STREAM_KEY_NAME_BYTES_MAX = 440
"""LMDB keys are at most 511 bytes; longer stream names are cut here and suffixed by a hash."""


def stream_key(basin: str, stream: str) -> bytes:
    """Order-preserving for names up to 440 bytes; longer names that share their first 440
    bytes are ordered by a hash of the full name (the record holds the full name)."""
    name = stream.encode()
    if len(name) > STREAM_KEY_NAME_BYTES_MAX:
        name = name[:STREAM_KEY_NAME_BYTES_MAX] + hashlib.sha256(name).digest()[:16]
    return basin.encode() + b"\x00" + name


def stream_key_prefix(basin: str) -> bytes:
    return basin.encode() + b"\x00"


def prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with `prefix` (None: no bound)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


def sid_key(sid: int) -> bytes:
    return _U64_BE.pack(sid)


def batch_key(sid: int, last_seq: int) -> bytes:
    return _SID_SEQ.pack(sid, last_seq)


def batch_key_last_seq(key: bytes) -> int:
    return int(_SID_SEQ.unpack(key)[1])


def timestamp_key(sid: int, last_ts: int, last_seq: int) -> bytes:
    return _SID_TS_SEQ.pack(sid, last_ts, last_seq)


def timestamp_key_last_seq(key: bytes) -> int:
    return int(_SID_TS_SEQ.unpack(key)[2])


def producer_key(sid: int, producer_id: str) -> bytes:
    """A producer's row of one stream: the stream's rows share the sid prefix (8 + at most 64
    bytes, well under LMDB's 511)."""
    return _U64_BE.pack(sid) + producer_id.encode()


def producer_key_prefix(sid: int) -> bytes:
    return _U64_BE.pack(sid)


def producer_key_parts(key: bytes) -> tuple[int, str]:
    """The stream id and producer id of a `producer_key`."""
    return int(_U64_BE.unpack_from(key)[0]), key[_U64_BE.size :].decode()


# --- tail row ------------------------------------------------------------------------------

_TAIL = struct.Struct("<QQQQ")


@dataclass(frozen=True)
class TailRow:
    """A stream's durable sequencing state, rewritten by every append of the stream."""

    next_seq: int = 0
    last_timestamp: int = 0
    trim_point: int = 0
    last_write_ms: int = 0
    fencing_token: str = ""

    def encode(self) -> bytes:
        return (
            _TAIL.pack(self.next_seq, self.last_timestamp, self.trim_point, self.last_write_ms)
            + self.fencing_token.encode()
        )

    @classmethod
    def decode(cls, data: bytes) -> TailRow:
        next_seq, last_ts, trim_point, last_write_ms = _TAIL.unpack_from(data)
        return cls(next_seq, last_ts, trim_point, last_write_ms, data[_TAIL.size :].decode())


# --- producer rows -------------------------------------------------------------------------

PRODUCER_ROW_VERSION = 1
# version u8, acks u8, reserved u16, last_write_ms u64 (its last batch's arrival: the expiry
# sweep's clock), first_batch_seq u64, last_batch_seq u64; then one `_PRODUCER_ACK` per
# remembered batch, oldest first, the last one last_batch_seq's.
_PRODUCER_HEAD = struct.Struct("<BBHQQQ")
_PRODUCER_ACK = struct.Struct("<QQQQ")
"""start seq_num, start timestamp, end seq_num, end timestamp: the batch's ack without the tail."""


class CorruptProducerRow(Exception):
    """A stored producer row is not one this version writes."""


@dataclass(frozen=True)
class ProducerRow:
    """A producer's batches to one stream, as the server remembers them to answer retries.

    Batch sequence numbers first_batch_seq..last_batch_seq were each appended exactly once
    (a producer's batches are taken only in order, each one after the last); the acks of the
    last `len(acks)` of them (at most `PRODUCER_WINDOW_BATCHES`) are kept. Immutable: each
    batch writes a new row, built from the row before by `then`.
    """

    encoded: bytes
    """The stored value: what the next batch's commit expects, and what the sweep reads."""
    first_batch_seq: int
    last_batch_seq: int

    @classmethod
    def decode(cls, data: bytes) -> ProducerRow:
        if len(data) < _PRODUCER_HEAD.size:
            raise CorruptProducerRow("producer row shorter than its header")
        version, count, _, _, first, last = _PRODUCER_HEAD.unpack_from(data)
        if version != PRODUCER_ROW_VERSION:
            raise CorruptProducerRow(f"producer row of unknown version {version}")
        if not 0 < count <= PRODUCER_WINDOW_BATCHES or count > last - first + 1:
            raise CorruptProducerRow(f"producer row holds {count} acks of batches {first}..{last}")
        if len(data) != _PRODUCER_HEAD.size + count * _PRODUCER_ACK.size:
            raise CorruptProducerRow(f"producer row of {len(data)} bytes for {count} acks")
        return cls(data, first, last)

    @classmethod
    def first(
        cls, batch_seq: int, start: tuple[int, int], end: tuple[int, int], write_ms: int
    ) -> ProducerRow:
        """The row after a producer's first batch to the stream (as far as the store knows)."""
        return cls._build(batch_seq, batch_seq, b"", start, end, write_ms)

    def then(
        self, batch_seq: int, start: tuple[int, int], end: tuple[int, int], write_ms: int
    ) -> ProducerRow:
        """The row after the producer's next batch (`last_batch_seq + 1`); the oldest ack goes
        once the window is full. Slices of the encoded row: no ack is decoded."""
        assert batch_seq == self.last_batch_seq + 1, (batch_seq, self.last_batch_seq)
        kept = self.encoded[_PRODUCER_HEAD.size :][
            -(PRODUCER_WINDOW_BATCHES - 1) * _PRODUCER_ACK.size :
        ]
        return self._build(self.first_batch_seq, batch_seq, kept, start, end, write_ms)

    @classmethod
    def _build(
        cls,
        first: int,
        last: int,
        kept: bytes,
        start: tuple[int, int],
        end: tuple[int, int],
        write_ms: int,
    ) -> ProducerRow:
        count = len(kept) // _PRODUCER_ACK.size + 1
        encoded = b"".join(
            (
                _PRODUCER_HEAD.pack(PRODUCER_ROW_VERSION, count, 0, write_ms, first, last),
                kept,
                _PRODUCER_ACK.pack(*start, *end),
            )
        )
        return cls(encoded, first, last)

    @property
    def acks_kept(self) -> int:
        return (len(self.encoded) - _PRODUCER_HEAD.size) // _PRODUCER_ACK.size

    @property
    def last_write_ms(self) -> int:
        return int(_PRODUCER_HEAD.unpack_from(self.encoded)[3])

    def ack_of(self, batch_seq: int) -> tuple[tuple[int, int], tuple[int, int]] | None:
        """(start, end) of one of the remembered batches; None if it is not one of them."""
        index = batch_seq - (self.last_batch_seq - self.acks_kept + 1)
        if not 0 <= index < self.acks_kept:
            return None
        start_seq, start_ts, end_seq, end_ts = _PRODUCER_ACK.unpack_from(
            self.encoded, _PRODUCER_HEAD.size + index * _PRODUCER_ACK.size
        )
        return (start_seq, start_ts), (end_seq, end_ts)


# --- batches -------------------------------------------------------------------------------

BATCH_MAGIC = 0xB5
BATCH_VERSION = 2
# magic u8, version u8, reserved u16, count u32, first_seq u64, arrival_ms u64, then a u32 that
# is the payload's CRC-32 in version 1 and 0 in version 2.
_BATCH_HEADER = struct.Struct("<BBHIQQI")
_CRC_TRAILER = struct.Struct("<I")
CRC32C_RESIDUE = 0x48674BC7
"""The CRC-32C of any bytes followed by their own CRC-32C (little-endian): a version 2 batch is
intact when the CRC-32C of the whole value is this, so checking needs no copy of a slice.
CRC-32C is computed in hardware (`google_crc32c`: ~45 us per MiB here, zlib's CRC-32 ~400 us)."""


class CorruptBatch(Exception):
    """A stored batch failed its checks: the storage returned bytes we did not write."""


def _u64_array(values: list[int]) -> array[int]:
    arr = array("Q", values)
    if sys.byteorder != "little":
        arr.byteswap()
    return arr


def _u32_array(values: list[int]) -> array[int]:
    arr = array("I", values)
    if sys.byteorder != "little":
        arr.byteswap()
    return arr


def encode_batch(
    bodies: Sequence[bytes | memoryview],
    headed: Mapping[int, Headers],
    first_seq: int,
    timestamps: list[int],
    metered_sizes: list[int],
    arrival_ms: int,
) -> bytes:
    """Encode one append as a batch value (`headed`: header pairs of the records with any).

    Layout: header, offsets[count + 1] (u32, start of each record's entry in the payload and
    the payload's length), timestamps[count] (u64), metered sizes[count] (u32), payload, and
    the CRC-32C of all of that (u32).
    """
    chunks, lengths = record_entries(bodies, headed, first_seq, timestamps)
    parts = [
        _BATCH_HEADER.pack(BATCH_MAGIC, BATCH_VERSION, 0, len(bodies), first_seq, arrival_ms, 0),
        _u32_array([0, *accumulate(lengths)]).tobytes(),
        _u64_array(timestamps).tobytes(),
        _u32_array(metered_sizes).tobytes(),
        b"".join(chunks),
    ]
    crc = 0
    for part in parts:
        crc = google_crc32c.extend(crc, part)
    parts.append(_CRC_TRAILER.pack(crc))
    return b"".join(parts)


@dataclass(frozen=True)
class BatchSummary:
    """What background jobs and the storage metrics need of a batch, read without copying its
    records."""

    first_seq: int
    last_seq: int
    last_timestamp: int
    arrival_ms: int
    metered_bytes: int
    """The metered size of all its records."""


BATCH_SUMMARY_BYTES_MAX = _BATCH_HEADER.size + 4 + 16 * BATCH_RECORDS_MAX
"""How far into a batch `summarize_batch` reads at most (its header, offsets, timestamps and
metered sizes: 36 + 16 bytes a record), for stores that can send only a value's head."""


def summarize_batch(data: memoryview) -> BatchSummary:
    _, _, _, count, first_seq, arrival_ms, _ = _BATCH_HEADER.unpack_from(data)
    last_ts_at = _BATCH_HEADER.size + 4 * (count + 1) + 8 * (count - 1)
    (last_timestamp,) = struct.unpack_from("<Q", data, last_ts_at)
    metered_at = last_ts_at + 8
    metered = array("I")
    metered.frombytes(data[metered_at : metered_at + 4 * count])
    if sys.byteorder != "little":
        metered.byteswap()
    return BatchSummary(first_seq, first_seq + count - 1, last_timestamp, arrival_ms, sum(metered))


class Batch:
    """A decoded batch value: per-record positions and sizes, and the encoded payload."""

    __slots__ = ("arrival_ms", "count", "first_seq", "metered", "offsets", "payload", "timestamps")

    def __init__(self, data: bytes) -> None:
        if len(data) < _BATCH_HEADER.size:
            raise CorruptBatch("batch shorter than its header")
        magic, version, _, count, first_seq, arrival_ms, crc = _BATCH_HEADER.unpack_from(data)
        if magic != BATCH_MAGIC or version not in (1, 2):
            raise CorruptBatch(f"bad batch magic/version {magic:#x}/{version}")
        if version == 2 and google_crc32c.value(data) != CRC32C_RESIDUE:
            raise CorruptBatch(f"batch at seq {first_seq} failed its checksum")
        # The checksum says these are the bytes written; these checks say they are a batch,
        # so that a damaged one is CorruptBatch and never an exception of the code below (the
        # fuzzer found a count larger than the arrays: ValueError from `frombytes`). Offsets
        # are not checked record by record: `encode_batch` builds them by accumulation, and a
        # pass over 1,000 of them costs four times this whole decode.
        trailer = _CRC_TRAILER.size if version == 2 else 0
        if count == 0 or _BATCH_HEADER.size + 16 * count + 4 + trailer > len(data):
            raise CorruptBatch(f"batch at seq {first_seq} is too short for {count} records")
        pos = _BATCH_HEADER.size
        offsets = array("I")
        offsets.frombytes(data[pos : pos + 4 * (count + 1)])
        pos += 4 * (count + 1)
        timestamps = array("Q")
        timestamps.frombytes(data[pos : pos + 8 * count])
        pos += 8 * count
        metered = array("I")
        metered.frombytes(data[pos : pos + 4 * count])
        pos += 4 * count
        if sys.byteorder != "little":
            offsets.byteswap()
            timestamps.byteswap()
            metered.byteswap()
        payload = memoryview(data)[pos : len(data) - trailer]
        if offsets[0] != 0 or len(payload) != offsets[-1]:
            raise CorruptBatch(f"batch at seq {first_seq}: its offsets do not span its payload")
        if version == 1 and zlib.crc32(payload) != crc:
            raise CorruptBatch(f"batch at seq {first_seq} failed its checksum")
        self.count: int = count
        self.first_seq: int = first_seq
        self.arrival_ms: int = arrival_ms
        self.offsets = offsets
        self.timestamps = timestamps
        self.metered = metered
        self.payload = payload

    @property
    def last_seq(self) -> int:
        return self.first_seq + self.count - 1

    def index_of_seq(self, seq: int) -> int:
        """Index of the record with sequence number `seq`, clamped into the batch."""
        return min(max(seq - self.first_seq, 0), self.count)

    def index_of_timestamp(self, timestamp: int) -> int:
        """Index of the first record with a timestamp at or after `timestamp`."""
        return bisect_left(self.timestamps, timestamp)

    def index_before_timestamp(self, until: int, start: int) -> int:
        """Index one past the last record (from `start`) with a timestamp before `until`."""
        return max(start, bisect_left(self.timestamps, until, lo=start))

    def index_within_bytes(self, start: int, bytes_budget: int) -> int:
        """Index one past the last record that fits, from `start`, within `bytes_budget`."""
        return start + bisect_right(list(accumulate(self.metered[start:])), bytes_budget)

    def metered_between(self, start: int, end: int) -> int:
        return sum(self.metered[start:end])

    def slice(self, start: int, end: int) -> memoryview:
        """Encoded `ReadBatch.records` entries of records start..end-1."""
        return self.payload[self.offsets[start] : self.offsets[end]]
