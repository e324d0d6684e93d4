"""The sequencer registry: the one live `StreamSequencer` of each stream in use.

A stream's tail must have exactly one owner in the process (`server/sequencer.py`), so every
append and read finds its sequencer here, and everything that changes a stream under a live
sequencer goes through here too: a new config is adopted at once, a deletion marks the sequencer
so it refuses appends in the same step as the mark on disk, a failed commit makes every
sequencer fall back to its durable state, and the deletion job drops a deleted stream's
sequencer so its name can be created afresh. Idle sequencers are evicted past a bound; their
state is on disk (the stream's tail row). Where several nodes share the store, what another
node commits to a live sequencer's tail, stream or basin reaches it here too (`refresh`,
`streams_changed`, `basins_changed`, from the store's notices).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Literal

from s2s.config import StreamConfig
from s2s.errors import S2Error
from server.catalog import Catalog, StreamRecord
from server.clock import Clock
from server.producers import ProducerCache
from server.sequencer import AppendAck, StoredStream, StreamSequencer
from server.storage.committer import GroupCommitter
from server.storage.kv import Expect, Table
from server.storage.layout import ProducerRow, stream_key
from server.usage.accounting import Usage

log = logging.getLogger(__name__)

AutoCreate = Literal["append", "read"]
"""The operation a missing stream may be created for, as its basin's config allows."""

SEQUENCERS_CACHED_MAX = 10_000
"""Idle sequencers beyond this many are dropped; their state is on disk."""


