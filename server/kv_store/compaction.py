"""Compaction: each key-value store's stream is rewritten to a snapshot of its live entries,
and the records before it trimmed, once enough of it is superseded; so a store never grows
past about twice its live size plus `min_bytes` (docs/adr/0015-kv-store.md).

A compaction of a store, with its stream's id (`sid`) fixed from the listing on:

1. Fold the stream, from its trim point to its tail T (`s2s/kv_state.py`).
2. Append the snapshot of the live entries as of T, in parts, wherever the stream then ends
   (commits may land before and between them: readers fold those over the snapshot), and wait
   until every part is durable.
3. Append a trim to T. Only now can a reader start at T, and the complete snapshot as of T
   lies after it.

Killed (or failing) anywhere before 3, it leaves parts no reader uses (a reader that did not
start at T skips snapshots) and no trim: nothing lost, nothing doubled; the next compaction
folds them away. The appends name the `sid`: a store deleted and made again under the same
name is never given another's snapshot or trim. Two compactors at once (a node taking over
from one that is still finishing) are safe too: a trim to T needs only a complete snapshot as
of T before it, whoever else writes.

Which stores: streams whose name is `kv/NAME` (or ends so, after a token's prefix), without a
cipher (the server has no key to read them), not being deleted, and holding nothing but the
store's records: a store holding a foreign record, or whose history was trimmed by something
else, is left alone (logged once).

When: a store is compacted once what a snapshot would drop (its stream's bytes less the
snapshot's) is at least `min_bytes` and at least the snapshot's own size, so its stream stays
under twice the snapshot plus `min_bytes`. Between folds that is judged from the sizes of the
records appended since (read, not decoded) against the last fold's snapshot size; a fold that
finds the live data grew instead (not enough to drop) raises the bar, so a store is folded
again only after its stream has about doubled.

The work runs on the node that leads `KV_COMPACTION_ROLE`, one store at a time, the snapshot
built off the event loop and written at most `write_bytes_per_s`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from s2s.errors import S2Error
from s2s.kv_format import (
    COMPACTION_MIN_BYTES,
    append_batches,
    compaction_worth,
    snapshot_bytes_estimate,
    snapshot_records,
    store_of_stream,
)
from s2s.kv_state import KvState
from s2s.records import ValidatedBatch, trim_record, validate_append_input
from s2s.v1 import records_pb2 as pb
from server.catalog import StreamRecord
from server.kv_store.folding import Read, read_to_tail
from server.reader import ReadLimits, ReadOutput, ReadStart
from server.streamstore import StreamStore
from server.tasks import cancel_and_wait

log = logging.getLogger("s2s.kv")

KV_COMPACTION_ROLE = "kv-compaction"
"""What a node leads while it compacts stores (`KeyValueStore.leads`)."""


@dataclass(frozen=True)
class CompactionSettings:
    interval_s: float = 10.0
    """Time between runs; 0: never compact."""
    min_bytes: int = COMPACTION_MIN_BYTES
    """Least a compaction must drop (metered bytes)."""
    streams_per_run: int = 1000
    """Streams one run looks at (round-robin over all)."""
    live_chars_max: int = 256 * 1024 * 1024
    """A store with more live data than this is not compacted: compaction holds it in memory."""
    write_bytes_per_s: float = 32 * 1024 * 1024
    """How fast a snapshot is written, at most: compaction is background work, and its
    appends share the disk and the committer with every client's; 0: no limit."""


@dataclass
class _Tracked:
    """What compaction knows of one store's stream between runs."""

    position: int
    """Where its last look ended."""
    stored_bytes: int
    """Metered bytes from its trim point to `position`, as last counted."""
    snapshot_bytes: int
    """What a snapshot of it took, or would have, at the last fold."""
    refused: str | None = None
    """Why it is not compacted, if it is not (logged once)."""


