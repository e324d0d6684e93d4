"""The control plane: basins and streams, their configs, lifecycles and idempotent creation.

Records live in the BASINS and STREAMS tables as JSON (see server/storage/layout.py). Every
change goes through the group committer, and changes within one basin are serialized by that
basin's lock, so "check, then write" sequences (create if absent, delete if present) are atomic
with respect to each other. Across nodes sharing one store, each such change also expects the
records it checked to be as it read them (`Expect`), and starts over from a fresh read if
another node changed one first (`_changing`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import struct
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Generic, Literal, TypeAlias, TypeVar

from s2s import names
from s2s.config import (
    BasinConfig,
    BasinConfigPatch,
    ResolvedStreamConfig,
    StreamConfig,
    StreamConfigPatch,
    basin_config_from_json,
    basin_config_to_json,
    patch_basin_config,
    patch_stream_config,
    resolve_stream_config,
    stream_config_from_json,
    stream_config_to_json,
)
from s2s.errors import S2Error
from s2s.locations import LOCAL
from server.clock import Clock
from server.storage.committer import CommitConflict, GroupCommitter
from server.storage.kv import Expect, KeyValueStore, Put, Table, Write
from server.storage.layout import (
    DELETING_BASIN_PREFIX,
    DELETING_STREAM_PREFIX,
    NEXT_STREAM_ID_KEY,
    STREAM_KEY_NAME_BYTES_MAX,
    CorruptProducerRow,
    ProducerRow,
    TailRow,
    prefix_end,
    producer_key,
    sid_key,
    stream_key,
    stream_key_prefix,
)

REQUEST_TOKEN_BYTES_MAX = 36

RequestedConfig: TypeAlias = str
"""A create request's config exactly as the request carried it, in its frontend's canonical form
(HTTP: the JSON value with sorted keys; gRPC: the deterministic protobuf encoding in hex).