class SequencerRegistry:
    """Loads, creates, caches and evicts sequencers, keyed by (basin, stream)."""

    def __init__(
        self, catalog: Catalog, committer: GroupCommitter, clock: Clock, usage: Usage
    ) -> None:
        self._catalog = catalog
        self._committer = committer
        self._clock = clock
        self._usage = usage
        self._sequencers: dict[tuple[str, str], StreamSequencer] = {}
        self.producers: ProducerCache[AppendAck] = ProducerCache()
        """Every stream's producers (idempotent appends) in memory, with one bound."""
        self._following: set[asyncio.Future[None]] = set()
        """Reads of other nodes' changes under way: the loop holds only weak references."""

    async def get(
        self,
        basin: str,
        stream: str,
        auto_create: AutoCreate | None = None,
        create_config: StreamConfig | None = None,
    ) -> StreamSequencer:
        """The stream's one sequencer, loading (or auto-creating) the stream if needed.

        `auto_create` names the operation whose basin flag allows creating a missing stream.
        """
        key = (basin, stream)
        sequencer = self._sequencers.get(key)
        if sequencer is not None and not sequencer.deleting:
            return sequencer
        record = self._catalog.get_stream(basin, stream)
        if sequencer is not None:
            if record is not None and record.sid == sequencer.sid:
                raise S2Error("stream_deletion_pending", f"stream {stream!r} is being deleted")
            # Deleted through another node, whose jobs removed it (and perhaps created the
            # name afresh since): this node's jobs will never see it to forget it.
            self.forget(basin, stream, sequencer.sid)
        if record is None:
            basin_record = self._catalog.require_basin(basin)
            allowed = (auto_create == "append" and basin_record.config.create_stream_on_append) or (
                auto_create == "read" and basin_record.config.create_stream_on_read
            )
            if not allowed:
                raise S2Error("stream_not_found", f"stream {stream!r} does not exist")
            record = await self._catalog.create_stream_if_absent(
                basin, stream, create_config or StreamConfig()
            )
            sequencer = self._sequencers.get(key)
            if sequencer is not None:  # another caller loaded it while we created
                return sequencer
        if record.deleting:
            raise S2Error("stream_deletion_pending", f"stream {stream!r} is being deleted")
        if self._catalog.shared:
            # The config with the records its appends will expect, as one read gives them.
            stored = await self._reload(basin, stream, record.sid)
            sequencer = self._sequencers.get(key)
            if sequencer is not None and not sequencer.deleting:
                return sequencer  # another caller loaded it meanwhile
        else:
            stored = StoredStream(record.config, self._catalog.stored_tail(record.sid))
        sequencer = StreamSequencer(
            record.sid,
            stream,
            stored.config,
            stored.tail,
            self._committer,
            self._clock,
            functools.partial(self._reload, basin, stream, record.sid),
            record.cipher,
            self._usage.stream(basin, stream, record.sid),
            stored.records,
            producers=self.producers,
            read_producer=functools.partial(self._read_producer, record.sid),
        )
        self._evict_idle()
        self._sequencers[key] = sequencer
        return sequencer

    async def _reload(self, basin: str, stream: str, sid: int) -> StoredStream:
        """The stream as the store holds it now (another node appended to it, or changed it),
        read on a worker thread: on a database each read is a round trip."""
        record, stream_record = await asyncio.to_thread(self._catalog.stream_entry, basin, stream)
        if record is None or record.sid != sid:
            raise S2Error("stream_not_found", f"stream {stream!r} does not exist")
        if record.deleting:
            raise S2Error("stream_deletion_pending", f"stream {stream!r} is being deleted")
        records: tuple[Expect, ...] = ()
        if self._catalog.shared:
            basin_record, basin_expect = await asyncio.to_thread(self._catalog.basin_entry, basin)
            if basin_record is None or basin_record.deleting:
                # As this node's own deletion of the basin marks its sequencers.
                raise S2Error(
                    "stream_deletion_pending", f"stream {stream!r}'s basin is being deleted"
                )
            records = (basin_expect, stream_record)
        tail = await asyncio.to_thread(self._catalog.stored_tail, sid)
        return StoredStream(record.config, tail, records)

    async def _read_producer(self, sid: int, producer_id: str) -> ProducerRow | None:
        """A producer's row of stream `sid`, read on a worker thread."""
        try:
            return await asyncio.to_thread(self._catalog.stored_producer, sid, producer_id)
        except S2Error:
            raise
        except Exception as error:  # the store could not be read: the client may retry
            raise S2Error(
                "unavailable", f"producer {producer_id!r} could not be read: {error}"
            ) from None

    def refresh(self, tail_keys: list[bytes] | None) -> None:
        """Other nodes moved these streams' tails (None: perhaps any): the live sequencers
        among them read theirs back."""
        if tail_keys is None:
            moved = list(self._sequencers.values())
        else:
            sids = {int.from_bytes(key, "big") for key in tail_keys}
            moved = [s for s in self._sequencers.values() if s.sid in sids]
        for sequencer in moved:
            sequencer.refresh()

    def streams_changed(self, keys: list[bytes]) -> None:
        """Other nodes changed these streams' records (STREAMS keys): their live sequencers
        read them back, taking a new config or a deletion."""
        changed = set(keys)
        for (basin, stream), sequencer in self._sequencers.items():
            if stream_key(basin, stream) in changed:
                sequencer.refresh()

    def basins_changed(self, keys: list[bytes] | None) -> None:
        """Other nodes changed these basins' records (BASINS keys; None: perhaps any): if one
        is being deleted, or gone, its streams' live sequencers refuse appends. Nothing else of
        a basin is held here: its config is read where it is used."""
        live = {basin for basin, _ in self._sequencers}
        basins = live if keys is None else live & {key.decode() for key in keys}
        if basins:
            task = asyncio.ensure_future(self._follow_basins(sorted(basins)))
            self._following.add(task)
            task.add_done_callback(self._following.discard)

    async def _follow_basins(self, basins: list[str]) -> None:
        for basin in basins:
            try:
                record = await asyncio.to_thread(self._catalog.get_basin, basin)
            except Exception as error:  # the next notice, or reconnection, reads it again
                log.warning(
                    "could not read basin %r back after another node changed it: %s", basin, error
                )
                continue
            if record is None or record.deleting:
                for (name, _), sequencer in list(self._sequencers.items()):
                    if name == basin:
                        sequencer.mark_deleting()

    def cached(self, basin: str, stream: str) -> StreamSequencer | None:
        """The stream's sequencer if one is live; never loads one."""
        return self._sequencers.get((basin, stream))

    def adopt_config(self, record: StreamRecord) -> None:
        """A stream's config changed on disk: its live sequencer applies it from now on."""
        sequencer = self._sequencers.get((record.basin, record.name))
        if sequencer is not None and sequencer.sid == record.sid:
            # The bytes the catalog stored: `encode` is what it wrote.
            stored = Expect(Table.STREAMS, stream_key(record.basin, record.name), record.encode())
            sequencer.reconfigure(record.config, stored if self._catalog.shared else None)

    async def delete_stream(self, basin: str, name: str) -> None:
        """Mark the stream deleting on disk, then its live sequencer: appends fail from now."""
        await self._catalog.delete_stream(basin, name)
        sequencer = self._sequencers.get((basin, name))
        if sequencer is not None:
            sequencer.mark_deleting()

    async def delete_basin(self, name: str) -> None:
        """Mark the basin deleting on disk, then every live sequencer of its streams."""
        await self._catalog.delete_basin(name)
        for (basin, _), sequencer in list(self._sequencers.items()):
            if basin == name:
                sequencer.mark_deleting()

    def forget(self, basin: str, stream: str, sid: int) -> None:
        """Drop a deleted stream's sequencer so the name can be created afresh."""
        sequencer = self._sequencers.get((basin, stream))
        if sequencer is not None and sequencer.sid == sid:
            del self._sequencers[(basin, stream)]

    def resync(self) -> None:
        """A commit failed: every sequencer continues from what is durable."""
        for sequencer in self._sequencers.values():
            sequencer.resync()

    def _evict_idle(self) -> None:
        if len(self._sequencers) < SEQUENCERS_CACHED_MAX:
            return
        for key, sequencer in list(self._sequencers.items()):
            if not sequencer.busy:
                del self._sequencers[key]
            if len(self._sequencers) < SEQUENCERS_CACHED_MAX // 2:
                return
