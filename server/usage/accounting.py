"""`Usage`: the one seam the server's paths report to, once per batch or operation, and what
both the S2 metrics API and the Prometheus collectors read.

Who reports what (all on the event loop, no I/O):

- a stream's sequencer, when an append became durable: `StreamAccount.appended` (records,
  metered bytes, storage class, ack latency);
- the scoped store, when a unary read answered or a session read sent a batch (`read`,
  `counted_session`), and after each control-plane operation (`operation`);
- the jobs, after deleting a stream's batches (`deleted`) or the stream (`forget`);
- the committer, after each group commit (`committed`); the frontends, for each error they
  answer (`count_error`) and each append session (`session_opened` / `session_closed`).

Each report updates plain integers: Prometheus totals per basin label (at most
`basin_labels_max` basins get their own label, the rest share `_other`), the S2 counters'
current minute (server/usage/counters.py) and the stored bytes (server/usage/storage.py).

A flush every `flush_interval_s` (and one at shutdown) writes the counters, storage samples
and snapshots through the group committer: a kill -9 loses at most the counts of that
interval, never stored bytes (they are recounted at start-up where the snapshot is stale). An
hourly pass deletes rows past their retention. Several nodes sharing a store add to the same
counter rows: each flush expects the rows it read, and one that another node's flush beat is
done again from a fresh read (`FLUSH_ATTEMPTS_MAX`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol, TypeVar

from s2s.errors import S2Error
from server.clock import Clock
from server.storage.committer import CommitConflict, GroupCommitter
from server.storage.kv import Delete, KeyValueStore, Write
from server.storage.layout import BatchSummary
from server.usage.counters import Counters, SeriesQuery, floor_to, merge
from server.usage.histogram import LoopHistogram
from server.usage.layout import StreamSnapshot
from server.usage.storage import (
    STREAM_SAMPLES_RETENTION_S,
    GaugeSeries,
    StoredBytes,
    StreamTail,
    basin_sample_writes,
    basin_samples,
    basins_sampled_between,
    count_appended,
    count_stored,
    expired_sample_deletes,
    snapshot_writes,
    stale_snapshots,
    stored_snapshots,
    stream_sample_writes,
    stream_samples,
)

log = logging.getLogger(__name__)

OTHER_BASINS_LABEL = "_other"
ACCOUNT = ""
"""The basin name of account-level counter series."""
EXPIRY_INTERVAL_S = 3600
FLUSH_ATTEMPTS_MAX = 10
"""Flushes done again after another node's flush changed a counter row first; past these the
amounts wait for the next flush. Each round some node's flush lands, so this is a bound for
a crowd of nodes flushing at once, not a retry budget for a failing store."""

ACK_LATENCY_BOUNDS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
GROUP_JOBS_BOUNDS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
GROUP_BYTES_BOUNDS = (1 << 10, 1 << 14, 1 << 16, 1 << 18, 1 << 20, 1 << 22, 1 << 23)


@dataclass(frozen=True)
class UsageSettings:
    basin_labels_max: int = 100
    """Basins with a Prometheus label of their own, in the order they are first seen."""
    flush_interval_s: float = 10.0
    """How often counts reach the disk: what a kill -9 can lose."""


@dataclass
class BasinTotals:
    """The Prometheus counters of one basin label, since the server started."""

    appends: int = 0
    append_records: int = 0
    append_bytes: int = 0
    reads: int = 0
    read_records: int = 0
    read_bytes: int = 0
    append_retries: int = 0
    """Retried batches of idempotent producers answered with their original ack."""


class _Records(Protocol):
    @property
    def count(self) -> int: ...

    @property
    def metered_bytes(self) -> int: ...


class _Output(Protocol):
    @property
    def records(self) -> _Records | None: ...


Output = TypeVar("Output", bound=_Output)


class StreamAccount:
    """What a stream's sequencer reports to, per durable batch."""

    __slots__ = ("_usage", "stored", "totals")

    def __init__(self, usage: Usage, stored: StoredBytes, totals: BasinTotals) -> None:
        self._usage = usage
        self.stored = stored
        self.totals = totals

    def appended(
        self, storage_class: str, records: int, metered_bytes: int, next_seq: int, latency_s: float
    ) -> None:
        usage = self._usage
        totals = self.totals
        totals.appends += 1
        totals.append_records += records
        totals.append_bytes += metered_bytes
        stored = self.stored
        if not usage.shared:
            # Where nodes share the store, the one leading the jobs counts every node's
            # appends from the store instead (`Usage.recount`).
            stored.next_seq = next_seq
            usage.stored_changed(stored, metered_bytes)
        now_s = usage.now_s()
        usage.counters.add(now_s, stored.basin, "append-ops/" + storage_class, 1)
        usage.counters.add(now_s, stored.basin, "append-throughput", metered_bytes)
        usage.ack_latency.observe(latency_s)

    def retried(self) -> None:
        """A producer's retry of a batch already written was answered, and not written."""
        self.totals.append_retries += 1