With a request token it decides whether a create replays an earlier one, so it is the request's
own form, not the config it resolves to: a retry that asks for the same config in other words
(a field given its default value, say) is a different request, and conflicts."""


@dataclass(frozen=True)
class BasinRecord:
    name: str
    config: BasinConfig
    created_at_ms: int
    deleted_at_ms: int | None = None
    creation_digest: str | None = None
    location: str = LOCAL

    @property
    def deleting(self) -> bool:
        return self.deleted_at_ms is not None

    def encode(self) -> bytes:
        return json.dumps(
            {
                "config": basin_config_to_json(self.config),
                "created_at_ms": self.created_at_ms,
                "deleted_at_ms": self.deleted_at_ms,
                "creation_digest": self.creation_digest,
                "location": self.location,
            }
        ).encode()

    @classmethod
    def decode(cls, name: str, data: bytes) -> BasinRecord:
        obj = json.loads(data)
        return cls(
            name=name,
            config=basin_config_from_json(obj["config"]),
            created_at_ms=obj["created_at_ms"],
            deleted_at_ms=obj["deleted_at_ms"],
            creation_digest=obj["creation_digest"],
            location=obj["location"],
        )


@dataclass(frozen=True)
class StreamRecord:
    basin: str
    name: str
    sid: int
    config: ResolvedStreamConfig
    created_at_ms: int
    deleted_at_ms: int | None = None
    creation_digest: str | None = None
    cipher: str | None = None

    @property
    def deleting(self) -> bool:
        return self.deleted_at_ms is not None

    def encode(self) -> bytes:
        return json.dumps(
            {
                "name": self.name,
                "sid": self.sid,
                "config": stream_config_to_json(self.config),
                "created_at_ms": self.created_at_ms,
                "deleted_at_ms": self.deleted_at_ms,
                "creation_digest": self.creation_digest,
                "cipher": self.cipher,
            }
        ).encode()

    @classmethod
    def decode(cls, basin: str, data: bytes) -> StreamRecord:
        obj = json.loads(data)
        partial = stream_config_from_json(obj["config"])
        return cls(
            basin=basin,
            name=obj["name"],
            sid=obj["sid"],
            config=resolve_stream_config(partial, StreamConfig()),
            created_at_ms=obj["created_at_ms"],
            deleted_at_ms=obj["deleted_at_ms"],
            creation_digest=obj["creation_digest"],
            cipher=obj["cipher"],
        )


Record = TypeVar("Record", BasinRecord, StreamRecord)


@dataclass(frozen=True)
class Provisioned(Generic[Record]):
    """Outcome of a create or ensure: what exists now and whether this call changed it."""

    outcome: Literal["created", "updated", "noop"]
    record: Record


def creation_digest(
    request_token: str | None, requested_config: RequestedConfig | None
) -> str | None:
    """Hash of the request token and the requested config: equal digests make a create a replay."""
    if request_token is None:
        return None
    if len(request_token.encode()) > REQUEST_TOKEN_BYTES_MAX:
        raise S2Error(
            "bad_header", f"request token must be at most {REQUEST_TOKEN_BYTES_MAX} bytes"
        )
    material = json.dumps([request_token, requested_config]).encode()
    return hashlib.sha256(material).hexdigest()


CHANGE_ATTEMPTS = 5
"""Tries of a check-then-write change whose records other nodes keep changing first."""

T = TypeVar("T")


class Catalog:
    """Basins and streams: reads from the store, changes through the committer."""

    def __init__(self, kv: KeyValueStore, committer: GroupCommitter, clock: Clock) -> None:
        self._kv = kv
        self._committer = committer
        self._clock = clock
        self._basin_locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self._sid_lock = asyncio.Lock()

    @property
    def shared(self) -> bool:
        """Other nodes change the store too (ADR 0013)."""
        return self._kv.shared

    @asynccontextmanager
    async def basin_lock(self, basin: str) -> AsyncIterator[None]:
        """Serialize control-plane changes within one basin."""
        lock, users = self._basin_locks.get(basin, (asyncio.Lock(), 0))
        self._basin_locks[basin] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._basin_locks[basin]
            if users == 1:
                del self._basin_locks[basin]
            else:
                self._basin_locks[basin] = (lock, users - 1)

    # --- basins ------------------------------------------------------------------------------

    def get_basin(self, name: str) -> BasinRecord | None:
        return self.basin_entry(name)[0]

    def basin_entry(self, name: str) -> tuple[BasinRecord | None, Expect]:
        """The basin's record, and the expectation that it is still so when a change commits."""
        # Names become storage keys: one that could never be created (an empty one is no key
        # at all to LMDB) is `invalid` here, whichever frontend or job passed it.
        names.validate_basin_name(name)
        key = name.encode()
        data = self._kv.get(Table.BASINS, key)
        record = None if data is None else BasinRecord.decode(name, data)
        return record, Expect(Table.BASINS, key, data)

    def require_basin(self, name: str) -> BasinRecord:
        return _found_basin(name, self.get_basin(name))

    def list_basins(
        self, prefix: str = "", start_after: str = "", limit: int | None = None
    ) -> tuple[list[BasinRecord], bool]:
        names.validate_basin_prefix(prefix)
        names.validate_basin_prefix(start_after, "start_after")
        start_after_key = start_after.encode() if start_after else None
        items, has_more = self._list(Table.BASINS, prefix.encode(), start_after_key, limit)
        return [BasinRecord.decode(key.decode(), value) for key, value in items], has_more

    async def create_basin(
        self,
        name: str,
        config: BasinConfig,
        requested_config: RequestedConfig | None = None,
        request_token: str | None = None,
    ) -> Provisioned[BasinRecord]:
        names.validate_basin_name(name)
        digest = creation_digest(request_token, requested_config)

        async def create() -> Provisioned[BasinRecord]:
            existing, expect = self.basin_entry(name)
            if existing is not None:
                if existing.deleting:
                    raise S2Error("basin_deletion_pending", f"basin {name!r} is being deleted")
                if digest is not None and digest == existing.creation_digest:
                    return Provisioned("noop", existing)
                raise S2Error("resource_already_exists", f"basin {name!r} already exists")
            record = BasinRecord(name, config, self._clock.now_ms(), creation_digest=digest)
            await self._committer.commit([expect, Put(Table.BASINS, expect.key, record.encode())])
            return Provisioned("created", record)

        async with self.basin_lock(name):
            return await _changing(create)

    async def create_basin_if_absent(self, name: str) -> BasinRecord:
        """A basin the server itself writes to: race-safe, every concurrent caller succeeds."""
        names.validate_basin_name(name)

        async def create() -> BasinRecord:
            existing, expect = self.basin_entry(name)
            if existing is not None:
                return existing
            record = BasinRecord(name, BasinConfig(), self._clock.now_ms())
            await self._committer.commit([expect, Put(Table.BASINS, expect.key, record.encode())])
            return record

        async with self.basin_lock(name):
            return await _changing(create)

    async def ensure_basin(self, name: str, config: BasinConfig) -> Provisioned[BasinRecord]:
        """Create the basin, or replace its whole config with `config`."""
        names.validate_basin_name(name)

        async def ensure() -> Provisioned[BasinRecord]:
            existing, expect = self.basin_entry(name)
            if existing is None:
                record = BasinRecord(name, config, self._clock.now_ms())
                outcome: Literal["created", "updated"] = "created"
            elif existing.deleting:
                raise S2Error("basin_deletion_pending", f"basin {name!r} is being deleted")
            elif existing.config == config:
                return Provisioned("noop", existing)
            else:
                record = replace(existing, config=config)
                outcome = "updated"
            await self._committer.commit([expect, Put(Table.BASINS, expect.key, record.encode())])
            return Provisioned(outcome, record)

        async with self.basin_lock(name):
            return await _changing(ensure)

    async def reconfigure_basin(self, name: str, patch: BasinConfigPatch) -> BasinRecord:
        async def reconfigure() -> BasinRecord:
            existing, expect = self.basin_entry(name)
            existing = _found_basin(name, existing)
            if existing.deleting:
                raise S2Error("basin_deletion_pending", f"basin {name!r} is being deleted")
            record = replace(existing, config=patch_basin_config(existing.config, patch))
            _check_retention(record.config.default_stream_config)
            await self._committer.commit([expect, Put(Table.BASINS, expect.key, record.encode())])
            return record

        async with self.basin_lock(name):
            return await _changing(reconfigure)

    async def delete_basin(self, name: str) -> BasinRecord:
        """Mark the basin deleting; the deletion job removes its streams, then the basin."""

        async def delete() -> BasinRecord:
            existing, expect = self.basin_entry(name)
            existing = _found_basin(name, existing)
            if existing.deleting:
                return existing
            record = replace(existing, deleted_at_ms=self._clock.now_ms())
            await self._committer.commit(
                [
                    expect,
                    Put(Table.BASINS, expect.key, record.encode()),
                    Put(Table.SYSTEM, DELETING_BASIN_PREFIX + expect.key, b""),
                ]
            )
            return record

        async with self.basin_lock(name):
            return await _changing(delete)

    # --- streams -----------------------------------------------------------------------------

    def get_stream(self, basin: str, name: str) -> StreamRecord | None:
        return self.stream_entry(basin, name)[0]

    def stream_entry(self, basin: str, name: str) -> tuple[StreamRecord | None, Expect]:
        """The stream's record, and the expectation that it is still so when a change commits."""
        names.validate_basin_name(basin)
        names.validate_stream_name(name)
        key = stream_key(basin, name)
        data = self._kv.get(Table.STREAMS, key)
        record = None if data is None else StreamRecord.decode(basin, data)
        return record, Expect(Table.STREAMS, key, data)

    def list_streams(
        self, basin: str, prefix: str = "", start_after: str = "", limit: int | None = None
    ) -> tuple[list[StreamRecord], bool]:
        names.validate_stream_prefix(prefix)
        names.validate_stream_prefix(start_after, "start_after")
        start_after_key = stream_key(basin, start_after) if start_after else None
        scan_prefix = stream_key_prefix(basin) + prefix.encode()[:STREAM_KEY_NAME_BYTES_MAX]
        items, has_more = self._list(Table.STREAMS, scan_prefix, start_after_key, limit)
        records = [StreamRecord.decode(basin, value) for _, value in items]
        return [r for r in records if r.name.startswith(prefix)], has_more

    async def create_stream(
        self,
        basin: str,
        name: str,
        config: StreamConfig,
        requested_config: RequestedConfig | None = None,
        request_token: str | None = None,
    ) -> Provisioned[StreamRecord]:
        names.validate_stream_name(name)
        _check_retention(config)
        digest = creation_digest(request_token, requested_config)

        async def create() -> Provisioned[StreamRecord]:
            basin_record, basin_expect = self._active_basin_entry(basin)
            existing, expect = self.stream_entry(basin, name)
            if existing is not None:
                if existing.deleting:
                    raise S2Error("stream_deletion_pending", f"stream {name!r} is being deleted")
                if digest is not None and digest == existing.creation_digest:
                    return Provisioned("noop", existing)
                raise S2Error("resource_already_exists", f"stream {name!r} already exists")
            record = await self._insert_stream(
                basin_record, name, config, digest, [basin_expect, expect]
            )
            return Provisioned("created", record)

        async with self.basin_lock(basin):
            return await _changing(create)

    async def create_stream_if_absent(
        self, basin: str, name: str, config: StreamConfig
    ) -> StreamRecord:
        """Auto-creation on append or read: race-safe, every concurrent caller succeeds."""
        names.validate_stream_name(name)
        _check_retention(config)

        async def create() -> StreamRecord:
            basin_record, basin_expect = self._active_basin_entry(basin)
            existing, expect = self.stream_entry(basin, name)
            if existing is not None:
                return existing
            return await self._insert_stream(
                basin_record, name, config, None, [basin_expect, expect]
            )

        async with self.basin_lock(basin):
            return await _changing(create)

    async def ensure_stream(
        self, basin: str, name: str, config: StreamConfig
    ) -> Provisioned[StreamRecord]:
        names.validate_stream_name(name)
        _check_retention(config)

        async def ensure() -> Provisioned[StreamRecord]:
            basin_record, basin_expect = self._active_basin_entry(basin)
            existing, expect = self.stream_entry(basin, name)
            if existing is None:
                record = await self._insert_stream(
                    basin_record, name, config, None, [basin_expect, expect]
                )
                return Provisioned("created", record)
            if existing.deleting:
                raise S2Error("stream_deletion_pending", f"stream {name!r} is being deleted")
            desired = resolve_stream_config(config, basin_record.config.default_stream_config)
            if desired == existing.config:
                return Provisioned("noop", existing)
            updated = replace(existing, config=desired)
            await self._committer.commit([basin_expect, expect, _stream_put(updated)])
            return Provisioned("updated", updated)

        async with self.basin_lock(basin):
            return await _changing(ensure)

    async def reconfigure_stream(
        self, basin: str, name: str, patch: StreamConfigPatch
    ) -> StreamRecord:
        async def reconfigure() -> StreamRecord:
            basin_record, basin_expect = self.basin_entry(basin)
            basin_record = _found_basin(basin, basin_record)
            existing, expect = self.stream_entry(basin, name)
            existing = _active_stream(name, existing)
            partial = patch_stream_config(existing.config.as_partial(), patch)
            _check_retention(partial)
            resolved = resolve_stream_config(partial, basin_record.config.default_stream_config)
            updated = replace(existing, config=resolved)
            await self._committer.commit([basin_expect, expect, _stream_put(updated)])
            return updated

        async with self.basin_lock(basin):
            return await _changing(reconfigure)

    async def delete_stream(self, basin: str, name: str) -> StreamRecord:
        """Mark the stream deleting; the deletion job removes its data, then the record."""

        async def delete() -> StreamRecord:
            self.require_basin(basin)
            existing, expect = self.stream_entry(basin, name)
            if existing is None:
                raise S2Error("stream_not_found", f"stream {name!r} does not exist")
            if existing.deleting:
                return existing
            record, writes = _marked_deleting(existing, self._clock.now_ms())
            await self._committer.commit([expect, *writes])
            return record

        async with self.basin_lock(basin):
            return await _changing(delete)

    async def delete_stream_as_checked(
        self, record: StreamRecord, checked: Sequence[Expect]
    ) -> None:
        """Mark the stream deleting, as `delete_stream` does, only if what the caller checked
        (`checked`: its record among it) still holds; if another node changed any of it
        meanwhile, nothing is written and it raises `CommitConflict`. Not tried again: the
        caller decided on what it checked."""
        async with self.basin_lock(record.basin):
            _, writes = _marked_deleting(record, self._clock.now_ms())
            await self._committer.commit([*checked, *writes])

    def require_stream(self, basin: str, name: str) -> StreamRecord:
        """The active stream; 404 if absent, 409 if it is being deleted."""
        return _active_stream(name, self.get_stream(basin, name))

    def every_stream(self) -> list[StreamRecord]:
        """Every stream, being deleted or not, in key order. Blocking: at start-up, off the
        loop."""
        return [
            StreamRecord.decode(key.split(b"\x00", 1)[0].decode(), value)
            for key, value in self._kv.scan(Table.STREAMS, b"", None, sys.maxsize)
        ]

    def every_tail(self) -> dict[int, TailRow]:
        """Every stored tail row, by stream id. Blocking: one scan."""
        return {
            int.from_bytes(key, "big"): TailRow.decode(value)
            for key, value in self._kv.scan(Table.TAILS, b"", None, sys.maxsize)
        }

    def streams_after(self, basin: str, stream: str, limit: int) -> list[StreamRecord]:
        """Up to `limit` streams after (`basin`, `stream`) in key order (from the first with
        both empty), being deleted or not. Blocking."""
        start = stream_key(basin, stream) + b"\x00" if basin else b""
        return [
            StreamRecord.decode(key.split(b"\x00", 1)[0].decode(), value)
            for key, value in self._kv.scan(Table.STREAMS, start, None, limit)
        ]

    def load_tail(self, sid: int) -> TailRow:
        return self.stored_tail(sid) or TailRow()

    def stored_tail(self, sid: int) -> TailRow | None:
        """The stream's tail row; None until its first append."""
        data = self._kv.get(Table.TAILS, sid_key(sid))
        return None if data is None else TailRow.decode(data)

    def stored_producer(self, sid: int, producer_id: str) -> ProducerRow | None:
        """A producer's row of the stream (idempotent appends); None if it has none. Blocking.
        A row this version cannot read is `storage`: its retries cannot be told apart."""
        data = self._kv.get(Table.PRODUCERS, producer_key(sid, producer_id))
        if data is None:
            return None
        try:
            return ProducerRow.decode(data)
        except CorruptProducerRow as error:
            raise S2Error(
                "storage",
                f"the row of producer {producer_id!r} of stream {sid} is damaged: {error}",
            ) from None

    # --- helpers -----------------------------------------------------------------------------

    def _active_basin_entry(self, basin: str) -> tuple[BasinRecord, Expect]:
        record, expect = self.basin_entry(basin)
        record = _found_basin(basin, record)
        if record.deleting:
            raise S2Error("basin_deletion_pending", f"basin {basin!r} is being deleted")
        return record, expect

    async def _insert_stream(
        self,
        basin: BasinRecord,
        name: str,
        config: StreamConfig,
        digest: str | None,
        expects: list[Write],
    ) -> StreamRecord:
        """Create the stream if `expects` (its basin active, its name free) still hold."""
        sid = await _changing(self._allocate_sid)
        record = StreamRecord(
            basin=basin.name,
            name=name,
            sid=sid,
            config=resolve_stream_config(config, basin.config.default_stream_config),
            created_at_ms=self._clock.now_ms(),
            creation_digest=digest,
            cipher=basin.config.stream_cipher,
        )
        await self._committer.commit([*expects, _stream_put(record)])
        return record

    async def _allocate_sid(self) -> int:
        """Next stream id; ids are never reused, so a dead stream's leftovers never alias (an
        id allocated for a creation that then conflicts is skipped, never given twice)."""
        async with self._sid_lock:
            data = self._kv.get(Table.SYSTEM, NEXT_STREAM_ID_KEY)
            sid = 1 if data is None else struct.unpack("<Q", data)[0]
            await self._committer.commit(
                [
                    Expect(Table.SYSTEM, NEXT_STREAM_ID_KEY, data),
                    Put(Table.SYSTEM, NEXT_STREAM_ID_KEY, struct.pack("<Q", sid + 1)),
                ]
            )
            return int(sid)

    def _list(
        self, table: Table, prefix: bytes, start_after_key: bytes | None, limit: int | None
    ) -> tuple[list[tuple[bytes, bytes]], bool]:
        count = names.clamp_list_limit(limit)
        start = prefix
        if start_after_key is not None:
            start = max(start, start_after_key + b"\x00")
        items = self._kv.scan(table, start, prefix_end(prefix), count + 1)
        return items[:count], len(items) > count


