"""Background jobs: stream and basin deletion, trimming, retention by age, delete-on-empty, and
the expiry of idle producers' rows (idempotent appends).

Every change goes through the committer, serialized with appends, one commit of at most
`batches_per_commit` batches at a time, so appends are never held up long. A run deletes
everything that is due when it looks, however much: streams take turns of at most
`commits_per_stream_max` commits until none has anything left, so one stream's backlog does not
make the others wait, and deletion keeps pace with any rate of appends. (It did not when a run
gave each stream one turn: a stream appended in single records at more than ~100 batches/s
outgrew a 10 s retention sweep, and a deleted stream lost 64 batches a second.) Deleting always
removes whole batches from the front of a stream, which keeps the layout invariants
(server/storage/layout.py) intact.

The jobs work on the storage, the catalog and the sequencer registry directly, not through
`StreamStore` (which owns and starts them): they read deletion markers and batches, take the
basin lock for their "check, then remove" steps, and ask the registry whether a stream has
appends in flight.

Several nodes sharing one database run the jobs on one node at a time: before each run the
loop asks the store whether this node leads them (`KeyValueStore.leads`). A node can still be
finishing a run when another takes over (its connection was lost), so every step is safe if
two nodes run it at once: deleting batches below a trim point or older than a cutoff is
idempotent, and each step that removes something because of what it checked (a stream empty,
a deleted stream's data all gone, a deleted basin without streams) expects what it checked in
its commit (`Expect`): if another node changed it meanwhile, the commit is a
`CommitConflict`, nothing is removed, and a later run looks again
(docs/adr/0013-several-nodes.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from dataclasses import dataclass

from s2s.errors import S2Error
from server.catalog import Catalog, StreamRecord
from server.clock import Clock
from server.sequencers import SequencerRegistry
from server.storage.committer import CommitConflict, GroupCommitter
from server.storage.kv import Delete, Expect, KeyValueStore, Put, Table, Write
from server.storage.layout import (
    BATCH_SUMMARY_BYTES_MAX,
    DELETING_BASIN_PREFIX,
    DELETING_STREAM_PREFIX,
    RECLAIMED_AT_KEY,
    BatchSummary,
    CorruptProducerRow,
    ProducerRow,
    TailRow,
    batch_key,
    prefix_end,
    producer_key_parts,
    producer_key_prefix,
    sid_key,
    summarize_batch,
    timestamp_key,
)
from server.tasks import cancel_and_wait
from server.usage.accounting import Usage

log = logging.getLogger(__name__)

JOBS_ROLE = "background-jobs"
"""What a node leads while it runs the jobs (`KeyValueStore.leads`)."""

PRODUCER_EXPIRY_S_DEFAULT = 7 * 24 * 3600.0
"""How long a producer's row outlives its last batch to a stream by default (as Kafka's
`transactional.id.expiration.ms`): its retries are recognised for that long."""


@dataclass(frozen=True)
class JobSettings:
    interval_s: float = 1.0
    """Time between runs; a kick (a stream or basin deleted) starts one sooner."""
    retention_interval_s: float = 10.0
    """Time between retention sweeps (trim, age, delete-on-empty)."""
    streams_per_run: int = 1000
    """Streams one sweep visits (round-robin over all), and deletion markers one run reads."""
    batches_per_commit: int = 64
    commits_per_stream_max: int = 16
    """One turn of a stream: streams with more to delete take turns until none has any."""
    reclaim_interval_s: float = 60.0
    """Least time between two `KeyValueStore.reclaim` calls after runs that deleted records
    (each can scan a table's indexes whole, on PostgreSQL)."""
    producer_expiry_s: float = PRODUCER_EXPIRY_S_DEFAULT
    """A producer's row of a stream is deleted once it wrote nothing to the stream for this
    long; its next batch there starts it afresh (any batch sequence number is taken)."""
    producer_rows_per_run: int = 1000
    """Producer rows one retention sweep looks at (round-robin over all)."""
    scheduled: bool = True
    """False: no loop runs the jobs, and kicks do nothing; only `run_once` runs them (tests
    that must see what a deletion leaves pending)."""


class BackgroundJobs:
    """Runs the jobs every `interval_s` (or sooner when kicked) until stopped."""

    def __init__(
        self,
        kv: KeyValueStore,
        catalog: Catalog,
        committer: GroupCommitter,
        sequencers: SequencerRegistry,
        clock: Clock,
        settings: JobSettings,
        usage: Usage,
    ) -> None:
        """`usage` is told of the stored bytes each deletion frees."""
        self._kv = kv
        self._catalog = catalog
        self._committer = committer
        self._sequencers = sequencers
        self._clock = clock
        self._settings = settings
        self._usage = usage
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._retention_cursor = b""
        self._producer_cursor = b""
        self._retention_due_at = 0.0
        # Set by every deletion commit, cleared once a later commit has landed (`_settle`).
        self._unsettled = False
        # Set while runs fail for want of storage, so an outage is logged once, not per tick.
        self._storage_unavailable = False
        # What the store last said of this node's leadership, so a change is logged once.
        self._leading = False
        # Deletions since the last `reclaim`, and when the next may run.
        self._unreclaimed = False
        self._reclaim_due_at = 0.0
        self._fronts: dict[int, BatchSummary] = {}
        """Each stream's oldest stored batch as the last look found it, so a retention sweep
        passes over a stream whose front is not due without reading it. A stream's front only
        ever moves forward (appends go at the tail, deletions take the front), so where it
        moved since (another node led the jobs meanwhile), the real one is due no sooner."""

    def start(self) -> None:
        if self._settings.scheduled:
            self._task = asyncio.create_task(self._loop(), name="s2s-background-jobs")

    def kick(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    async def _loop(self) -> None:
        while True:
            # Not asyncio.wait_for: on 3.11 it can swallow a cancel that lands as the event fires.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.interval_s):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.run_if_leader()
            except Exception as error:  # a failed run is retried on the next tick
                if isinstance(error, S2Error) and error.code == "unavailable":
                    # Storage out of reach (PostgreSQL failing over): expected, and the log
                    # says so already; a traceback would add nothing.
                    if not self._storage_unavailable:
                        log.warning("background job runs fail: %s", error.message)
                    self._storage_unavailable = True
                else:
                    log.exception("background job run failed")
            else:
                if self._storage_unavailable:
                    log.warning("background job runs succeed again")
                self._storage_unavailable = False

    async def run_if_leader(self) -> bool:
        """`run_once` if this node leads the jobs; False (nothing run) if another node does."""
        leading = await asyncio.to_thread(self._kv.leads, JOBS_ROLE)
        if leading != self._leading:
            self._leading = leading
            # The node whose jobs delete batches is the one that counts stored bytes.
            self._usage.lead(leading)
            self._fronts.clear()  # streams another leader removed meanwhile are not in it
            if leading:
                log.info("background jobs run on this node now")
            else:
                log.warning(
                    "background jobs no longer run on this node: another node leads them, or "
                    "the connection that held the lead was lost"
                )
        if leading:
            await self.run_once()
        return leading

    async def run_once(self) -> None:
        """Deletions on every run; the retention sweep at most every `retention_interval_s`."""
        await self._delete_basins()
        await self._delete_streams()
        now = asyncio.get_running_loop().time()
        if now >= self._retention_due_at:
            self._retention_due_at = now + self._settings.retention_interval_s
            await self._enforce_retention()
        await self._settle()

    async def _settle(self) -> None:
        """Commit once more after deleting, so the next append can use the space.

        LMDB reuses a freed page only from the second commit after the one that freed it, and
        every commit needs some pages. With storage full and appends too large for the few
        older free pages, the space freed by a run's last deletion commit stayed out of reach:
        every append failed, across restarts, however much had been trimmed
        (`tests/test_jobs.py`). This small write is that next commit.
        """
        if self._unsettled:
            now_ms = self._clock.now_ms()
            await self._committer.commit(
                [Put(Table.SYSTEM, RECLAIMED_AT_KEY, struct.pack("<Q", now_ms))]
            )
            self._unsettled = False
            self._unreclaimed = True
        now = asyncio.get_running_loop().time()
        if self._unreclaimed and now >= self._reclaim_due_at:
            self._reclaim_due_at = now + self._settings.reclaim_interval_s
            self._unreclaimed = False
            await asyncio.to_thread(self._kv.reclaim)

    # --- deletion ----------------------------------------------------------------------------

    async def _delete_basins(self) -> None:
        markers = self._kv.scan(
            Table.SYSTEM, DELETING_BASIN_PREFIX, prefix_end(DELETING_BASIN_PREFIX), 16
        )
        for key, marker in markers:
            basin = key[len(DELETING_BASIN_PREFIX) :].decode()
            streams, _ = self._catalog.list_streams(basin, limit=self._settings.streams_per_run)
            for record in streams:
                if not record.deleting:
                    await self._delete_stream(basin, record.name)
            if streams:
                continue
            async with self._catalog.basin_lock(basin):
                # Read before the check, and expected: had another node removed the basin and
                # a client created it again since the marker was read, this is not the basin
                # the marker was for. While the record is unchanged (deleting), no stream can
                # be created in it: creations expect it active.
                stored = self._kv.get(Table.BASINS, basin.encode())
                if self._catalog.list_streams(basin, limit=1)[0]:
                    continue
                with contextlib.suppress(CommitConflict):  # a later run looks again
                    await self._committer.commit(
                        [
                            Expect(Table.SYSTEM, key, marker),
                            Expect(Table.BASINS, basin.encode(), stored),
                            Delete(Table.BASINS, basin.encode()),
                            Delete(Table.SYSTEM, key),
                        ]
                    )

    async def _delete_streams(self) -> None:
        markers = self._kv.scan(
            Table.SYSTEM,
            DELETING_STREAM_PREFIX,
            prefix_end(DELETING_STREAM_PREFIX),
            self._settings.streams_per_run,
        )
        doomed: list[tuple[Expect, int, StreamRecord, Expect]] = []
        for key, value in markers:
            skey = key[len(DELETING_STREAM_PREFIX) :]
            sid = struct.unpack(">Q", value)[0]
            data = self._kv.get(Table.STREAMS, skey)
            if data is None:  # removing an absent marker is idempotent
                await self._committer.commit([Delete(Table.SYSTEM, key)])
                continue
            record = StreamRecord.decode(skey.split(b"\x00", 1)[0].decode(), data)
            sequencer = self._sequencers.cached(record.basin, record.name)
            if sequencer is not None and sequencer.sid == sid and sequencer.inflight:
                continue  # appends accepted before the deletion are still landing
            doomed.append(
                (Expect(Table.SYSTEM, key, value), sid, record, Expect(Table.STREAMS, skey, data))
            )
        while doomed:
            remaining = []
            for entry in doomed:
                if await self._take_turn(entry[1], None, None):
                    remaining.append(entry)
                else:
                    await self._forget_stream(*entry)
            doomed = remaining

    async def _forget_stream(
        self, marker: Expect, sid: int, record: StreamRecord, stored: Expect
    ) -> None:
        """The stream's data is gone: remove its rows and its deletion marker, as read.

        The tail row is read before the last look for batches, and expected: an append through
        another node that has not yet learnt of the deletion changes it, and the next run
        deletes what it wrote, rather than its batches outliving the stream's rows. The marker
        and the record are expected too: once removed, the name can be created again, and a
        second node's late removal must not take the new stream's record.
        """
        await self._delete_producers(sid)
        tail = self._kv.get(Table.TAILS, sid_key(sid))
        if self._kv.scan(Table.BATCHES, batch_key(sid, 0), batch_key(sid + 1, 0), 1):
            return
        async with self._catalog.basin_lock(record.basin):
            try:
                await self._committer.commit(
                    [
                        marker,
                        stored,
                        Expect(Table.TAILS, sid_key(sid), tail),
                        Delete(Table.TAILS, sid_key(sid)),
                        Delete(Table.STREAMS, stored.key),
                        Delete(Table.SYSTEM, marker.key),
                    ]
                )
            except CommitConflict:
                return  # a later run looks again
            self._sequencers.forget(record.basin, record.name, sid)
            self._usage.forget(sid)
            self._fronts.pop(sid, None)

    async def _delete_producers(self, sid: int) -> None:
        """Delete the rows of the deleted stream's producers (idempotent: rows written after by
        a node that had not heard of the deletion change the tail, and the next run comes back
        for them)."""
        prefix = producer_key_prefix(sid)
        while rows := await asyncio.to_thread(
            self._kv.scan,
            Table.PRODUCERS,
            prefix,
            prefix_end(prefix),
            self._settings.batches_per_commit,
        ):
            await self._committer.commit([Delete(Table.PRODUCERS, key) for key, _ in rows])
            self._unsettled = True

    async def _take_turn(
        self, sid: int, below_seq: int | None, written_before_ms: int | None
    ) -> bool:
        """Up to `commits_per_stream_max` commits of `_delete_front`; True if more may remain."""
        front = self._fronts.get(sid)
        if front is not None and not _due(front, below_seq, written_before_ms):
            return False
        for _ in range(self._settings.commits_per_stream_max):
            if not await self._delete_front(sid, below_seq, written_before_ms):
                return False
        return True

    async def _delete_front(
        self, sid: int, below_seq: int | None, written_before_ms: int | None
    ) -> bool:
        """Delete up to one commit's worth of the stream's oldest batches.

        A batch goes if it lies wholly below `below_seq` or was written before
        `written_before_ms`; with both None, every batch goes. Returns True if it deleted a
        full commit's worth (so more may remain).
        """
        # Usually the oldest batch is still wanted: look at one first, then a commit's worth.
        for limit in (1, self._settings.batches_per_commit):
            items = await asyncio.to_thread(
                self._kv.scan_map,
                Table.BATCHES,
                batch_key(sid, 0),
                batch_key(sid + 1, 0),
                limit,
                summarize_batch,
                BATCH_SUMMARY_BYTES_MAX,
            )
            writes: list[Write] = []
            front: BatchSummary | None = None
            for key, batch in items:
                if _due(batch, below_seq, written_before_ms):
                    writes.append(Delete(Table.BATCHES, key))
                    writes.append(
                        Delete(
                            Table.TIMESTAMPS,
                            timestamp_key(sid, batch.last_timestamp, batch.last_seq),
                        )
                    )
                else:
                    front = batch
                    break
            if len(writes) < 2 * limit:
                break
        self._fronts.pop(sid, None)
        if writes:
            await self._committer.commit(writes)
            self._unsettled = True
            self._usage.deleted(sid, [batch for _, batch in items[: len(writes) // 2]])
        if front is not None:  # the front once what was due is gone
            self._fronts[sid] = front
        return len(writes) // 2 == self._settings.batches_per_commit

    # --- retention, trim, delete-on-empty -------------------------------------------------

    async def _enforce_retention(self) -> None:
        limit = self._settings.streams_per_run
        items = self._kv.scan(Table.STREAMS, self._retention_cursor, None, limit)
        # Round-robin over all streams, `limit` per run, wrapping around at the end.
        self._retention_cursor = items[-1][0] + b"\x00" if len(items) == limit else b""
        now = self._clock.now_ms()
        # Streams with more to delete after their first turn, and what bounds their deletion.
        behind: list[tuple[int, int, int | None]] = []
        for key, value in items:
            await asyncio.sleep(0)  # one stream at a time, so appends are never held up long
            record = StreamRecord.decode(key.split(b"\x00", 1)[0].decode(), value)
            if record.deleting:
                continue
            sequencer = self._sequencers.cached(record.basin, record.name)
            tail = (
                sequencer.durable
                if sequencer is not None and sequencer.sid == record.sid
                else self._catalog.load_tail(record.sid)
            )
            age_s = record.config.retention_age_secs
            cutoff = None if age_s is None else now - age_s * 1000
            if await self._take_turn(record.sid, tail.trim_point, cutoff):
                behind.append((record.sid, tail.trim_point, cutoff))
            await self._delete_if_empty(record, Expect(Table.STREAMS, key, value), tail, now)
        while behind:
            behind = [entry for entry in behind if await self._take_turn(*entry)]
        await self._expire_producers(now)

    async def _expire_producers(self, now_ms: int) -> None:
        """Delete the rows of producers idle for `producer_expiry_s`, looking at
        `producer_rows_per_run` rows a sweep, round-robin over the table.

        Each deletion expects the row as read: a batch of that producer landing in between
        keeps it (the commit conflicts, and a later sweep looks again). Their states held in
        memory go too, so a producer's next batch starts it afresh, as after a restart."""
        cutoff_ms = now_ms - int(self._settings.producer_expiry_s * 1000)
        limit = self._settings.producer_rows_per_run

        def if_idle(value: memoryview) -> bytes | None:
            data = bytes(value)
            try:
                idle = ProducerRow.decode(data).last_write_ms < cutoff_ms
            except CorruptProducerRow:
                idle = True  # damaged: its producer's appends fail `storage` until it goes
            return data if idle else None

        rows = await asyncio.to_thread(
            self._kv.scan_map, Table.PRODUCERS, self._producer_cursor, None, limit, if_idle
        )
        self._producer_cursor = rows[-1][0] + b"\x00" if len(rows) == limit else b""
        idle = [(key, value) for key, value in rows if value is not None]
        step = self._settings.batches_per_commit
        for start in range(0, len(idle), step):
            chunk = idle[start : start + step]
            writes: list[Write] = [Expect(Table.PRODUCERS, key, value) for key, value in chunk]
            writes += [Delete(Table.PRODUCERS, key) for key, _ in chunk]
            try:
                await self._committer.commit(writes)
            except CommitConflict:
                continue  # a later sweep looks again
            self._unsettled = True
            for key, value in chunk:
                sid, producer_id = producer_key_parts(key)
                self._sequencers.producers.forget(sid, producer_id, value)

    async def _delete_if_empty(
        self, record: StreamRecord, stored: Expect, tail: TailRow, now: int
    ) -> None:
        """Mark the stream deleting if it has been empty and unwritten for its minimum age.

        `stored` is its record as the sweep read it. The deletion expects that record and the
        tail row this checks: an append through another node in between makes it a
        `CommitConflict`, and the stream is kept."""
        min_age_s = record.config.delete_on_empty_min_age_secs
        if min_age_s <= 0:
            return
        if now - max(tail.last_write_ms, record.created_at_ms) < min_age_s * 1000:
            return
        try:
            # Every append through this node goes through this one sequencer: checking it and
            # marking it deleting with no await in between leaves no window for one of them.
            sequencer = await self._sequencers.get(record.basin, record.name)
        except S2Error:
            return  # deleted meanwhile
        if sequencer.inflight:
            return
        tail_key = sid_key(record.sid)
        tail_row = self._kv.get(Table.TAILS, tail_key)
        state = TailRow() if tail_row is None else TailRow.decode(tail_row)
        if now - max(state.last_write_ms, record.created_at_ms) < min_age_s * 1000:
            return
        has_records = state.trim_point < state.next_seq and self._kv.scan(
            Table.BATCHES, batch_key(record.sid, 0), batch_key(record.sid + 1, 0), 1
        )
        if has_records:
            return
        sequencer.mark_deleting()
        try:
            await self._catalog.delete_stream_as_checked(
                record, [stored, Expect(Table.TAILS, tail_key, tail_row)]
            )
        except CommitConflict:
            sequencer.deleting = False  # another node wrote to it or changed it: kept
            return
        except S2Error:
            sequencer.deleting = False  # not marked on disk: the stream stays usable
            raise
        log.info("deleted empty stream %s/%s", record.basin, record.name)
        # The next run removes it at once, not a tick later, as after a client's deletion.
        self.kick()

    async def _delete_stream(self, basin: str, name: str) -> None:
        await self._sequencers.delete_stream(basin, name)
        # The next run removes it at once, not a tick later, as after a client's deletion.
        self.kick()


def _due(batch: BatchSummary, below_seq: int | None, written_before_ms: int | None) -> bool:
    """Whether the batch is to be deleted: wholly below `below_seq` (a trim), or written
    before `written_before_ms` (retention by age); with both None (a deleted stream), always."""
    if below_seq is None and written_before_ms is None:
        return True
    expired = written_before_ms is not None and batch.arrival_ms < written_before_ms
    return expired or (below_seq is not None and batch.last_seq < below_seq)
