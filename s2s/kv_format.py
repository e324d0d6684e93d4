"""The key-value store's records: how a store's changes and snapshots are written to its
stream, and the rules for store names, keys and values (docs/adr/0015-kv-store.md).

A store named N in basin B is the stream `kv/N` of B (created with infinite retention and
arrival timestamps). Its records, in stream order, are of three kinds. The header names and
values below are the persisted format: they must stay stable.

- **A change** (`s2s-kv: put` or `s2s-kv: del`, then `s2s-kv-key: KEY`): the body is the
  value, UTF-8 text (empty for a delete: a tombstone). A commit is one append holding its
  changes, so it is atomic, and its `match_seq_num` is the position the committer loaded.
- **A snapshot part**, written by compaction (`s2s-kv: snapshot`, `s2s-kv-as-of: T`,
  `s2s-kv-changed: C`, `s2s-kv-snapshot: ID`, `s2s-kv-part: I/N`, decimal text): part I of N
  of snapshot ID, the store's live entries as of stream position T (every record before T
  folded), where C is one past the last change before T (0: none). A packed part's body is a
  JSON array of `[key, value, seq_num, timestamp]` (each entry's own change, kept); a value
  over `SNAPSHOT_INLINE_VALUE_BYTES_MAX` gets a part of its own instead, with the headers
  `s2s-kv-key`, `s2s-kv-seq-num` and `s2s-kv-timestamp` and the value as its body.
- **Command records** (trim, fence) change no entry.

Anything else in the stream (a record without these headers, or with them but malformed) is
foreign: readers skip it, and compaction never compacts a store that holds one, since
compacting would trim it away. How a reader folds these records into the store's state is
`s2s/kv_state.py`.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from s2s.config import StreamConfig
from s2s.errors import invalid
from s2s.records import (
    BATCH_METERED_BYTES_MAX,
    BATCH_RECORDS_MAX,
    RECORD_METERED_BYTES_MAX,
    is_command_record,
    metered_size,
)
from s2s.v1 import records_pb2 as pb
from s2s.wire import U64_MAX

OP_HEADER = b"s2s-kv"
KEY_HEADER = b"s2s-kv-key"
AS_OF_HEADER = b"s2s-kv-as-of"
CHANGED_HEADER = b"s2s-kv-changed"
SNAPSHOT_ID_HEADER = b"s2s-kv-snapshot"
PART_HEADER = b"s2s-kv-part"
SEQ_NUM_HEADER = b"s2s-kv-seq-num"
TIMESTAMP_HEADER = b"s2s-kv-timestamp"
PUT = b"put"
DELETE = b"del"
SNAPSHOT = b"snapshot"

STREAM_PREFIX = "kv/"
"""A store's stream is this and its name: `kv/cursors` holds the store `cursors`."""
DEFAULT_BASIN = "kv-stores"
"""The basin of a store when none is given (the SDK's `get_kv_store`, the CLI's `--basin`)."""
STREAM_CONFIG = StreamConfig(retention="infinite", timestamping_mode="arrival")
"""A store's stream: its records never expire (only compaction trims it: an age-based
retention would delete changes no snapshot holds), and its timestamps are the server's."""

STORE_NAME_BYTES_MAX = 128
KEY_BYTES_MAX = 1024
_CHANGE_OVERHEAD_BYTES_MAX = 2048
"""A change record's metered bytes beside its value: 8, two headers' 2 + 2 bytes, their names
and values (the longest key included) come to 1,048; the rest is margin."""
VALUE_BYTES_MAX = RECORD_METERED_BYTES_MAX - _CHANGE_OVERHEAD_BYTES_MAX
"""Largest value: one change with the longest key still fits a record (1 MiB metered)."""
COMMIT_CHANGES_MAX = BATCH_RECORDS_MAX
COMMIT_METERED_BYTES_MAX = BATCH_METERED_BYTES_MAX
"""A commit is one append: at most 1000 changes and 1 MiB metered (keys, values, headers)."""
SNAPSHOT_PART_BYTES_TARGET = 256 * 1024
"""A packed snapshot part's body stops growing past this: four to a 1 MiB append."""
SNAPSHOT_INLINE_VALUE_BYTES_MAX = 64 * 1024
"""Larger values get a part of their own. Packed ones are JSON strings, which escaping can make
up to 6 times longer: 64 KiB becomes at most 384 KiB, still well inside a record."""

