"""Background jobs: stream and basin deletion, trimming, retention by age, delete-on-empty.

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
    DELETING_BASIN_PREFIX,
    DELETING_STREAM_PREFIX,
    RECLAIMED_AT_KEY,
    TailRow,
    batch_key,
    prefix_end,
    sid_key,
    summarize_batch,
    timestamp_key,
)
from server.usage.accounting import Usage

log = logging.getLogger(__name__)

JOBS_ROLE = "background-jobs"
"""What a node leads while it runs the jobs (`KeyValueStore.leads`)."""


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

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="s2s-background-jobs")

    def kick(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # our caller was cancelled too: let that through

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

    async def _take_turn(
        self, sid: int, below_seq: int | None, written_before_ms: int | None
    ) -> bool:
        """Up to `commits_per_stream_max` commits of `_delete_front`; True if more may remain."""
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
            )
            writes: list[Write] = []
            for key, batch in items:
                expired = written_before_ms is not None and batch.arrival_ms < written_before_ms
                trimmed = below_seq is not None and batch.last_seq < below_seq
                if (below_seq is None and written_before_ms is None) or expired or trimmed:
                    writes.append(Delete(Table.BATCHES, key))
                    writes.append(
                        Delete(
                            Table.TIMESTAMPS,
                            timestamp_key(sid, batch.last_timestamp, batch.last_seq),
                        )
                    )
                else:
                    break
            if len(writes) < 2 * limit:
                break
        if writes:
            await self._committer.commit(writes)
            self._unsettled = True
            self._usage.deleted(sid, [batch for _, batch in items[: len(writes) // 2]])
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
