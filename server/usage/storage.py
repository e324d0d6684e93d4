"""Stored bytes: each stream's metered bytes on disk, kept exact in memory and sampled into
history for the `storage` gauges.

A stream's stored bytes grow when an append becomes durable and shrink when the jobs delete its
batches (trim, retention, deletion); both report here after their commit landed. The value
survives restarts without being written per batch: each flush writes a snapshot of the
streams that changed (server/usage/layout.py), holding the stream's next sequence number and
first stored one. At start-up a stream whose tail and first batch are still there takes its
snapshot; any other (it changed after the last flush, before a kill -9; or it predates the
metrics) is counted again from its batch headers, so the value is exact after any stop.

History: a flush samples each changed stream into its minute (`s` rows) and each changed basin
into its hour (`b` rows); the first flush of an hour samples every basin that has a stream. A
gauge's point for a bucket is the last sample at or before it; the current bucket's is the live
value. Stream samples older than `STREAM_SAMPLES_RETENTION_S` expire, except each stream's
newest one before that horizon, which keeps the next points right.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from server.storage.kv import Delete, KeyValueStore, Put, Table, Write
from server.storage.layout import BATCH_SUMMARY_BYTES_MAX, batch_key, summarize_batch
from server.usage.layout import (
    BASIN_SAMPLE,
    SNAPSHOT,
    STREAM_SAMPLE,
    StreamSnapshot,
    basin_sample_key,
    decode_u64,
    encode_u64,
    parse_basin_sample_key,
    parse_snapshot_key,
    parse_stream_sample_key,
    snapshot_key,
    stream_sample_key,
)

STREAM_SAMPLES_RETENTION_S = 7 * 86400
BASIN_SAMPLES_RETENTION_S = 400 * 86400
_BATCHES_PER_SCAN = 1024


@dataclass(eq=False)
class StoredBytes:
    """One stream's storage as the metrics know it. Changed only on the event loop."""

    sid: int
    basin: str
    name: str
    stored_bytes: int = 0
    next_seq: int = 0
    front_seq: int = 0

    def snapshot(self) -> StreamSnapshot:
        return StreamSnapshot(self.next_seq, self.front_seq, self.stored_bytes)


@dataclass(frozen=True)
class StreamTail:
    """What start-up knows of a stream from the catalog: where it is and where its tail is."""

    sid: int
    basin: str
    name: str
    next_seq: int


def count_stored(kv: KeyValueStore, tail: StreamTail) -> StoredBytes:
    """A stream's stored bytes (at start-up, or when a node starts counting for the cluster):
    its snapshot's if its first batch is where the snapshot left it (nothing was deleted
    since), plus the batches appended after the snapshot; else counted from every batch
    header. Blocking: off the loop."""
    first = kv.scan_map(
        Table.BATCHES,
        batch_key(tail.sid, 0),
        batch_key(tail.sid + 1, 0),
        1,
        summarize_batch,
        BATCH_SUMMARY_BYTES_MAX,
    )
    front_seq = first[0][1].first_seq if first else tail.next_seq
    account = StoredBytes(tail.sid, tail.basin, tail.name, 0, tail.next_seq, front_seq)
    stored = kv.get(Table.USAGE, snapshot_key(tail.sid))
    counted_from = 0
    if stored is not None:
        snapshot = StreamSnapshot.decode(stored)
        if snapshot.front_seq == front_seq and snapshot.next_seq <= tail.next_seq:
            account.stored_bytes = snapshot.stored_bytes
            counted_from = snapshot.next_seq
    account.stored_bytes += count_appended(kv, tail.sid, counted_from, tail.next_seq)
    return account


def count_appended(kv: KeyValueStore, sid: int, start_seq: int, end_seq: int) -> int:
    """The metered bytes of the stream's stored batches from `start_seq` to `end_seq` (each a
    batch boundary: a tail the stream had), read from their headers. Blocking: off the loop."""
    total = 0
    start = batch_key(sid, start_seq)
    # Batches are keyed by their last sequence number: those before `end_seq` end below it.
    while items := kv.scan_map(
        Table.BATCHES,
        start,
        batch_key(sid, end_seq),
        _BATCHES_PER_SCAN,
        summarize_batch,
        BATCH_SUMMARY_BYTES_MAX,
    ):
        total += sum(summary.metered_bytes for _, summary in items)
        start = batch_key(sid, items[-1][1].last_seq + 1)
    return total


def stored_snapshots(kv: KeyValueStore) -> dict[int, StreamSnapshot]:
    """Every stream's snapshot, by stream id. Blocking: one scan."""
    rows = kv.scan(Table.USAGE, SNAPSHOT, _next_prefix(SNAPSHOT), sys.maxsize)
    return {parse_snapshot_key(key): StreamSnapshot.decode(value) for key, value in rows}


def snapshot_writes(accounts: Iterable[StoredBytes], forgotten: Iterable[int]) -> list[Write]:
    writes: list[Write] = [
        Put(Table.USAGE, snapshot_key(a.sid), a.snapshot().encode()) for a in accounts
    ]
    writes += [Delete(Table.USAGE, snapshot_key(sid)) for sid in forgotten]
    return writes