_STORE_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_STORED_STORE = re.compile(r"kv/([A-Za-z0-9_.-]+)\Z")

Op = Literal["put", "delete"]


# --- names, keys, values -----------------------------------------------------------------


def validate_store_name(name: str) -> None:
    """1-128 of A-Z, a-z, 0-9, `_`, `.`, `-` (not `.` or `..`): one path segment, one argument."""
    size = len(name.encode("utf-8", "surrogatepass"))
    if not 1 <= size <= STORE_NAME_BYTES_MAX:
        raise invalid(f"store name must be 1-{STORE_NAME_BYTES_MAX} bytes, got {size}")
    if not _STORE_NAME.fullmatch(name) or name in (".", ".."):
        raise invalid(
            f"store name {name!r} must use only A-Z, a-z, 0-9, '_', '.' and '-' "
            "(and not be '.' or '..')"
        )


def store_stream(name: str) -> str:
    """The stream that holds the store `name` (validated)."""
    validate_store_name(name)
    return STREAM_PREFIX + name


def store_of_stream(stream: str) -> str | None:
    """The store a stream holds, judged by its stored name, or None: `kv/NAME`, or that after a
    token's stream prefix (`auto_prefix_streams` stores `tenant-1/kv/NAME`)."""
    match = _STORED_STORE.search(stream)
    if match is None or match.group(1) in (".", ".."):
        return None
    if len(match.group(1)) > STORE_NAME_BYTES_MAX:
        return None
    return match.group(1)


def key_bytes(key: object) -> bytes:
    """The key as stored: a non-empty string of at most `KEY_BYTES_MAX` UTF-8 bytes, no NUL."""
    if not isinstance(key, str):
        raise invalid(f"a key must be a string, not {type(key).__name__}")
    encoded = _utf8(key, "key")
    if not 1 <= len(encoded) <= KEY_BYTES_MAX:
        raise invalid(f"a key must be 1-{KEY_BYTES_MAX} bytes of UTF-8, got {len(encoded)}")
    if b"\x00" in encoded:
        raise invalid("a key must not contain NUL")
    return encoded


def value_bytes(value: object) -> bytes:
    """The value as stored: a string of at most `VALUE_BYTES_MAX` UTF-8 bytes."""
    if not isinstance(value, str):
        raise invalid(f"a value must be a string, not {type(value).__name__}")
    encoded = _utf8(value, "value")
    if len(encoded) > VALUE_BYTES_MAX:
        raise invalid(f"a value must be at most {VALUE_BYTES_MAX} bytes, got {len(encoded)}")
    return encoded


