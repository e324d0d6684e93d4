"""`StreamStore`: the server's single entry point for control-plane and data-plane operations.

Frontends (gRPC, HTTP) and the lake call only its methods. It owns the storage (key-value
store and committer), the catalog of basins and streams, the sequencer registry (one sequencer
per stream in use, `server/sequencers.py`), the reader and the background jobs; it builds them
with what each depends on, starts and stops them together, and keeps each operation that
touches two of them in one place (a deletion: marked through the registry, then the jobs are
woken to remove the data).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncGenerator

from prometheus_client.registry import Collector

from s2s.config import (
    BasinConfig,
    BasinConfigPatch,
    StreamConfig,
    StreamConfigPatch,
)
from s2s.encryption_key import EncryptionKey
from s2s.errors import FencingTokenMismatch, S2Error, SeqNumMismatch
from s2s.records import ValidatedBatch
from server.access.tokens import AccessTokens
from server.catalog import BasinRecord, Catalog, Provisioned, RequestedConfig, StreamRecord
from server.clock import Clock, SystemClock
from server.encryption import (
    RecordCipher,
    open_entries,
    record_cipher,
    seal_batch,
    stream_identity,
)
from server.jobs import BackgroundJobs, JobSettings
from server.reader import Reader, ReadLimits, ReadOutput, ReadStart, validate_read
from server.sequencer import AppendAck, StreamPosition
from server.sequencers import AutoCreate, SequencerRegistry
from server.storage.choice import LMDB, open_key_value_store
from server.storage.committer import GroupCommitter
from server.storage.kv import MAP_SIZE_BYTES_DEFAULT, Changed, KeyValueStore, Table
from server.storage.layout import TailRow
from server.usage import metric_sets
from server.usage.accounting import ACCOUNT, Output, Usage, UsageSettings
from server.usage.prometheus import server_registry
from server.usage.query import Metric, MetricsQuery
from server.usage.storage import StreamTail

YIELD_AROUND_BATCH_RECORDS = 64
"""A batch this large holds the event loop for ~0.1-7 ms while it is validated (by the caller)
and again while it is encoded (when sequenced); around sequencing it, the caller lets every other
ready task run. A session sending such batches back to back otherwise held the loop in long
turns, and gRPC's asyncio server accepts each new call in a turn of the loop: beside a flood of
1000-record batches with headers, unary appends waited p50 0.9-1.2 s; 0.5-0.6 s with a yield
after sequencing only; 22-26 ms with both (`bench/mixed_load.py --batch-rate 0`)."""


@dataclasses.dataclass(frozen=True)
class StreamStatus:
    """What `GET /v1/streams/{s}/status` shows of a stream, as its sequencer holds it."""

    row: TailRow
    cipher: str | None


class StreamStore:
    """The facade. Its parts are attributes for tests and benchmarks to inspect; server modules
    use its methods, so a part can change without touching them."""

    def __init__(
        self,
        kv: KeyValueStore,
        clock: Clock | None = None,
        job_settings: JobSettings | None = None,
        usage_settings: UsageSettings | None = None,
    ) -> None:
        self.kv = kv
        self.clock = clock or SystemClock()
        self.committer = GroupCommitter(
            kv, on_failure=self._resync_after_failure, on_committed=self._committed
        )
        self.usage = Usage(
            kv,
            self.committer,
            self.clock,
            usage_settings,
            self._stream_tails if kv.shared else None,
        )
        self._prometheus = server_registry(self.usage)
        self.catalog = Catalog(kv, self.committer, self.clock)
        self.draining = asyncio.Event()
        """Set once shutdown has begun (`drain`): calls that only wait end with
        `server_draining`, and sessions end at their next wait."""
        self.reader = Reader(kv, self.draining)
        self.sequencers = SequencerRegistry(self.catalog, self.committer, self.clock, self.usage)
        self.access_tokens = AccessTokens(kv, self.committer, self.clock)
        self.jobs = BackgroundJobs(
            kv,
            self.catalog,
            self.committer,
            self.sequencers,
            self.clock,
            job_settings or JobSettings(),
            self.usage,
        )

    @classmethod
    async def open(
        cls,
        data_dir: str,
        clock: Clock | None = None,
        job_settings: JobSettings | None = None,
        max_storage_bytes: int = MAP_SIZE_BYTES_DEFAULT,
        usage_settings: UsageSettings | None = None,
        storage: str = LMDB,
        shared_storage: bool = False,
    ) -> StreamStore:
        """`storage`: `lmdb` (in `data_dir`) or `postgres:<connection string>`;
        `shared_storage`: other nodes serve the same database (ADR 0013)."""
        kv = await asyncio.to_thread(
            open_key_value_store, storage, data_dir, max_storage_bytes, shared_storage
        )
        store = cls(kv, clock, job_settings, usage_settings)
        await store.start()
        return store

    async def start(self) -> None:
        self.access_tokens.load()
        self.committer.start()
        loop = asyncio.get_running_loop()

        def changed(change: Changed | None) -> None:  # on the store's thread
            with contextlib.suppress(RuntimeError):  # the loop closed first, at shutdown
                loop.call_soon_threadsafe(self._follow, change)

        self.kv.watch_changes(changed)
        await asyncio.to_thread(self._load_usage)
        self.usage.start()
        self.jobs.start()

    def _follow(self, change: Changed | None) -> None:
        """Another node committed these keys (None: perhaps any): what this node holds in
        memory of them follows."""
        if change is None:
            self.sequencers.refresh(None)
            self.sequencers.basins_changed(None)
            self.access_tokens.reload(None)
        elif change.table is Table.TAILS:
            self.sequencers.refresh(change.keys)
        elif change.table is Table.STREAMS:
            self.sequencers.streams_changed(change.keys)
        elif change.table is Table.BASINS:
            self.sequencers.basins_changed(change.keys)
        elif change.table is Table.ACCESS_TOKENS:
            self.access_tokens.reload(change.keys)

    def _load_usage(self) -> None:
        self.usage.load(self._stream_tails())

    def _stream_tails(self) -> list[StreamTail]:
        """Every stream with where its tail is now. Blocking: two scans."""
        streams = self.catalog.every_stream()
        tails = self.catalog.every_tail()
        return [
            StreamTail(r.sid, r.basin, r.name, tails[r.sid].next_seq if r.sid in tails else 0)
            for r in streams
        ]

    def drain(self) -> None:
        """Shutdown has begun: unary reads waiting at the tail end now, and open sessions
        (`server.append_session`, `server.read_session`) end at their next wait."""
        self.draining.set()

    async def close(self) -> None:
        """Stop background jobs, finish every queued commit, and close the store."""
        await self.jobs.stop()
        await self.usage.close()
        await self.committer.close()
        self.kv.close()

    # --- basins ------------------------------------------------------------------------------

    async def create_basin(
        self,
        name: str,
        config: BasinConfig | None = None,
        requested_config: RequestedConfig | None = None,
        request_token: str | None = None,
    ) -> Provisioned[BasinRecord]:
        provisioned = await self.catalog.create_basin(
            name, config or BasinConfig(), requested_config, request_token
        )
        self.usage.operation(ACCOUNT, "create-basin")
        return provisioned

    async def ensure_basin(
        self, name: str, config: BasinConfig | None = None
    ) -> Provisioned[BasinRecord]:
        provisioned = await self.catalog.ensure_basin(name, config or BasinConfig())
        self.usage.operation(ACCOUNT, "create-basin")
        return provisioned

    def list_basins(
        self, prefix: str = "", start_after: str = "", limit: int | None = None
    ) -> tuple[list[BasinRecord], bool]:
        page = self.catalog.list_basins(prefix, start_after, limit)
        self.usage.operation(ACCOUNT, "list-basins")
        return page

    def get_basin(self, name: str) -> BasinRecord:
        record = self.catalog.require_basin(name)
        self.usage.operation(ACCOUNT, "get-basin-config")
        return record

    async def reconfigure_basin(self, name: str, patch: BasinConfigPatch) -> BasinRecord:
        record = await self.catalog.reconfigure_basin(name, patch)
        self.usage.operation(ACCOUNT, "reconfigure-basin")
        return record

    async def delete_basin(self, name: str) -> None:
        await self.sequencers.delete_basin(name)
        self.usage.operation(ACCOUNT, "delete-basin")
        self.jobs.kick()

    # --- streams -----------------------------------------------------------------------------

    async def create_stream(
        self,
        basin: str,
        name: str,
        config: StreamConfig | None = None,
        requested_config: RequestedConfig | None = None,
        request_token: str | None = None,
    ) -> Provisioned[StreamRecord]:
        provisioned = await self.catalog.create_stream(
            basin, name, config or StreamConfig(), requested_config, request_token
        )
        self._stream_created(provisioned.record)
        self.usage.operation(basin, "create-stream")
        return provisioned

    async def ensure_stream(
        self, basin: str, name: str, config: StreamConfig | None = None
    ) -> Provisioned[StreamRecord]:
        provisioned = await self.catalog.ensure_stream(basin, name, config or StreamConfig())
        self.sequencers.adopt_config(provisioned.record)
        self._stream_created(provisioned.record)
        self.usage.operation(basin, "create-stream")
        return provisioned

    async def create_stream_if_absent(
        self, basin: str, name: str, config: StreamConfig
    ) -> StreamRecord:
        """Create the stream, and its basin (default config) if that is missing too; an existing
        one is left as it is. For streams the server itself writes to (the lake's ingest)."""
        await self.catalog.create_basin_if_absent(basin)
        record = await self.catalog.create_stream_if_absent(basin, name, config)
        self._stream_created(record)
        return record

    def list_streams(
        self, basin: str, prefix: str = "", start_after: str = "", limit: int | None = None
    ) -> tuple[list[StreamRecord], bool]:
        page = self.catalog.list_streams(basin, prefix, start_after, limit)
        # Only a basin that exists gets a count: names a client makes up must not add rows.
        if self.catalog.get_basin(basin) is not None:
            self.usage.operation(basin, "list-streams")
        return page

    def get_stream(self, basin: str, name: str) -> StreamRecord:
        self.catalog.require_basin(basin)
        record = self.catalog.require_stream(basin, name)
        self.usage.operation(basin, "get-stream-config")
        return record

    async def reconfigure_stream(
        self, basin: str, name: str, patch: StreamConfigPatch
    ) -> StreamRecord:
        record = await self.catalog.reconfigure_stream(basin, name, patch)
        self.sequencers.adopt_config(record)
        self.usage.operation(basin, "reconfigure-stream")
        return record

    async def delete_stream(self, basin: str, name: str) -> None:
        await self.sequencers.delete_stream(basin, name)
        self.usage.operation(basin, "delete-stream")
        self.jobs.kick()

    def _stream_created(self, record: StreamRecord) -> None:
        """Its basin has a stream from now on (`active-basins`), even before any append."""
        self.usage.stream(record.basin, record.name, record.sid)

    # --- data plane --------------------------------------------------------------------------

    async def append(
        self,
        basin: str,
        stream: str,
        batch: ValidatedBatch,
        create_config: StreamConfig | None = None,
        *,
        may_create: bool = True,
        key: EncryptionKey | None = None,
        sid: int | None = None,
    ) -> AppendAck:
        """Append one batch atomically; returns once it is durable."""
        return await (
            await self.submit(
                basin, stream, batch, create_config, may_create=may_create, key=key, sid=sid
            )
        )

    async def submit(
        self,
        basin: str,
        stream: str,
        batch: ValidatedBatch,
        create_config: StreamConfig | None = None,
        *,
        may_create: bool = True,
        key: EncryptionKey | None = None,
        sid: int | None = None,
    ) -> asyncio.Future[AppendAck]:
        """Sequence a batch now and return a future of its ack (for pipelined sessions).

        `may_create` false: a missing stream is not created, whatever the basin's config
        (the caller may not create it); so for the reads below. `key`: the request's
        encryption key, needed by (and only used for) streams with a cipher. `sid`: append
        only to that incarnation of the stream (`stream_not_found` if it was deleted and
        made again), for a server-side writer that read it first (KV compaction)."""
        large = batch.count >= YIELD_AROUND_BATCH_RECORDS
        if large:
            await asyncio.sleep(0)
        sequencer = await self.sequencers.get(
            basin, stream, "append" if may_create else None, create_config
        )
        if sid is not None and sequencer.sid != sid:
            raise S2Error("stream_not_found", f"stream {stream!r} was deleted and made again")
        cipher = record_cipher(sequencer.cipher, key)
        if cipher is not None:
            batch = seal_batch(batch, cipher, stream_identity(basin, stream))
        doubt = sequencer.in_doubt()
        try:
            ack = await sequencer.submit(batch, doubt)
        except (SeqNumMismatch, FencingTokenMismatch):
            if not self.kv.shared:
                raise
            # Checked against this node's view, which may be behind another node's appends
            # or fence: refused only if the stream as stored refuses it too.
            await sequencer.sync()
            ack = await sequencer.submit(batch, doubt)
        if large:
            await asyncio.sleep(0)
        return ack

    def stream_sid(self, basin: str, stream: str) -> int | None:
        """The stream's id, which a stream deleted and made again does not keep, or None if
        there is no such stream. For server-side caches and workers: no caller's operation
        (neither checked nor counted)."""
        sequencer = self.sequencers.cached(basin, stream)
        if sequencer is not None:  # in use: known without a lookup
            return sequencer.sid
        record = self.catalog.get_stream(basin, stream)
        return None if record is None else record.sid

    def streams_after(self, basin: str, stream: str, limit: int) -> list[StreamRecord]:
        """Up to `limit` streams of every basin after (`basin`, `stream`) in name order (from
        the first with both empty), being deleted or not. For server-side workers that visit
        every stream a page at a time; blocking (run off the loop)."""
        return self.catalog.streams_after(basin, stream, limit)

    async def require_stream(
        self,
        basin: str,
        stream: str,
        auto_create: AutoCreate | None = None,
        create_config: StreamConfig | None = None,
        *,
        key: EncryptionKey | None = None,
    ) -> None:
        """Fail now as `auto_create`'s operation would if the stream cannot take it (absent,
        being deleted, encrypted and `key` missing or malformed), creating it where the basin
        auto-creates streams for that operation.

        A session checks this before it answers, so a missing stream is an error response
        rather than a session that ends at once.
        """
        sequencer = await self.sequencers.get(basin, stream, auto_create, create_config)
        record_cipher(sequencer.cipher, key)

    async def check_tail(
        self, basin: str, stream: str, *, may_create: bool = True
    ) -> StreamPosition:
        sequencer = await self.sequencers.get(basin, stream, "read" if may_create else None)
        if self.kv.shared:
            await sequencer.sync()
        return sequencer.tail

    async def stream_status(self, basin: str, stream: str) -> StreamStatus:
        """The stream's durable tail row (tail, trim point, last write, fencing token), as
        check-tail sees it, and its cipher; never creates the stream."""
        sequencer = await self.sequencers.get(basin, stream)
        if self.kv.shared:
            await sequencer.sync()
        return StreamStatus(sequencer.durable, sequencer.cipher)

    async def read(
        self,
        basin: str,
        stream: str,
        start: ReadStart,
        limits: ReadLimits,
        create_config: StreamConfig | None = None,
        *,
        may_create: bool = True,
        key: EncryptionKey | None = None,
    ) -> ReadOutput:
        """A unary read: one batch of at most 1000 records and 1 MiB."""
        validate_read(start, limits)
        sequencer = await self.sequencers.get(
            basin, stream, "read" if may_create else None, create_config
        )
        cipher = record_cipher(sequencer.cipher, key)
        if self.kv.shared:
            await sequencer.sync()
        output = await self.reader.read_unary(sequencer, start, limits)
        if cipher is None:
            return output
        return _opened(output, cipher, stream_identity(basin, stream))

    async def read_session(
        self,
        basin: str,
        stream: str,
        start: ReadStart,
        limits: ReadLimits,
        create_config: StreamConfig | None = None,
        *,
        may_create: bool = True,
        key: EncryptionKey | None = None,
    ) -> AsyncGenerator[ReadOutput, None]:
        """A read that catches up and then follows the tail (see `Reader.session`)."""
        validate_read(start, limits)
        sequencer = await self.sequencers.get(
            basin, stream, "read" if may_create else None, create_config
        )
        cipher = record_cipher(sequencer.cipher, key)
        if self.kv.shared:
            await sequencer.sync()
        session = self.reader.session(sequencer, start, limits)
        if cipher is None:
            return session
        return _opened_session(session, cipher, stream_identity(basin, stream))

    # --- metrics -----------------------------------------------------------------------------

    def count_operation(self, operation: str) -> None:
        """An account operation not made through the methods above (access tokens, metrics)
        succeeded."""
        self.usage.operation(ACCOUNT, operation)

    def count_read(self, basin: str, output: ReadOutput) -> None:
        """A unary read answered."""
        self.usage.read(basin, output.records, streaming=False)

    def counted_session(
        self, basin: str, outputs: AsyncGenerator[Output, None]
    ) -> AsyncGenerator[Output, None]:
        """A read session's outputs, each batch counted as it is sent."""
        return self.usage.counted_session(basin, outputs)

    def session_opened(self, kind: str) -> None:
        self.usage.session_opened(kind)

    def session_closed(self, kind: str) -> None:
        self.usage.session_closed(kind)

    def count_error(self, code: str) -> None:
        """A frontend answered an error with this S2 code."""
        self.usage.count_error(code)

    async def account_metrics(self, query: MetricsQuery) -> list[Metric]:
        return await metric_sets.account_metrics(self.usage, query)

    async def basin_metrics(self, basin: str, query: MetricsQuery) -> list[Metric]:
        self.catalog.require_basin(basin)
        return await metric_sets.basin_metrics(self.usage, query, basin)

    async def stream_metrics(self, basin: str, stream: str, query: MetricsQuery) -> list[Metric]:
        self.catalog.require_basin(basin)
        record = self.catalog.require_stream(basin, stream)
        return await metric_sets.stream_metrics(self.usage, query, record.sid)

    def prometheus_collector(self) -> Collector:
        """The server's Prometheus families and the process's (one registry per store)."""
        return self._prometheus

    def _committed(self, jobs: int, metered_bytes: int, seconds: float) -> None:
        # The committer is built before `usage`, which is built on it.
        self.usage.committed(jobs, metered_bytes, seconds)

    def _resync_after_failure(self) -> None:
        # Not the registry's method itself: the committer needs its callback before the
        # registry, which is built on the committer, exists.
        self.sequencers.resync()


def _opened(output: ReadOutput, cipher: RecordCipher, aad: bytes) -> ReadOutput:
    """A read's output with its records opened (sizes and positions are the plaintext's)."""
    records = output.records
    if records is None:
        return output
    payload = open_entries(records.payload, cipher, aad)
    return dataclasses.replace(output, records=dataclasses.replace(records, payload=payload))


async def _opened_session(
    outputs: AsyncGenerator[ReadOutput, None], cipher: RecordCipher, aad: bytes
) -> AsyncGenerator[ReadOutput, None]:
    async with contextlib.aclosing(outputs):
        async for output in outputs:
            yield _opened(output, cipher, aad)