def stream_sample_writes(accounts: Iterable[StoredBytes], minute_s: int) -> list[Put]:
    return [
        Put(Table.USAGE, stream_sample_key(a.sid, minute_s), encode_u64(a.stored_bytes))
        for a in accounts
    ]


def basin_sample_writes(basins: dict[str, int], hour_s: int) -> list[Put]:
    return [
        Put(Table.USAGE, basin_sample_key(basin, hour_s), encode_u64(stored))
        for basin, stored in basins.items()
    ]


def stale_snapshots(kv: KeyValueStore, live_sids: set[int]) -> list[Delete]:
    """Snapshots of streams that no longer exist. Blocking: off the loop."""
    rows = kv.scan(Table.USAGE, SNAPSHOT, _next_prefix(SNAPSHOT), sys.maxsize)
    return [Delete(Table.USAGE, key) for key, _ in rows if parse_snapshot_key(key) not in live_sids]


def stream_samples(kv: KeyValueStore, sid: int, end_s: int) -> list[tuple[int, int]]:
    """The stream's samples up to `end_s`, oldest first: (minute, bytes). Blocking."""
    rows = kv.scan(
        Table.USAGE, stream_sample_key(sid, 0), stream_sample_key(sid, end_s + 1), sys.maxsize
    )
    return [(parse_stream_sample_key(key)[1], decode_u64(value)) for key, value in rows]


def basin_samples(kv: KeyValueStore, basin: str, end_s: int) -> list[tuple[int, int]]:
    """The basin's samples up to `end_s`, oldest first: (hour, bytes). Blocking."""
    rows = kv.scan(
        Table.USAGE, basin_sample_key(basin, 0), basin_sample_key(basin, end_s + 1), sys.maxsize
    )
    return [(parse_basin_sample_key(key)[1], decode_u64(value)) for key, value in rows]


def sampled_basins(kv: KeyValueStore) -> Iterator[str]:
    """Every basin with a storage sample, one seek each. Blocking: off the loop."""
    start = BASIN_SAMPLE
    while found := kv.scan(Table.USAGE, start, _next_prefix(BASIN_SAMPLE), 1):
        basin, _ = parse_basin_sample_key(found[0][0])
        yield basin
        start = BASIN_SAMPLE + basin.encode() + b"\x01"


def basins_sampled_between(kv: KeyValueStore, start_s: int, end_s: int) -> list[str]:
    """The basins with a sample in an hour from `start_s` to `end_s`. Blocking."""
    return [
        basin
        for basin in sampled_basins(kv)
        if kv.scan(
            Table.USAGE, basin_sample_key(basin, start_s), basin_sample_key(basin, end_s + 1), 1
        )
    ]


def expired_sample_deletes(
    kv: KeyValueStore, live_sids: set[int], now_s: int
) -> Iterator[list[Delete]]:
    """Deletes of expired samples, one stream or basin at a time: a live stream keeps its
    newest sample before the horizon; a stream that no longer exists keeps none. Blocking."""
    start = STREAM_SAMPLE
    horizon_s = now_s - STREAM_SAMPLES_RETENTION_S
    while found := kv.scan(Table.USAGE, start, _next_prefix(STREAM_SAMPLE), 1):
        sid, _ = parse_stream_sample_key(found[0][0])
        live = sid in live_sids
        end = stream_sample_key(sid, max(0, horizon_s)) if live else stream_sample_key(sid + 1, 0)
        rows = kv.scan(Table.USAGE, stream_sample_key(sid, 0), end, sys.maxsize)
        if live:
            rows = rows[:-1]
        if rows:
            yield [Delete(Table.USAGE, key) for key, _ in rows]
        start = stream_sample_key(sid + 1, 0)
    basin_horizon_s = max(0, now_s - BASIN_SAMPLES_RETENTION_S)
    for basin in list(sampled_basins(kv)):
        rows = kv.scan(
            Table.USAGE,
            basin_sample_key(basin, 0),
            basin_sample_key(basin, basin_horizon_s),
            sys.maxsize,
        )
        if rows:
            yield [Delete(Table.USAGE, key) for key, _ in rows]


@dataclass
class GaugeSeries:
    """Samples oldest first, turned into one point per bucket."""

    samples: list[tuple[int, int]]
    live_bytes: int
    points: list[tuple[int, int]] = field(default_factory=list)

    def fill(self, buckets: Iterable[int], current_bucket_s: int, horizon_s: int) -> None:
        """A point for each bucket: the last sample at or before it (0 before the first), the
        live value for the current bucket; none past it, nor before `horizon_s`."""
        index = 0
        value = 0
        samples = self.samples
        for bucket_s in buckets:
            if bucket_s > current_bucket_s:
                break
            while index < len(samples) and samples[index][0] <= bucket_s:
                value = samples[index][1]
                index += 1
            if bucket_s < horizon_s:
                continue
            live = bucket_s == current_bucket_s
            self.points.append((bucket_s, self.live_bytes if live else value))


def _next_prefix(prefix: bytes) -> bytes:
    return bytes([prefix[0] + 1])