def _utf8(text: str, what: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError:
        raise invalid(f"a {what} must be valid Unicode text (it holds a lone surrogate)") from None


# --- changes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One pending change of a commit: a put of `value`, or a delete (value None)."""

    op: Op
    key: str
    value: str | None = None


def change_record(change: Change) -> pb.AppendRecord:
    """The record of one change (key and value checked)."""
    key = key_bytes(change.key)
    if change.op == "put":
        op, body = PUT, value_bytes(change.value)
    else:
        op, body = DELETE, b""
    return pb.AppendRecord(
        headers=[pb.Header(name=OP_HEADER, value=op), pb.Header(name=KEY_HEADER, value=key)],
        body=body,
    )


def commit_input(changes: Sequence[Change], match_seq_num: int | None) -> pb.AppendInput:
    """The append of a commit: its changes, in order, as one batch; `invalid` if there are
    none, or more than one append may hold."""
    if not changes:
        raise invalid("a commit needs at least one change")
    if len(changes) > COMMIT_CHANGES_MAX:
        raise invalid(
            f"a commit holds at most {COMMIT_CHANGES_MAX} changes (one append), got {len(changes)}"
        )
    records = [change_record(change) for change in changes]
    size = sum(metered_size(record) for record in records)
    if size > COMMIT_METERED_BYTES_MAX:
        raise invalid(
            f"a commit holds at most {COMMIT_METERED_BYTES_MAX} metered bytes of keys and "
            f"values (one append), got {size}: commit in smaller parts"
        )
    message = pb.AppendInput(records=records)
    if match_seq_num is not None:
        message.match_seq_num = match_seq_num
    return message


# --- snapshots -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """A live key's value and the change that wrote it (kept through compaction)."""

    value: str
    seq_num: int
    timestamp: int


def snapshot_records(
    entries: Iterable[tuple[str, Entry]],
    as_of: int,
    changed: int,
    part_bytes_target: int = SNAPSHOT_PART_BYTES_TARGET,
) -> list[pb.AppendRecord]:
    """The parts of a snapshot of `entries`, the store as of position `as_of`; `changed` is one
    past its last change before `as_of`. (Tests make parts small to have many.)"""
    snapshot_id = uuid.uuid4().hex[:16].encode()
    bodies: list[tuple[bytes, list[pb.Header]]] = []
    packed: list[str] = []
    packed_bytes = 0
    for key, entry in entries:
        # A string of n characters is at most 4n bytes of UTF-8: most values need no encoding
        # to be known small.
        if len(entry.value) > SNAPSHOT_INLINE_VALUE_BYTES_MAX // 4 and (
            len(entry.value.encode()) > SNAPSHOT_INLINE_VALUE_BYTES_MAX
        ):
            bodies.append(
                (
                    entry.value.encode(),
                    [
                        pb.Header(name=KEY_HEADER, value=key.encode()),
                        pb.Header(name=SEQ_NUM_HEADER, value=b"%d" % entry.seq_num),
                        pb.Header(name=TIMESTAMP_HEADER, value=b"%d" % entry.timestamp),
                    ],
                )
            )
            continue
        text = json.dumps([key, entry.value, entry.seq_num, entry.timestamp], ensure_ascii=False)
        size = len(text.encode())
        if packed and packed_bytes + size > part_bytes_target:
            bodies.append((_packed_body(packed), []))
            packed, packed_bytes = [], 0
        packed.append(text)
        packed_bytes += size + 1
    if packed or not bodies:
        # An empty store's snapshot is one empty part: a trim needs a snapshot to follow it.
        bodies.append((_packed_body(packed), []))
    count = len(bodies)
    return [
        pb.AppendRecord(
            headers=[
                pb.Header(name=OP_HEADER, value=SNAPSHOT),
                pb.Header(name=AS_OF_HEADER, value=b"%d" % as_of),
                pb.Header(name=CHANGED_HEADER, value=b"%d" % changed),
                pb.Header(name=SNAPSHOT_ID_HEADER, value=snapshot_id),
                pb.Header(name=PART_HEADER, value=b"%d/%d" % (index, count)),
                *extra,
            ],
            body=body,
        )
        for index, (body, extra) in enumerate(bodies, start=1)
    ]


SNAPSHOT_ENTRY_OVERHEAD_BYTES = 24
"""What a packed entry takes in a snapshot beside its key and value: JSON punctuation and two
numbers."""
COMPACTION_MIN_BYTES = 1024 * 1024
"""The least a compaction should drop, by default (metered bytes)."""


def snapshot_bytes_estimate(live_chars: int, entries: int) -> int:
    """About what a snapshot of `entries` live entries holding `live_chars` takes."""
    return live_chars + SNAPSHOT_ENTRY_OVERHEAD_BYTES * entries


def compaction_worth(stored_bytes: int, snapshot_bytes: int, min_bytes: int) -> bool:
    """Whether a snapshot of `snapshot_bytes` drops enough of a stream that holds
    `stored_bytes` from its trim point: at least `min_bytes` and at least the snapshot's own
    size, so that the stream stays under twice its snapshot plus `min_bytes`."""
    dropped = stored_bytes - snapshot_bytes
    return dropped >= max(min_bytes, snapshot_bytes)


def _packed_body(texts: list[str]) -> bytes:
    return ("[" + ",".join(texts) + "]").encode()


def append_batches(records: Sequence[pb.AppendRecord]) -> Iterator[list[pb.AppendRecord]]:
    """`records` in order, cut into as few appends as their limits allow (1000 records and
    1 MiB metered each)."""
    batch: list[pb.AppendRecord] = []
    size = 0
    for record in records:
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


# --- reading -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChangeRecord:
    """A stored change: `value` None for a delete."""

    key: str
    value: str | None


@dataclass(frozen=True)
class SnapshotPart:
    as_of: int
    changed: int
    snapshot_id: bytes
    index: int
    count: int
    entries: list[tuple[str, Entry]]


class Command:
    """A trim or fence record: it changes no entry."""


class Foreign:
    """A record that is not the store's: skipped by readers; it keeps the store uncompacted."""


