"""The one interface every storage write, fsync and read goes through, and its LMDB implementation.

`KeyValueStore.commit` applies a list of puts and deletes atomically and returns only once they
are durable (fsync'd); nothing else writes. Reads see only committed data. Tests wrap this
interface to fail the Nth commit or stop the process between any two calls; see
docs/adr/0001-storage.md for why LMDB sits behind it.

A commit whose meta-page write fails leaves LMDB's environment unusable (`MDB_PANIC`: every
later transaction, reads included, fails). `LmdbStore` then closes and reopens it on the same
path before reporting the failure, so the committer's recovery resyncs from the durable state
and the next commit can succeed without a restart.
"""

from __future__ import annotations

import enum
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol, TypeVar

import lmdb

from s2s.errors import S2Error
from server.storage.reopen_gate import ReopenGate

log = logging.getLogger(__name__)

T = TypeVar("T")


class Table(enum.Enum):
    """Named key spaces. Values are LMDB database names: they must stay stable."""

    BASINS = b"basins"
    STREAMS = b"streams"
    TAILS = b"tails"
    BATCHES = b"batches"
    TIMESTAMPS = b"timestamps"
    SYSTEM = b"system"
    ACCESS_TOKENS = b"access_tokens"
    USAGE = b"usage"
    PRODUCERS = b"producers"


class Put(NamedTuple):
    """Named tuples, not frozen dataclasses: every append makes three writes, and a frozen
    dataclass takes twice as long to build (~0.8 us against ~0.4 here)."""

    table: Table
    key: bytes
    value: bytes


class Delete(NamedTuple):
    table: Table
    key: bytes


class Expect(NamedTuple):
    """A precondition of the commit it is in: `key` holds `value` (None: is absent) when the
    commit starts. Several s2s nodes sharing one store decide a stream's tail this way: each
    append expects the tail its node numbered it from (docs/adr/0013-several-nodes.md)."""

    table: Table
    key: bytes
    value: bytes | None


Write = Put | Delete | Expect


class Changed(NamedTuple):
    """Keys of one table that another process sharing the store committed (puts or deletes)."""

    table: Table
    keys: list[bytes]


WATCHED_TABLES = frozenset({Table.TAILS, Table.STREAMS, Table.BASINS, Table.ACCESS_TOKENS})
"""The tables whose changes a shared store announces: what each node holds in memory (a
stream's tail, its config and lifecycle, a basin's lifecycle, the access tokens)."""


class Conflict(Exception):
    """A commit's preconditions did not hold: nothing of it was applied. `actual` has what
    each expected key held instead (None: absent), for the committer to tell which of the
    commit's jobs can still go in."""

    def __init__(self, actual: dict[tuple[Table, bytes], bytes | None]) -> None:
        super().__init__(f"{len(actual)} expected keys held other values")
        self.actual = actual


class KeyValueStore(Protocol):
    def commit(self, writes: Sequence[Write]) -> None:
        """Apply all puts and deletes atomically; return only after they are durable.

        Every `Expect` comes before the first put or delete. If one does not hold, nothing is
        applied and `Conflict` is raised."""

    def get(self, table: Table, key: bytes) -> bytes | None: ...

    def scan(
        self, table: Table, start: bytes, end: bytes | None, limit: int
    ) -> list[tuple[bytes, bytes]]:
        """Up to `limit` items with start <= key < end (no upper bound if None), in key order."""

    def scan_map(
        self,
        table: Table,
        start: bytes,
        end: bytes | None,
        limit: int,
        project: Callable[[memoryview], T],
        head_bytes: int | None = None,
    ) -> list[tuple[bytes, T]]:
        """Like `scan`, but returns `project(value)`; the view is valid only inside `project`,
        so large values are inspected without being copied. `head_bytes`: `project` reads no
        further than this into a value, so a store may send only that much of it (a database
        need not ship a whole batch to have its header read)."""

    def size_bytes(self) -> int:
        """Bytes up to the highest page in use; pages freed below it are reused first."""

    def watch_changes(self, on_change: Callable[[Changed | None], None]) -> None:
        """Call `on_change` (on a thread of the store's) with the keys of `WATCHED_TABLES`
        other processes sharing the store committed, or None when some may have been missed
        (anything may have changed). A store only one process writes never calls it."""

    def reclaim(self) -> None:
        """Make the space of deleted rows take new writes now (after the jobs deleted
        records). Blocking: on PostgreSQL a VACUUM of the tables deletions churn."""

    @property
    def shared(self) -> bool:
        """Whether other processes (nodes) write the store too: then what a process holds in
        memory may be behind it, and answers that must include every acknowledged write
        read the store first (`StreamSequencer.sync`)."""

    def leads(self, role: str) -> bool:
        """Whether this process runs `role`'s work (such as the background jobs) now: of the
        processes sharing the store, one at a time does. A store only one process writes
        always does. Blocking: on a shared store it is a round trip."""

    def close(self) -> None: ...


