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