COMMAND = Command()
FOREIGN = Foreign()
Parsed = ChangeRecord | SnapshotPart | Command | Foreign


def parse_record(record: pb.SequencedRecord) -> Parsed:
    """What a stored record is to the store. Nothing here raises: a malformed record is
    `FOREIGN`."""
    headers = record.headers
    if not headers or headers[0].name != OP_HEADER:
        return COMMAND if is_command_record(record) else FOREIGN
    op = headers[0].value
    if op in (PUT, DELETE):
        if len(headers) != 2 or headers[1].name != KEY_HEADER:
            return FOREIGN
        key = _stored_key(headers[1].value)
        if key is None:
            return FOREIGN
        if op == DELETE:
            return ChangeRecord(key, None) if not record.body else FOREIGN
        value = _stored_text(record.body, VALUE_BYTES_MAX)
        return FOREIGN if value is None else ChangeRecord(key, value)
    if op == SNAPSHOT:
        return _snapshot_part(headers, record.body)
    return FOREIGN


def _snapshot_part(headers: Sequence[pb.Header], body: bytes) -> SnapshotPart | Foreign:
    fields = {header.name: header.value for header in headers[1:]}
    if len(fields) != len(headers) - 1:
        return FOREIGN  # a header given twice
    as_of = _stored_uint(fields.get(AS_OF_HEADER))
    changed = _stored_uint(fields.get(CHANGED_HEADER))
    snapshot_id = fields.get(SNAPSHOT_ID_HEADER)
    part = fields.get(PART_HEADER, b"").split(b"/")
    index = _stored_uint(part[0]) if len(part) == 2 else None
    count = _stored_uint(part[1]) if len(part) == 2 else None
    if as_of is None or changed is None or not snapshot_id or index is None or count is None:
        return FOREIGN
    if not 1 <= index <= count or changed > as_of:
        return FOREIGN
    if KEY_HEADER in fields:
        if len(fields) != 7:
            return FOREIGN
        single = _single_entry(fields, body)
        if single is None:
            return FOREIGN
        return SnapshotPart(as_of, changed, snapshot_id, index, count, [single])
    if len(fields) != 4:
        return FOREIGN
    entries = _packed_entries(body)
    if entries is None:
        return FOREIGN
    return SnapshotPart(as_of, changed, snapshot_id, index, count, entries)


def _single_entry(fields: dict[bytes, bytes], body: bytes) -> tuple[str, Entry] | None:
    key = _stored_key(fields[KEY_HEADER])
    value = _stored_text(body, VALUE_BYTES_MAX)
    seq_num = _stored_uint(fields.get(SEQ_NUM_HEADER))
    timestamp = _stored_uint(fields.get(TIMESTAMP_HEADER))
    if key is None or value is None or seq_num is None or timestamp is None:
        return None
    return key, Entry(value, seq_num, timestamp)


def _packed_entries(body: bytes) -> list[tuple[str, Entry]] | None:
    try:
        items = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(items, list):
        return None
    entries: list[tuple[str, Entry]] = []
    for item in items:
        if not (isinstance(item, list) and len(item) == 4):
            return None
        key, value, seq_num, timestamp = item
        if not (
            isinstance(key, str)
            and isinstance(value, str)
            and type(seq_num) is int
            and type(timestamp) is int
            and 0 <= seq_num <= U64_MAX
            and 0 <= timestamp <= U64_MAX
            and _valid_key(key)
        ):
            return None
        entries.append((key, Entry(value, seq_num, timestamp)))
    return entries


def _valid_key(key: str) -> bool:
    try:
        encoded = key.encode()
    except UnicodeEncodeError:
        return False
    return 1 <= len(encoded) <= KEY_BYTES_MAX and b"\x00" not in encoded


def _stored_key(data: bytes) -> str | None:
    """A key as `key_bytes` allows it, or None."""
    if not 1 <= len(data) <= KEY_BYTES_MAX or b"\x00" in data:
        return None
    return _stored_text(data, KEY_BYTES_MAX)


def _stored_text(data: bytes, size_max: int) -> str | None:
    """UTF-8 text of at most `size_max` bytes, or None."""
    if len(data) > size_max:
        return None
    try:
        return data.decode()
    except UnicodeDecodeError:
        return None


def _stored_uint(data: bytes | None) -> int | None:
    if data is None or not data.isdigit() or len(data) > 20:
        return None
    value = int(data)
    return value if value <= U64_MAX else None
