"""`KvStore`: a key-value store kept in a stream, as a dict (docs/adr/0015-kv-store.md).

store = await client.get_kv_store("connector-state")
store["cursor"] = "0/16B3748"
await store.commit()        # one atomic, durable append; KvConflict if another commit won

Reads and writes of the dict are local: writes wait in `pending` until `commit`, which
appends them as one batch with `match_seq_num` = the store's revision (the stream position
its state was loaded at). If another commit landed since, nothing is applied and `KvConflict`
is raised; `reload()` and make the changes again. Records that change nothing (compaction's
snapshots, trims) do not make a conflict: the commit is tried again on the new position, for up
to a minute (`s2s/kv_retry.py`). A commit that failed with `unavailable` (the connection lost
before its answer) may have landed: the pending changes are kept, and `commit()` again either
lands them or, if the first one had, raises `KvConflict`; it never applies them twice. Loading
reads the stream from its first record: compaction keeps that to a snapshot of the live
entries and the changes since.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, MutableMapping
from typing import Protocol

from client._errors import KvConflict, ReadUnwrittenError, S2SError, SeqNumMismatchError
from s2s.config import BasinConfig, StreamConfig
from s2s.errors import S2Error
from s2s.kv_format import (
    COMPACTION_MIN_BYTES,
    DEFAULT_BASIN,
    STREAM_CONFIG,
    Change,
    Entry,
    append_batches,
    commit_input,
    compaction_worth,
    key_bytes,
    snapshot_bytes_estimate,
    snapshot_records,
    store_stream,
    value_bytes,
)
from s2s.kv_retry import CommitRetry
from s2s.kv_state import KeyHistory, KvChange, KvState
from s2s.records import metered_size, trim_record
from s2s.v1 import records_pb2 as pb

log = logging.getLogger(__name__)

REPR_ENTRIES_MAX = 50
"""`repr` (and `print`) shows this many entries, then how many more there are."""
REPR_VALUE_CHARS_MAX = 100
"""... and this much of each value."""


class KvStream(Protocol):
    """The calls of a `Stream` a store makes."""

    async def check_tail(self) -> pb.StreamPosition: ...

    async def append(
        self,
        records: Iterable[pb.AppendRecord | bytes] | pb.AppendInput,
        match_seq_num: int | None = None,
        fencing_token: str | None = None,
    ) -> pb.AppendAck: ...

    async def read(self, *, seq_num: int | None = None, clamp: bool = False) -> pb.ReadBatch: ...

    def read_session(
        self, *, heartbeats: bool = False, seq_num: int | None = None, clamp: bool = False
    ) -> AsyncIterator[pb.ReadBatch]: ...


class KvClient(Protocol):
    """The calls of an `S2SClient` a store makes."""

    async def create_basin(
        self, name: str, config: BasinConfig | None = None, request_token: str | None = None
    ) -> object: ...

    async def create_stream(
        self,
        basin: str,
        name: str,
        config: StreamConfig | None = None,
        request_token: str | None = None,
    ) -> object: ...

    def stream(
        self, basin: str, name: str, *, encryption_key: bytes | str | None = None
    ) -> KvStream: ...


class KvStore(MutableMapping[str, str]):
    """A store's entries (str keys and values) as of `revision`, with pending changes on top.

    Keys are 1-1024 bytes of UTF-8 without NUL; values are text of up to about 1 MiB. A commit
    holds at most 1000 changes and 1 MiB of keys and values (one append). Iteration is in key
    order. Not safe to use from several tasks at once (give each its own store).
    """

    def __init__(
        self,
        client: KvClient,
        name: str,
        basin: str = DEFAULT_BASIN,
        encryption_key: bytes | str | None = None,
    ) -> None:
        """`encryption_key`: the key of a store in an encrypted basin, sent with every read
        and append of its stream (docs/adr/0007); such a store compacts itself."""
        self.name = name
        self.basin = basin
        try:
            self.stream_name = store_stream(name)
        except S2Error as error:
            raise ValueError(error.message) from None
        self._client = client
        self._stream = client.stream(basin, self.stream_name, encryption_key=encryption_key)
        self._state = KvState()
        self._pending: dict[str, str | None] = {}
        self.compacts_itself = encryption_key is not None
        """Whether a commit compacts the store once that is due (`compact`): the server
        cannot read an encrypted store's records, so it never compacts one."""
        self._stored_bytes = 0
        """Metered bytes of the stream from its trim point up to `revision`, as folded;
        counted only where the store compacts itself."""

    @classmethod
    async def open(
        cls,
        client: KvClient,
        name: str,
        basin: str = DEFAULT_BASIN,
        encryption_key: bytes | str | None = None,
    ) -> KvStore:
        store = cls(client, name, basin, encryption_key)
        await store.reload()
        return store

    @property
    def revision(self) -> int:
        """The stream position the committed state is at: the revision a commit builds on."""
        return self._state.position

    def entry(self, key: str) -> Entry:
        """`key`'s committed value, with the sequence number and timestamp of the change that
        wrote it (pending changes aside); `KeyError` if it has none."""
        return self._state.entries[key]

    @property
    def pending(self) -> list[Change]:
        """The changes `commit` will append, in the order they were made (one per key)."""
        return [
            Change("put", key, value) if value is not None else Change("delete", key)
            for key, value in self._pending.items()
        ]

    def discard(self) -> None:
        """Drop the pending changes."""
        self._pending.clear()

    async def reload(self) -> None:
        """Bring the committed state up to the stream's tail, and drop the pending changes."""
        await self._catch_up()
        self._pending.clear()

    async def commit(self) -> int:
        """Append the pending changes as one batch, atomically and durably; returns the new
        revision. `KvConflict` if changes were committed since this store's revision."""
        if not self._pending:
            return self.revision
        changes = self.pending
        try:
            message = commit_input(changes, self.revision)
        except S2Error as error:
            raise S2SError(error.code, error.message) from None
        retry = CommitRetry()
        created = False
        while True:
            try:
                ack = await self._stream.append(message)
            except SeqNumMismatchError:
                revision = self.revision
                more = await retry.wait()
                await self._catch_up()
                if self._state.changed_through > revision:
                    raise KvConflict(
                        f"store {self.name!r} changed since revision {revision} (it is at "
                        f"{self.revision} now): reload() and make the changes again",
                        self.revision,
                    ) from None
                if not more:
                    raise KvConflict(
                        f"store {self.name!r}: compaction's records kept landing before this "
                        f"commit for {retry.window_s:.0f} s ({retry.attempts} attempts): "
                        "try again",
                        self.revision,
                    ) from None
                # Only records that change nothing landed (a compaction's): build on them.
                message.match_seq_num = self.revision
                continue
            except S2SError as error:
                missing = error.code in ("stream_not_found", "basin_not_found")
                if created or not missing or self.revision != 0:
                    raise
                await self._create()
                created = True
                continue
            self._committed(message, ack)
            revision = self.revision
            if self.compacts_itself and self._compaction_due():
                try:
                    await self.compact()
                except S2SError as error:  # the commit stands; the next one tries again
                    log.warning("kv store %r not compacted: %s", self.name, error)
            return revision

    def _committed(self, message: pb.AppendInput, ack: pb.AppendAck) -> None:
        """Fold the commit's own records, which landed right at the store's revision."""
        start = ack.start.seq_num
        assert start == self._state.position, "match_seq_num held"
        if self.compacts_itself:
            self._stored_bytes += sum(map(metered_size, message.records))
        self._state.fold(
            pb.SequencedRecord(
                seq_num=start + offset,
                timestamp=ack.end.timestamp,
                headers=record.headers,
                body=record.body,
            )
            for offset, record in enumerate(message.records)
        )
        self._pending.clear()

    async def _create(self) -> None:
        """The store's stream (and, for the default basin, the basin): made on first commit."""
        token = uuid.uuid4().hex
        if self.basin == DEFAULT_BASIN:
            await _unless_exists(self._client.create_basin(self.basin, request_token=token))
        await _unless_exists(
            self._client.create_stream(
                self.basin, self.stream_name, STREAM_CONFIG, request_token=token
            )
        )

    async def _catch_up(self) -> None:
        """Fold every record from the state's position up to the stream's tail (as it is
        when the last read finds nothing more: a read that met a compaction's trim must go on
        past the tail it first saw, to the snapshot after the trim)."""
        state = self._state
        await self._read_to_tail(state.position, self._fold)
        state.check_whole()

    def _fold(self, records: list[pb.SequencedRecord]) -> None:
        if self.compacts_itself:  # the server counts the others' (compaction.py)
            self._stored_bytes += sum(map(metered_size, records))
        self._state.fold(records)

    def _compaction_due(self) -> bool:
        state = self._state
        snapshot_bytes = snapshot_bytes_estimate(state.live_chars, len(state.entries))
        return compaction_worth(self._stored_bytes, snapshot_bytes, COMPACTION_MIN_BYTES)

    async def compact(self) -> int:
        """Write a snapshot of the store's entries as of its tail T, then trim its stream to T,
        as the server's compaction does (docs/adr/0015-kv-store.md): the stream then holds the
        snapshot and what came after, and opening the store reads only that. Commits may land
        between the snapshot's parts. Returns T.

        The server compacts every store but those of encrypted basins, whose records it cannot
        read: for those, each commit calls this once the stream holds about twice what a
        snapshot would plus 1 MiB (`compacts_itself`)."""
        await self._catch_up()
        state = self._state
        if state.foreign_records:
            raise S2SError(
                "invalid",
                f"store {self.name!r} holds {state.foreign_records} records that are not the "
                "store's, which a compaction would trim: it is not compacted",
            )
        as_of = state.position
        records = snapshot_records(state.entries.items(), as_of, state.changed_through)
        for batch in append_batches(records):
            await self._stream.append(batch)
        # Only once every part is durable: a reader may start at `as_of` from now on.
        await self._stream.append([trim_record(as_of)])
        self._stored_bytes = 0  # the parts are counted as the next catch-up reads them
        return as_of

    async def _read_to_tail(
        self, position: int, fold: Callable[[list[pb.SequencedRecord]], object]
    ) -> None:
        """Hand the records from `position` to the tail to `fold`, a read at a time. Each
        read returns up to 1000 records, an append's worth or more: it reaches the tail."""
        start = position
        while True:
            try:
                batch = await self._stream.read(seq_num=position, clamp=True)
            except ReadUnwrittenError as error:
                if error.tail.seq_num < start:
                    raise S2SError(
                        "kv_history_lost",
                        f"store {self.name!r} was deleted and made again since it was loaded "
                        f"(its stream ends at {error.tail.seq_num}, before revision {start}): "
                        "open it again",
                    ) from None
                return
            except S2SError as error:
                missing = error.code in ("stream_not_found", "basin_not_found")
                if missing and start == 0:
                    return  # nothing committed yet
                raise
            if not batch.records:
                return
            fold(list(batch.records))
            position = batch.records[-1].seq_num + 1

    async def history(self, key: str, limit: int | None = None) -> list[KvChange]:
        """`key`'s changes still in the stream, oldest first (the latest `limit`): each put and
        delete since the last compaction, and the value compaction kept before them."""
        history = KeyHistory(key)
        await self._read_to_tail(0, history.fold)
        return history.changes(limit)

    async def watch(self) -> AsyncIterator[KvChange]:
        """Changes committed after `revision`, as they land, forever (until the caller stops).

        The store itself does not change: `reload()` to take them in. A watcher that fell
        behind a compaction is told the values that changed meanwhile and the keys deleted."""
        state = KvState(watching=True)
        state.entries = dict(self._state.entries)
        state.position = self._state.position
        for attempt in range(2):
            session = self._stream.read_session(seq_num=state.position, clamp=True)
            try:
                async for batch in session:
                    for change in state.fold(batch.records):
                        yield change
                return
            except S2SError as error:
                missing = error.code in ("stream_not_found", "basin_not_found")
                if attempt or not missing or state.position != 0:
                    raise
            finally:
                await session.aclose()  # type: ignore[attr-defined]
            await self._create()  # nothing committed yet: a read session needs the stream

    # --- the dict ------------------------------------------------------------------------

    def __getitem__(self, key: str) -> str:
        if key in self._pending:
            value = self._pending[key]
            if value is None:
                raise KeyError(key)
            return value
        return self._state.entries[key].value

    def __setitem__(self, key: str, value: str) -> None:
        _check(key_bytes, key)
        _check(value_bytes, value)
        self._pending.pop(key, None)  # the latest change of a key goes last
        self._pending[key] = value

    def __delitem__(self, key: str) -> None:
        if key not in self:
            raise KeyError(key)
        self._pending.pop(key, None)
        self._pending[key] = None

    def __contains__(self, key: object) -> bool:
        if key in self._pending:
            return self._pending[key] is not None
        return key in self._state.entries

    def __len__(self) -> int:
        count = len(self._state.entries)
        for key, value in self._pending.items():
            committed = key in self._state.entries
            count += (value is not None) - committed
        return count

    def __iter__(self) -> Iterator[str]:
        keys = set(self._state.entries)
        for key, value in self._pending.items():
            if value is None:
                keys.discard(key)
            else:
                keys.add(key)
        return iter(sorted(keys))

    def __repr__(self) -> str:
        shown: dict[str, str] = {}
        for key in self:
            if len(shown) == REPR_ENTRIES_MAX:
                break
            value = self[key]
            if len(value) > REPR_VALUE_CHARS_MAX:
                value = f"{value[:REPR_VALUE_CHARS_MAX]}... ({len(value)} characters)"
            shown[key] = value
        more = len(self) - len(shown)
        entries = repr(shown)
        if more:
            entries = f"{entries[:-1]}, ... and {more} more}}"
        pending = f", {len(self._pending)} pending" if self._pending else ""
        return f"KvStore({self.basin}/{self.name}, revision {self.revision}{pending}: {entries})"


async def _unless_exists(creation: Awaitable[object]) -> None:
    try:
        await creation
    except S2SError as error:
        if error.code != "resource_already_exists":
            raise


def _check(validate: Callable[[object], bytes], value: object) -> None:
    """`key_bytes` or `value_bytes` with Python's exceptions: `TypeError` for a value that is
    not a string, `ValueError` for one the store cannot hold."""
    if not isinstance(value, str):
        raise TypeError(f"keys and values are strings, not {type(value).__name__}")
    try:
        validate(value)
    except S2Error as error:
        raise ValueError(error.message) from None
