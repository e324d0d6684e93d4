"""The S2 metrics' counters: per-minute amounts per basin and series, kept in memory until the
next flush adds them to their minute, hour and day rows (server/usage/layout.py).

`add` runs once per batch (append committed, read served) or operation: one dict update, no
I/O. A flush takes what was added (`take`), computes the new row values off the event loop
(`writes`: each row's stored count plus the amount, expecting the count it read), and commits
them with the committer. What a query reads is the stored rows plus what is not yet stored
(pending, and what a flush is writing): so a count is visible at once, and counted once.

Rows expire (`expired_deletes`): minutes after `RETENTION_S["m"]`, hours and days later.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass

from server.storage.kv import Delete, Expect, KeyValueStore, Put, Table, Write
from server.usage.layout import (
    COUNTER,
    RESOLUTION_SECONDS,
    Resolution,
    counter_key,
    counter_prefix,
    decode_u64,
    encode_u64,
    parse_counter_key,
)

RETENTION_S: dict[Resolution, int] = {"m": 7 * 86400, "h": 92 * 86400, "d": 400 * 86400}
"""How long rows of each resolution are kept: minutes for a week, hours for a quarter, days for
a year and more. Each basin's rows are bounded by its series times these, whatever the load."""

DELETES_PER_COMMIT_MAX = 4096

Amounts = dict[tuple[int, str, str], int]
"""(minute, basin, series) -> amount."""


@dataclass(frozen=True)
class SeriesQuery:
    """The buckets of one basin's series (a prefix of their names) at one resolution, from the
    bucket holding `start_s` to the one holding `end_s`."""

    basin: str
    series_prefix: str
    resolution: Resolution
    start_s: int
    end_s: int

    @property
    def first_bucket_s(self) -> int:
        return floor_to(self.start_s, RESOLUTION_SECONDS[self.resolution])

    @property
    def last_bucket_s(self) -> int:
        return floor_to(self.end_s, RESOLUTION_SECONDS[self.resolution])


def floor_to(time_s: int, interval_s: int) -> int:
    return time_s - time_s % interval_s


class Counters:
    def __init__(self, kv: KeyValueStore) -> None:
        self._kv = kv
        self._pending: Amounts = {}
        self._flushing: Amounts = {}
        """Taken by a flush whose commit has not landed yet."""
        self.flushes = 0
        """Flushes landed: a query that read the rows while one landed reads again."""
        self.basins: set[str] = set()
        """Basins with counter rows (the empty name for the account), for expiry."""

    def load(self) -> None:
        """Find the basins that have rows. Blocking: run off the loop."""
        for resolution in RESOLUTION_SECONDS:
            start = COUNTER + resolution.encode()
            while True:
                found = self._kv.scan(Table.USAGE, start, COUNTER + _after(resolution), 1)
                if not found:
                    break
                basin, _, _ = parse_counter_key(found[0][0])
                self.basins.add(basin)
                start = counter_prefix(resolution, basin)[:-1] + b"\x01"

    def add(self, now_s: int, basin: str, series: str, amount: int) -> None:
        key = (now_s - now_s % 60, basin, series)
        pending = self._pending
        pending[key] = pending.get(key, 0) + amount

    def take(self) -> Amounts:
        """What was added since the last flush, now being flushed."""
        assert not self._flushing, "one flush at a time"
        self._flushing, self._pending = self._pending, {}
        return self._flushing

    def landed(self) -> None:
        self._flushing = {}
        self.flushes += 1

    def failed(self) -> None:
        """The flush's commit failed: its amounts are added again by the next one."""
        for key, amount in self._flushing.items():
            self._pending[key] = self._pending.get(key, 0) + amount
        self._flushing = {}

    def writes(self, amounts: Amounts) -> list[Write]:
        """Each row the amounts touch, at its stored count plus theirs. Blocking: off the loop.
        On one node only flushes write these rows, one at a time; each put also expects the
        count it was computed from, so where other nodes flush to the same rows, one that
        added to it meanwhile makes the commit conflict instead of losing its count."""
        rows: dict[bytes, int] = {}
        basins = set()
        for (minute_s, basin, series), amount in amounts.items():
            basins.add(basin)
            for resolution, interval_s in RESOLUTION_SECONDS.items():
                key = counter_key(resolution, basin, floor_to(minute_s, interval_s), series)
                rows[key] = rows.get(key, 0) + amount
        self.basins |= basins
        writes: list[Write] = []
        for key, amount in rows.items():
            stored = self._kv.get(Table.USAGE, key)
            total = amount + (0 if stored is None else decode_u64(stored))
            writes += (Expect(Table.USAGE, key, stored), Put(Table.USAGE, key, encode_u64(total)))
        return writes

    def unstored(self, query: SeriesQuery) -> dict[str, dict[int, int]]:
        """The amounts in `query` that are not in the rows yet: series -> bucket -> amount."""
        interval_s = RESOLUTION_SECONDS[query.resolution]
        found: dict[str, dict[int, int]] = {}
        for amounts in (self._pending, self._flushing):
            for (minute_s, basin, series), amount in amounts.items():
                if basin != query.basin or not series.startswith(query.series_prefix):
                    continue
                bucket_s = floor_to(minute_s, interval_s)
                if query.first_bucket_s <= bucket_s <= query.last_bucket_s:
                    buckets = found.setdefault(series, {})
                    buckets[bucket_s] = buckets.get(bucket_s, 0) + amount
        return found

    def stored(self, query: SeriesQuery) -> dict[str, dict[int, int]]:
        """The rows in `query`: series -> bucket -> count. Blocking: run off the loop."""
        start = counter_key(query.resolution, query.basin, query.first_bucket_s)
        end = counter_key(query.resolution, query.basin, query.last_bucket_s + 1)
        found: dict[str, dict[int, int]] = {}
        for key, value in self._kv.scan(Table.USAGE, start, end, sys.maxsize):
            _, bucket_s, series = parse_counter_key(key)
            if series.startswith(query.series_prefix):
                found.setdefault(series, {})[bucket_s] = decode_u64(value)
        return found

    def expired_deletes(self, now_s: int) -> Iterator[list[Delete]]:
        """Deletes of every row past its retention, a commit's worth at a time. Blocking: off
        the loop."""
        for basin in sorted(self.basins):
            for resolution, retention_s in RETENTION_S.items():
                start = counter_prefix(resolution, basin)
                end = counter_key(resolution, basin, max(0, now_s - retention_s))
                while keys := self._kv.scan(Table.USAGE, start, end, DELETES_PER_COMMIT_MAX):
                    yield [Delete(Table.USAGE, key) for key, _ in keys]
                    start = keys[-1][0] + b"\x00"


def merge(into: dict[str, dict[int, int]], more: dict[str, dict[int, int]]) -> None:
    for series, buckets in more.items():
        target = into.setdefault(series, {})
        for bucket_s, amount in buckets.items():
            target[bucket_s] = target.get(bucket_s, 0) + amount


def _after(resolution: Resolution) -> bytes:
    """The byte after `resolution`'s: the end of its counter keys."""
    return bytes([resolution.encode()[0] + 1])