class Usage:
    def __init__(
        self,
        kv: KeyValueStore,
        committer: GroupCommitter,
        clock: Clock,
        settings: UsageSettings | None = None,
        stream_tails: Callable[[], list[StreamTail]] | None = None,
    ) -> None:
        """`stream_tails`: where other nodes write the store too, lists every stream and its
        tail (blocking), for each flush to count stored bytes from the store (`recount`)."""
        self._kv = kv
        self._committer = committer
        self._clock = clock
        self._stream_tails = stream_tails
        self.shared = stream_tails is not None
        self._leading = False
        """Shared stores: this node leads the jobs, so it counts and writes stored bytes."""
        self._unvalidated: set[int] = set()
        """Streams whose counts the leader has to check against the store (`count_stored`)."""
        self.settings = settings or UsageSettings()
        self.counters = Counters(kv)
        self._accounts: dict[int, StreamAccount] = {}
        self._basin_stored: dict[str, int] = {}
        self._basin_streams: Counter[str] = Counter()
        self._dirty_streams: set[StoredBytes] = set()
        self._dirty_basins: set[str] = set()
        self._forgotten: list[int] = []
        self._sampled_hour_s = -1
        self._stale: list[Write] = []
        """Found at start-up (snapshots of streams gone), deleted by the first flush."""
        self._totals_by_basin: dict[str, BasinTotals] = {}
        self.labelled: dict[str, BasinTotals] = {}
        """Label -> totals: the labelled basins, then `_other` once there are more."""
        self.open_sessions: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.ack_latency = LoopHistogram(
            "s2s_append_ack_latency_seconds",
            "From an append's sequencing to its acknowledgement (durable).",
            ACK_LATENCY_BOUNDS_S,
        )
        self.commit_latency = LoopHistogram(
            "s2s_commit_latency_seconds",
            "One group commit's write and fsyncs.",
            ACK_LATENCY_BOUNDS_S,
        )
        self.group_jobs = LoopHistogram(
            "s2s_group_commit_jobs",
            "Jobs (appends, control changes) per group commit.",
            GROUP_JOBS_BOUNDS,
        )
        self.group_bytes = LoopHistogram(
            "s2s_group_commit_bytes",
            "Metered bytes of the appends in one group commit.",
            GROUP_BYTES_BOUNDS,
        )
        self._task: asyncio.Task[None] | None = None
        self._flushing = asyncio.Lock()
        """One flush at a time: the periodic one, one asked for (tests, shutdown)."""

    def now_s(self) -> int:
        return self._clock.now_ms() // 1000

    # --- start and stop ------------------------------------------------------------------

    def load(self, tails: Iterable[StreamTail]) -> None:
        """Every stream's stored bytes, and the counters' basins. Blocking: run off the loop,
        before serving."""
        self.counters.load()
        for tail in tails:
            self._register(count_stored(self._kv, tail))
        self._stale = list(stale_snapshots(self._kv, set(self._accounts)))

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="s2s-usage-flush")

    async def close(self) -> None:
        """Stop flushing, then flush what is left."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()

    async def _run(self) -> None:
        expire_at_s = 0
        while True:
            await asyncio.sleep(self.settings.flush_interval_s)
            try:
                await self.flush()
                if self.now_s() >= expire_at_s:
                    expire_at_s = self.now_s() + EXPIRY_INTERVAL_S
                    await self.expire()
            except S2Error as error:  # storage trouble: the next flush tries again
                log.warning("metrics flush failed: %s", error.message)

    # --- reports -------------------------------------------------------------------------

    def stream(self, basin: str, name: str, sid: int) -> StreamAccount:
        """The stream's account, made on first use (a new stream stores nothing yet)."""
        account = self._accounts.get(sid)
        if account is None:
            account = self._register(StoredBytes(sid, basin, name))
        return account

    def _register(self, stored: StoredBytes) -> StreamAccount:
        account = StreamAccount(self, stored, self._totals(stored.basin))
        self._accounts[stored.sid] = account
        self._basin_streams[stored.basin] += 1
        self._basin_stored[stored.basin] = self._basin_stored.get(stored.basin, 0)
        self._basin_stored[stored.basin] += stored.stored_bytes
        return account

    def _totals(self, basin: str) -> BasinTotals:
        totals = self._totals_by_basin.get(basin)
        if totals is None:
            if len(self.labelled) < self.settings.basin_labels_max:
                totals = self.labelled[basin] = BasinTotals()
            else:
                totals = self.labelled.setdefault(OTHER_BASINS_LABEL, BasinTotals())
            self._totals_by_basin[basin] = totals
        return totals

    def label_of(self, basin: str) -> str:
        totals = self._totals(basin)
        return basin if self.labelled.get(basin) is totals else OTHER_BASINS_LABEL

    def stored_changed(self, stored: StoredBytes, delta_bytes: int) -> None:
        stored.stored_bytes += delta_bytes
        self._basin_stored[stored.basin] += delta_bytes
        self._dirty_streams.add(stored)
        self._dirty_basins.add(stored.basin)

    def deleted(self, sid: int, batches: list[BatchSummary]) -> None:
        """The jobs deleted these oldest batches of the stream (durably). A batch before the
        stream's front is one a deletion that overlapped this one already reported; one past
        what was counted (`next_seq`: on a shared store, appended through another node since
        the last recount) was never added, so it is not taken off either."""
        account = self._accounts.get(sid)
        if account is None:
            return
        stored = account.stored
        freed_bytes = 0
        for batch in batches:
            if batch.first_seq >= stored.front_seq:
                if batch.last_seq < stored.next_seq:
                    freed_bytes += batch.metered_bytes
                stored.front_seq = batch.last_seq + 1
        stored.next_seq = max(stored.next_seq, stored.front_seq)
        # A node that took the jobs over from one that stopped mid-run can meet a deletion
        # its count does not show yet (until `recount` checks it): never below nothing.
        self.stored_changed(stored, -min(freed_bytes, stored.stored_bytes))

    def forget(self, sid: int) -> None:
        """The stream and its data are gone."""
        account = self._accounts.pop(sid, None)
        if account is None:
            return
        stored = account.stored
        self._basin_stored[stored.basin] -= stored.stored_bytes
        self._basin_streams[stored.basin] -= 1
        if not self._basin_streams[stored.basin]:
            del self._basin_streams[stored.basin]
        self._dirty_streams.discard(stored)
        self._dirty_basins.add(stored.basin)
        self._forgotten.append(sid)

    def read(self, basin: str, records: _Records | None, *, streaming: bool) -> None:
        """A unary read answered (`streaming` false), or a session sent a batch."""
        totals = self._totals(basin)
        now_s = self.now_s()
        if not streaming:
            self.counters.add(now_s, basin, "read-ops/unary", 1)
        if records is None:
            return
        totals.reads += 1
        totals.read_records += records.count
        totals.read_bytes += records.metered_bytes
        self.counters.add(now_s, basin, "read-throughput", records.metered_bytes)

    async def counted_session(
        self, basin: str, outputs: AsyncGenerator[Output, None]
    ) -> AsyncGenerator[Output, None]:
        """A read session's outputs, each counted: a streaming read op for each minute in which
        the session sent something (S2 meters "up to one minute" of a session as one), and the
        records of each batch. Closing it closes `outputs`."""
        counted_minute_s = -1
        self.open_sessions["read"] += 1
        try:
            async with contextlib.aclosing(outputs):
                async for output in outputs:
                    now_s = self.now_s()
                    minute_s = now_s - now_s % 60
                    if minute_s != counted_minute_s:
                        counted_minute_s = minute_s
                        self.counters.add(now_s, basin, "read-ops/streaming", 1)
                    self.read(basin, output.records, streaming=True)
                    yield output
        finally:
            self.open_sessions["read"] -= 1

    def operation(self, basin: str, operation: str) -> None:
        """A control-plane operation succeeded: of the account (`basin` empty) or a basin."""
        series = ("basin-ops/" if basin else "account-ops/") + operation
        self.counters.add(self.now_s(), basin, series, 1)

    def session_opened(self, kind: str) -> None:
        self.open_sessions[kind] += 1

    def session_closed(self, kind: str) -> None:
        self.open_sessions[kind] -= 1

    def count_error(self, code: str) -> None:
        self.errors[code] += 1

    def committed(self, jobs: int, metered_bytes: int, seconds: float) -> None:
        """A group commit landed (the committer reports it on the loop)."""
        self.commit_latency.observe(seconds)
        self.group_jobs.observe(jobs)
        self.group_bytes.observe(metered_bytes)

    # --- what the collectors read ----------------------------------------------------------

    def storage_by_label(self) -> dict[str, int]:
        labels: dict[str, int] = {}
        for basin, stored in self._basin_stored.items():
            label = self.label_of(basin)
            labels[label] = labels.get(label, 0) + stored
        return labels

    # --- several nodes -------------------------------------------------------------------

    def lead(self, leading: bool) -> None:
        """Whether this node leads the jobs (it deletes batches): on a shared store, the one
        that does counts every stream's stored bytes and writes them; the others take its
        counts from the store. A node that starts leading checks every count first."""
        if leading and not self._leading and self.shared:
            self._unvalidated = set(self._accounts)
        self._leading = leading

    async def recount(self) -> None:
        """Where nodes share the store: make every stream's stored bytes the cluster's. The
        leader counts the batches every node appended since its last count, from their
        headers; another node takes the leader's snapshots. Streams created or removed through
        other nodes are registered or forgotten. Runs before each flush."""
        assert self._stream_tails is not None
        known = set(self._accounts)
        tails = await asyncio.to_thread(self._stream_tails)
        listed = {tail.sid: tail for tail in tails}
        for sid in known - set(listed):  # registered since the list was read: kept
            self.forget(sid)
        for tail in tails:
            if tail.sid not in self._accounts:
                self._register(StoredBytes(tail.sid, tail.basin, tail.name))
        if not self._leading:
            snapshots = await asyncio.to_thread(stored_snapshots, self._kv)
            for sid, snapshot in snapshots.items():
                account = self._accounts.get(sid)
                if account is not None:
                    self._adopt(account.stored, snapshot)
            return
        # Each count is taken only if no deletion moved the stream's count meanwhile.
        checks = [self._accounts[sid].stored for sid in self._unvalidated if sid in listed]
        self._unvalidated = set()
        before = [(stored.front_seq, stored.next_seq) for stored in checks]
        checked = await asyncio.to_thread(
            _count_each, self._kv, [listed[stored.sid] for stored in checks]
        )
        for stored, position, fresh in zip(checks, before, checked, strict=True):
            if not self._counts(stored):
                continue  # forgotten meanwhile (deleted)
            if (stored.front_seq, stored.next_seq) == position:
                self._adopt(stored, fresh.snapshot())
            else:
                self._unvalidated.add(stored.sid)
        behind = [
            (account.stored, account.stored.next_seq, listed[sid].next_seq)
            for sid, account in self._accounts.items()
            if sid in listed and listed[sid].next_seq > account.stored.next_seq
        ]
        counts = await asyncio.to_thread(_count_appended_each, self._kv, behind)
        for (stored, start_seq, end_seq), appended_bytes in zip(behind, counts, strict=True):
            if self._counts(stored) and stored.next_seq == start_seq:
                stored.next_seq = end_seq
                self.stored_changed(stored, appended_bytes)

    def _counts(self, stored: StoredBytes) -> bool:
        """Whether `stored` is still the stream's account (not forgotten, not replaced)."""
        account = self._accounts.get(stored.sid)
        return account is not None and account.stored is stored

    def _adopt(self, stored: StoredBytes, snapshot: StreamSnapshot) -> None:
        stored.next_seq = snapshot.next_seq
        stored.front_seq = snapshot.front_seq
        self.stored_changed(stored, snapshot.stored_bytes - stored.stored_bytes)

    # --- flushes -------------------------------------------------------------------------

    async def flush(self) -> None:
        """Write what was counted since the last flush, with storage samples and snapshots."""
        async with self._flushing:
            for attempt in range(FLUSH_ATTEMPTS_MAX):
                try:
                    await self._flush()
                    return
                except CommitConflict:
                    if attempt == FLUSH_ATTEMPTS_MAX - 1:
                        raise

    async def _flush(self) -> None:
        if self.shared:
            await self.recount()
        now_s = self.now_s()
        hour_s = floor_to(now_s, 3600)
        dirty = list(self._dirty_streams)
        self._dirty_streams = set()
        forgotten, self._forgotten = self._forgotten, []
        if hour_s != self._sampled_hour_s:
            basins = set(self._basin_streams) | self._dirty_basins
            self._sampled_hour_s = hour_s
        else:
            basins = self._dirty_basins
        self._dirty_basins = set()
        stale, self._stale = self._stale, []
        writes: list[Write] = []
        if self._leading or not self.shared:  # the others' counts are the leader's
            writes += stale
            writes += snapshot_writes(dirty, forgotten)
            writes += stream_sample_writes(dirty, floor_to(now_s, 60))
            writes += basin_sample_writes({b: self._basin_stored.get(b, 0) for b in basins}, hour_s)
        amounts = self.counters.take()
        try:
            writes += await asyncio.to_thread(self.counters.writes, amounts)
        except BaseException:
            self.counters.failed()
            raise
        if not writes:
            self.counters.landed()
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def on_done(error: S2Error | None) -> None:
            # On the loop, as the commit lands: no query sees the amounts both stored and not.
            if error is None:
                self.counters.landed()
                done.set_result(None)
                return
            self.counters.failed()
            self._dirty_streams.update(a for a in dirty if a.sid in self._accounts)
            self._dirty_basins |= basins
            self._forgotten += forgotten
            self._stale = stale + self._stale
            done.set_exception(error)

        self._committer.submit(lambda: writes, on_done)
        await done

    async def expire(self) -> None:
        """Delete the rows past their retention, a commit at a time."""
        now_s = self.now_s()
        live = set(self._accounts)
        for source in (
            self.counters.expired_deletes(now_s),
            expired_sample_deletes(self._kv, live, now_s),
        ):
            while deletes := await asyncio.to_thread(_next_or_empty, source):
                await self._committer.commit(deletes)

    # --- queries -------------------------------------------------------------------------

    async def series(self, query: SeriesQuery) -> dict[str, dict[int, int]]:
        """A basin's counts per series and bucket: the stored rows plus what is not stored yet."""
        for _ in range(3):
            flushes = self.counters.flushes
            unstored = self.counters.unstored(query)
            stored = await asyncio.to_thread(self.counters.stored, query)
            if self.counters.flushes == flushes:
                break  # no flush landed while the rows were read: nothing counted twice
        merge(stored, unstored)
        return stored

    async def stream_storage(self, sid: int, start_s: int, end_s: int) -> list[tuple[int, int]]:
        """A point per minute: the stream's stored bytes."""
        account = self._accounts.get(sid)
        live = 0 if account is None else account.stored.stored_bytes
        samples = await asyncio.to_thread(stream_samples, self._kv, sid, end_s)
        now_s = self.now_s()
        series = GaugeSeries(samples, live)
        series.fill(
            range(floor_to(start_s, 60), end_s + 1, 60),
            floor_to(now_s, 60),
            now_s - STREAM_SAMPLES_RETENTION_S,
        )
        return series.points

    async def basin_storage(self, basin: str, start_s: int, end_s: int) -> list[tuple[int, int]]:
        """A point per hour: the basin's stored bytes."""
        samples = await asyncio.to_thread(basin_samples, self._kv, basin, end_s)
        series = GaugeSeries(samples, self._basin_stored.get(basin, 0))
        series.fill(
            range(floor_to(start_s, 3600), end_s + 1, 3600), floor_to(self.now_s(), 3600), 0
        )
        return series.points

    async def active_basins(self, start_s: int, end_s: int) -> list[str]:
        """The basins that had a stream in an hour from `start_s` to `end_s`."""
        first_hour_s = floor_to(start_s, 3600)
        active = set(await asyncio.to_thread(basins_sampled_between, self._kv, first_hour_s, end_s))
        if first_hour_s <= floor_to(self.now_s(), 3600) <= end_s:
            active |= set(self._basin_streams)
        return sorted(active)


def _count_each(kv: KeyValueStore, tails: list[StreamTail]) -> list[StoredBytes]:
    """Each stream's count from the store. Blocking."""
    return [count_stored(kv, tail) for tail in tails]


def _count_appended_each(
    kv: KeyValueStore, ranges: list[tuple[StoredBytes, int, int]]
) -> list[int]:
    """The bytes of each stream's batches in its range. Blocking."""
    return [count_appended(kv, stored.sid, start, end) for stored, start, end in ranges]


def _next_or_empty(deletes: Iterator[list[Delete]]) -> list[Delete]:
    """The next commit's worth of deletes, or none once there are no more."""
    return next(deletes, [])