class KvCompactor:
    """Compacts stores every `interval_s` while this node leads `KV_COMPACTION_ROLE`."""

    def __init__(self, store: StreamStore, settings: CompactionSettings) -> None:
        self._store = store
        self._settings = settings
        self._tracked: dict[int, _Tracked] = {}
        self._visited: set[int] = set()
        self._cursor = ("", "")
        self._task: asyncio.Task[None] | None = None
        self._leading = False
        # Set while runs fail for want of storage, so an outage is logged once, not per run.
        self._storage_unavailable = False

    def start(self) -> None:
        if self._settings.interval_s > 0:
            self._task = asyncio.create_task(self._loop(), name="s2s-kv-compaction")

    async def stop(self) -> None:
        """Cancel the loop; a compaction cut short leaves only parts nobody uses."""
        await cancel_and_wait(self._task)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._settings.interval_s)
            try:
                leading = await asyncio.to_thread(self._store.kv.leads, KV_COMPACTION_ROLE)
                if leading != self._leading:
                    self._leading = leading
                    if leading:
                        log.info("kv compaction runs on this node now")
                    else:
                        log.warning("kv compaction no longer runs on this node")
                if leading:
                    await self.run_once()
            except S2Error as error:  # storage out of reach: the next run tries again
                if not self._storage_unavailable:
                    log.warning("kv compaction runs fail: %s", error.message)
                self._storage_unavailable = True
            except Exception:
                log.exception("kv compaction run failed")
            else:
                if self._storage_unavailable:
                    log.warning("kv compaction runs succeed again")
                self._storage_unavailable = False

    async def run_once(self) -> None:
        """Look at the next `streams_per_run` streams, and compact the stores due."""
        basin, name = self._cursor
        limit = self._settings.streams_per_run
        records = await asyncio.to_thread(self._store.streams_after, basin, name, limit)
        for record in records:
            if store_of_stream(record.name) is None or record.deleting or record.cipher:
                continue
            self._visited.add(record.sid)
            await self._visit(record)
        if len(records) == limit:
            self._cursor = (records[-1].basin, records[-1].name)
        else:  # a full turn: forget the stores that are gone
            self._cursor = ("", "")
            self._tracked = {s: t for s, t in self._tracked.items() if s in self._visited}
            self._visited = set()

    async def _visit(self, record: StreamRecord) -> None:
        tracked = self._tracked.get(record.sid)
        if tracked is not None:
            if tracked.refused is not None:
                return
            read = _reader(self._store, record)
            try:
                position, grown = await read_to_tail(read, tracked.position, None)
            except S2Error as error:
                log.debug("kv compaction skips %s/%s: %s", record.basin, record.name, error)
                return
            tracked.position = position
            tracked.stored_bytes += grown
            if not self._worth(tracked.stored_bytes, tracked.snapshot_bytes):
                return
        await self._compact(record)

    def _worth(self, stored_bytes: int, snapshot_bytes: int) -> bool:
        return compaction_worth(stored_bytes, snapshot_bytes, self._settings.min_bytes)

    async def _compact(self, record: StreamRecord) -> None:
        where = f"{record.basin}/{record.name}"
        state = KvState()
        live_chars_max = self._settings.live_chars_max

        def fold(records: list[pb.SequencedRecord]) -> None:
            state.fold(records)
            if state.live_chars > live_chars_max:
                raise _TooLarge()

        try:
            _, stored_bytes = await read_to_tail(_reader(self._store, record), 0, fold)
            state.check_whole()
        except _TooLarge:
            reason = f"its live data is over what compaction may hold ({live_chars_max} chars)"
            self._refuse(record, where, reason)
            return
        except S2Error as error:
            if error.code == "kv_history_lost":
                self._refuse(record, where, error.message)
            else:
                log.debug("kv compaction skips %s: %s", where, error.message)
            return
        snapshot_bytes = snapshot_bytes_estimate(state.live_chars, len(state.entries))
        tracked = _Tracked(state.position, stored_bytes, snapshot_bytes)
        self._tracked[record.sid] = tracked
        if state.foreign_records:
            self._refuse(
                record,
                where,
                f"it holds {state.foreign_records} records that are not the store's, which "
                "compaction would trim",
            )
            return
        if not self._worth(stored_bytes, snapshot_bytes):
            return
        if record.config.retention_age_secs is not None:
            log.warning(
                "kv store %s: its stream's retention (%d s) may delete changes no snapshot "
                "holds yet; give it infinite retention",
                where,
                record.config.retention_age_secs,
            )
        as_of = state.position
        log.info(
            "kv compaction of %s: %d entries as of %d, %d bytes stored",
            where,
            len(state.entries),
            as_of,
            stored_bytes,
        )
        batches = await asyncio.to_thread(_snapshot_batches, state, as_of)
        try:
            await self._append_all(record, batches)
            # Only once every part is durable: a reader may start at `as_of` from now on.
            trim = validate_append_input(pb.AppendInput(records=[trim_record(as_of)]))
            await self._append_all(record, [trim])
        except S2Error as error:
            log.warning("kv compaction of %s stopped before its trim: %s", where, error.message)
            return
        written = sum(batch.metered_bytes for batch in batches)
        log.info(
            "kv compaction of %s done: trimmed to %d, snapshot %d bytes in %d appends",
            where,
            as_of,
            written,
            len(batches),
        )
        # The next look reads from the trim point: the snapshot and what came after it.
        tracked.position, tracked.stored_bytes = as_of, 0
        tracked.snapshot_bytes = written

    async def _append_all(self, record: StreamRecord, batches: list[ValidatedBatch]) -> None:
        """Append the batches one after the other, each durable before the next is sent.

        Not pipelined: a commit checks its `match_seq_num` against the tail with every batch
        sent, and its committer can only read up to the durable one, so while parts were in
        flight every commit to the store failed and tried again (`client._kv`)."""
        rate = self._settings.write_bytes_per_s
        began = asyncio.get_running_loop().time()
        written = 0
        for batch in batches:
            await self._store.append(
                record.basin, record.name, batch, may_create=False, sid=record.sid
            )
            written += batch.metered_bytes
            if rate > 0:
                due = began + written / rate
                await asyncio.sleep(max(0.0, due - asyncio.get_running_loop().time()))

    def _refuse(self, record: StreamRecord, where: str, reason: str) -> None:
        tracked = self._tracked.setdefault(record.sid, _Tracked(0, 0, 0))
        if tracked.refused is None:
            log.warning("kv store %s is not compacted: %s", where, reason)
        tracked.refused = reason


class _TooLarge(Exception):
    """A store's live data outgrew `live_chars_max` while it was folded."""


def _reader(store: StreamStore, record: StreamRecord) -> Read:
    async def read(start: ReadStart, limits: ReadLimits) -> ReadOutput:
        return await store.read(record.basin, record.name, start, limits, may_create=False)

    return read


def _snapshot_batches(state: KvState, as_of: int) -> list[ValidatedBatch]:
    """The snapshot's appends (blocking: run off the loop)."""
    records = snapshot_records(state.entries.items(), as_of, state.changed_through)
    return [
        validate_append_input(pb.AppendInput(records=batch)) for batch in append_batches(records)
    ]
