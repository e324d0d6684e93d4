"""The metrics' rows in the `USAGE` table: every key's byte layout and every value's encoding.

The first byte of a key says what the row is. Integers in keys are big-endian (byte order is
numeric order), values are little-endian. Basin names never contain 0x00 (`[a-z0-9-]`), so it
ends a basin name inside a key. These layouts must stay stable: a server reads the rows an
older one wrote.

| key                                                     | value               | lifecycle   |
|---------------------------------------------------------|---------------------|-------------|
| `c` ‖ resolution ‖ basin ‖ 0x00 ‖ bucket (u32) ‖ series | u64: bucket's count | add, expire |
| `b` ‖ basin ‖ 0x00 ‖ hour (u32)                         | u64: stored bytes   | put, expire |
| `s` ‖ sid (u64) ‖ minute (u32)                          | u64: stored bytes   | put, expire |
| `t` ‖ sid (u64)                                         | `StreamSnapshot`    | put, delete |

Flushes add to counters and put the others; an hourly pass expires old rows; a snapshot is
deleted with its stream.

- Counters (`c`): resolution is `m`, `h` or `d`; bucket is the Unix second its minute, hour
  or (UTC) day starts; series names what is counted (`append-ops/express`, `read-throughput`,
  `account-ops/list-basins`...). Account-level series have the empty basin name. Each flush adds
  the same amounts to the minute, hour and day rows, so a query of any interval reads its rows
  directly.
- Storage samples (`b`, `s`): the last value a flush saw in that hour (basin) or minute
  (stream). Every basin with a stream gets one each hour; a stream gets one in each minute its
  storage changed.
- Snapshots (`t`): a stream's stored bytes at the flush, with the stream's next sequence number
  and first stored sequence number at that moment. At start-up, a stream whose tail and first
  batch are still where its snapshot says takes the snapshot's bytes; any other is counted
  again from its batches (server/usage/storage.py).
"""

from __future__ import annotations

import struct
from typing import Literal, NamedTuple

Resolution = Literal["m", "h", "d"]
RESOLUTION_SECONDS: dict[Resolution, int] = {"m": 60, "h": 3600, "d": 86400}

COUNTER = b"c"
BASIN_SAMPLE = b"b"
STREAM_SAMPLE = b"s"
SNAPSHOT = b"t"

_U32 = struct.Struct(">I")
_U64_BE = struct.Struct(">Q")
_U64 = struct.Struct("<Q")
_SID_TIME = struct.Struct(">QI")
_SNAPSHOT = struct.Struct("<QQQ")


def counter_key(resolution: Resolution, basin: str, bucket_s: int, series: str = "") -> bytes:
    """With `series` empty: where the bucket's rows start (a bound for scans)."""
    return (
        COUNTER
        + resolution.encode()
        + basin.encode()
        + b"\x00"
        + _U32.pack(bucket_s)
        + series.encode()
    )


def counter_prefix(resolution: Resolution, basin: str) -> bytes:
    return COUNTER + resolution.encode() + basin.encode() + b"\x00"


def parse_counter_key(key: bytes) -> tuple[str, int, str]:
    """(basin, bucket, series) of a counter key."""
    end = key.index(b"\x00", 2)
    (bucket_s,) = _U32.unpack_from(key, end + 1)
    return key[2:end].decode(), bucket_s, key[end + 1 + _U32.size :].decode()


def basin_sample_key(basin: str, hour_s: int) -> bytes:
    return BASIN_SAMPLE + basin.encode() + b"\x00" + _U32.pack(hour_s)


def parse_basin_sample_key(key: bytes) -> tuple[str, int]:
    end = key.index(b"\x00", 1)
    return key[1:end].decode(), _U32.unpack_from(key, end + 1)[0]


def stream_sample_key(sid: int, minute_s: int) -> bytes:
    return STREAM_SAMPLE + _SID_TIME.pack(sid, minute_s)


def parse_stream_sample_key(key: bytes) -> tuple[int, int]:
    sid, minute_s = _SID_TIME.unpack_from(key, 1)
    return int(sid), int(minute_s)


def snapshot_key(sid: int) -> bytes:
    return SNAPSHOT + _U64_BE.pack(sid)


def parse_snapshot_key(key: bytes) -> int:
    return int(_U64_BE.unpack_from(key, 1)[0])


def encode_u64(value: int) -> bytes:
    assert value >= 0, f"a count or size is never negative, got {value}"
    return _U64.pack(value)


def decode_u64(data: bytes) -> int:
    return int(_U64.unpack(data)[0])


class StreamSnapshot(NamedTuple):
    next_seq: int
    front_seq: int
    """The first stored record's sequence number; `next_seq` if none is stored."""
    stored_bytes: int

    def encode(self) -> bytes:
        return _SNAPSHOT.pack(self.next_seq, self.front_seq, self.stored_bytes)

    @classmethod
    def decode(cls, data: bytes) -> StreamSnapshot:
        return cls(*_SNAPSHOT.unpack(data))