def _check_retention(config: StreamConfig) -> None:
    if config.retention == 0:
        raise S2Error("invalid", "retention_policy.age must be greater than 0")


async def _changing(change: Callable[[], Awaitable[T]]) -> T:
    """Run a check-then-write change again from a fresh read while another node changed a
    record it checked first (`CommitConflict`)."""
    for _ in range(CHANGE_ATTEMPTS - 1):
        try:
            return await change()
        except CommitConflict:
            continue
    return await change()


def _found_basin(name: str, record: BasinRecord | None) -> BasinRecord:
    if record is None:
        raise S2Error("basin_not_found", f"basin {name!r} does not exist")
    return record


def _active_stream(name: str, record: StreamRecord | None) -> StreamRecord:
    """The active stream; 404 if absent, 409 if it is being deleted."""
    if record is None:
        raise S2Error("stream_not_found", f"stream {name!r} does not exist")
    if record.deleting:
        raise S2Error("stream_deletion_pending", f"stream {name!r} is being deleted")
    return record


def _stream_put(record: StreamRecord) -> Put:
    return Put(Table.STREAMS, stream_key(record.basin, record.name), record.encode())


def _marked_deleting(record: StreamRecord, now_ms: int) -> tuple[StreamRecord, list[Write]]:
    """The record marked deleting, and the writes that store it and the deletion job's marker."""
    deleted = replace(record, deleted_at_ms=now_ms)
    marker = DELETING_STREAM_PREFIX + stream_key(record.basin, record.name)
    return deleted, [_stream_put(deleted), Put(Table.SYSTEM, marker, sid_key(record.sid))]