MAP_SIZE_BYTES_DEFAULT = 1 << 40
"""LMDB's address-space reservation; the file grows only as pages are used."""


DISK_HEADROOM_BYTES = 1 << 20
"""Room a commit needs on disk beyond its values: the B-tree pages it rewrites and new branch
pages (a few per table it touches). A failed commit with less than its values plus this left
free on the filesystem is taken to have failed for want of space."""


REOPEN_WAIT_S = 5.0
"""How long a read that met a panicked environment waits for the writer to reopen it."""


class StorageFull(Exception):
    """A commit needed more space than the store may use, or than the disk had; nothing of it
    was applied, and the same commit can succeed once space is freed."""


class StorageUnavailable(S2Error):
    """The store cannot be reached now (a database failing over, restarting, or cut off by the
    network): a read or a commit failed, and the same one can succeed once it is back, without
    a restart. A commit that raises it may have taken effect (its outcome could not be learned
    in time), so its appends are `unavailable` (outcome unknown), never `storage` (no effect;
    docs/adr/0010)."""

    def __init__(self, message: str) -> None:
        super().__init__("unavailable", message)


def _values_bytes(writes: Sequence[Write]) -> int:
    return sum(len(write.value) for write in writes if isinstance(write, Put))


class LmdbStore:
    """LMDB with synchronous commits: each commit fsyncs its data pages, then its meta page.

    LMDB never overwrites live pages (copy-on-write B+tree), so a process killed at any point
    reopens at the last committed transaction: no partial commit is ever visible. Pages freed by
    deletes are reused by later commits, so trimmed and expired data frees its space.
    """

    def __init__(self, path: str, map_size_bytes: int = MAP_SIZE_BYTES_DEFAULT) -> None:
        os.makedirs(path, exist_ok=True)
        self._path = path
        self._map_size_bytes = map_size_bytes
        self._gate = ReopenGate()
        self._open()
        # Set while a panicked environment still has to be reopened (a reopen that failed is
        # tried again by the next commit).
        self._must_reopen = False

    def _open(self) -> None:
        # These flags are the durability guarantee of docs/adr/0001-storage.md ("What LMDB
        # guarantees"); tests/test_lmdb_flags.py reads them back.
        env = lmdb.open(
            self._path,
            map_size=self._map_size_bytes,
            max_dbs=len(Table),
            sync=True,
            metasync=True,
            map_async=False,
            writemap=False,
            max_readers=256,
        )
        # A killed process leaves its reader slots behind; clear them so they pin no pages.
        env.reader_check()
        self._env = env
        self._dbs = {table: env.open_db(table.value) for table in Table}

    def env_flags(self) -> dict[str, bool]:
        """The open environment's flags, as LMDB reports them."""
        return self._read(lambda: dict(self._env.flags()))

    def commit(self, writes: Sequence[Write]) -> None:
        if self._must_reopen:
            self._reopen()
        dbs = self._dbs
        try:
            with self._env.begin(write=True) as txn:
                # Expects come first, so each reads the value the commit started from.
                expected: dict[tuple[Table, bytes], bytes | None] = {}
                mismatched = False
                for write in writes:
                    if isinstance(write, Put):
                        txn.put(write.key, write.value, db=dbs[write.table])
                    elif isinstance(write, Delete):
                        txn.delete(write.key, db=dbs[write.table])
                    else:
                        actual = txn.get(write.key, db=dbs[write.table])
                        expected[(write.table, write.key)] = actual
                        mismatched = mismatched or actual != write.value
                if mismatched:  # raised inside the transaction, which aborts it
                    raise Conflict(expected)
        except lmdb.MapFullError:
            limit_gib = self._env.info()["map_size"] / (1 << 30)
            raise StorageFull(
                f"the stream log is full: it reached its limit of {limit_gib:g} GiB; trim or "
                "delete streams, or restart the server with a larger --max-storage-gib"
            ) from None
        except lmdb.Error as error:
            if self._panicked():
                log.error("storage environment failed (%s); reopening it", error)
                self._reopen()
            # LMDB reports a write cut short by a full disk as EIO (its page flush turns a
            # short write into EIO), so the filesystem's free space tells the two apart.
            free_bytes = self._free_disk_bytes()
            if free_bytes < _values_bytes(writes) + DISK_HEADROOM_BYTES:
                raise StorageFull(
                    f"the disk holding the stream log is full ({free_bytes / (1 << 20):.1f} MiB "
                    "free): the server's operator must free space on it; appends succeed again "
                    "as soon as there is room, without a restart"
                ) from error
            raise

    def _panicked(self) -> bool:
        """Whether the environment refuses every transaction since a failed commit."""
        try:
            self._env.begin().abort()
        except lmdb.PanicError:
            return True
        return False

    def _reopen(self) -> None:
        """Close the environment and open it again on the same path (as a restart would), with
        no read inside it meanwhile. Runs on the writer thread, the only one that commits."""
        self._must_reopen = True

        def replace() -> None:
            self._env.close()
            self._open()

        self._gate.replace(replace)
        self._must_reopen = False
        log.warning("storage environment reopened")

    def _read(self, read: Callable[[], T]) -> T:
        """Run `read` inside the gate; each time it meets a panicked environment, run it again
        once the writer has reopened it (for up to `REOPEN_WAIT_S` in all: failed commits may
        panic the environment again and again, faster than a slow reader gets back in)."""
        deadline = time.monotonic() + REOPEN_WAIT_S
        while True:
            epoch = self._gate.enter()
            try:
                return read()
            except lmdb.PanicError:
                if time.monotonic() >= deadline:
                    raise
            finally:
                self._gate.leave()
            self._gate.wait_past(epoch, max(0.0, deadline - time.monotonic()))

    def _free_disk_bytes(self) -> int:
        stat = os.statvfs(self._path)
        return stat.f_bavail * stat.f_frsize

    def get(self, table: Table, key: bytes) -> bytes | None:
        return self._read(lambda: self._get(table, key))

    def _get(self, table: Table, key: bytes) -> bytes | None:
        with self._env.begin(db=self._dbs[table]) as txn:
            value = txn.get(key)
            return None if value is None else bytes(value)

    def scan(
        self, table: Table, start: bytes, end: bytes | None, limit: int
    ) -> list[tuple[bytes, bytes]]:
        return self._read(lambda: self._scan(table, start, end, limit))

    def _scan(
        self, table: Table, start: bytes, end: bytes | None, limit: int
    ) -> list[tuple[bytes, bytes]]:
        items: list[tuple[bytes, bytes]] = []
        with self._env.begin(db=self._dbs[table]) as txn:
            cursor = txn.cursor()
            if not (cursor.set_range(start) if start else cursor.first()):
                return items
            for key, value in cursor:
                if (end is not None and key >= end) or len(items) >= limit:
                    break
                items.append((key, value))
        return items

    def scan_map(
        self,
        table: Table,
        start: bytes,
        end: bytes | None,
        limit: int,
        project: Callable[[memoryview], T],
        head_bytes: int | None = None,
    ) -> list[tuple[bytes, T]]:
        # Values are views of the memory map: nothing is copied, whatever `head_bytes` says.
        return self._read(lambda: self._scan_map(table, start, end, limit, project))

    def _scan_map(
        self,
        table: Table,
        start: bytes,
        end: bytes | None,
        limit: int,
        project: Callable[[memoryview], T],
    ) -> list[tuple[bytes, T]]:
        items: list[tuple[bytes, T]] = []
        with self._env.begin(db=self._dbs[table], buffers=True) as txn:
            cursor = txn.cursor()
            if not (cursor.set_range(start) if start else cursor.first()):
                return items
            for key_view, value in cursor:
                key = bytes(key_view)
                if (end is not None and key >= end) or len(items) >= limit:
                    break
                items.append((key, project(memoryview(value))))
        return items

    def size_bytes(self) -> int:
        return self._read(self._size_bytes)

    def _size_bytes(self) -> int:
        info = self._env.info()
        stat = self._env.stat()
        return int((info["last_pgno"] + 1) * stat["psize"])

    def watch_changes(self, on_change: Callable[[Changed | None], None]) -> None:
        """Nothing to watch: one process owns the environment (the data directory's lock)."""

    def reclaim(self) -> None:
        """Nothing: LMDB reuses freed pages from the second commit after the one that freed
        them (the jobs' `_settle` makes that commit)."""

    @property
    def shared(self) -> bool:
        return False

    def leads(self, role: str) -> bool:
        """Always: one process owns the environment."""
        return True

    def close(self) -> None:
        # Through the gate: a read still running on a worker thread (a background task that
        # was cancelled while its thread read) finishes first; closing under it could crash.
        self._gate.replace(self._env.close)
