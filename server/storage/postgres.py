"""The `KeyValueStore` interface on PostgreSQL: the stream log in a database that replicates and
fails over (issue 17's first step; LMDB stays the embedded default).

Each `Table` is a PostgreSQL table `s2s_<name> (key bytea PRIMARY KEY, value bytea)`; `bytea`
compares bytewise, so scans come back in the same key order as LMDB's. A commit is one
transaction: its puts as one `INSERT ... ON CONFLICT DO UPDATE` over arrays per table, its
deletes as one `DELETE ... = ANY(...)` per table, so a group commit of many appends is a
handful of statements and one WAL flush. The store refuses a server that would acknowledge
before the flush (`fsync` off), and sets `synchronous_commit` on for its own sessions, so
`commit` returns only once PostgreSQL made the transaction durable (and, with synchronous
standbys configured, replicated).

A commit whose connection drops may or may not have committed: it raises, like any failed
commit, and the committer's recovery reads the durable state back, so the sequencers resume
from whatever PostgreSQL holds (the appends in it were never acknowledged). Reads run on a
connection of the calling thread's own, opened on first use, in autocommit: each read sees the
latest committed state.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg import sql

from server.startup import StartupError
from server.storage.kv import Conflict, Delete, Expect, Put, StorageFull, Table, Write

log = logging.getLogger(__name__)

T = TypeVar("T")
Connection = psycopg.Connection[tuple[Any, ...]]

CONNECT_TIMEOUT_S = 10
TAILS_CHANNEL = "s2s_tails"
"""Where a shared store announces the tail rows each commit wrote (`watch_tails`)."""
_NOTIFY_KEYS_MAX = 400
"""Tail keys per notification: 16 hex digits each stay under PostgreSQL's 8,000-byte payload."""
_LISTEN_RETRY_S_MAX = 5.0
KEY_LOCK_CLASS = 0x5325
"""The first half of the two-part advisory locks `_check` takes per expected key (a key
space apart from one-part locks such as `WRITER_LOCK`)."""
WRITER_LOCK = 0x5325_0001
"""The advisory lock the one server writing a database holds (several nodes on one database
are not built yet: each would number appends on its own)."""


def table_name(table: Table) -> str:
    return f"s2s_{table.value.decode()}"


class PostgresStore:
    """A stream log in the PostgreSQL database named by a libpq connection string."""

    def __init__(self, conninfo: str, option: str = "--storage", exclusive: bool = True) -> None:
        """`option`: the command-line flag that named the database, for the messages of
        `StartupError`. `exclusive`: hold the database's writer lock, refusing a second
        server. Without, several stores share the database and commits decide each stream's
        tail by their preconditions (`Expect`); the server does not run that way yet (ADR
        0013)."""
        self._conninfo = conninfo
        self._exclusive = exclusive
        self._node = secrets.token_hex(8)
        """Names this store's notifications, so its own are not taken for another node's."""
        try:
            self._writer = self._connect(autocommit=False)
        except psycopg.OperationalError as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else "no answer"
            raise StartupError(
                f"cannot connect to PostgreSQL ({reason}): check the connection string of "
                f"{option} and that the server is running"
            ) from None
        self._check_durability(self._writer)
        if exclusive and not self._lock_writer(self._writer):
            self._writer.close()
            raise DatabaseRefused(
                "another s2s server is writing to this PostgreSQL database: several servers "
                "on one database are not supported yet; stop it or give another database"
            )
        self._lost_writer_lock = False
        self._closed = False
        self._create_tables()
        self._readers: list[Connection] = []
        self._readers_lock = threading.Lock()
        self._local = threading.local()
        self._names = {table: sql.Identifier(table_name(table)) for table in Table}

    def _connect(self, autocommit: bool) -> Connection:
        connection: Connection = psycopg.connect(
            self._conninfo,
            autocommit=autocommit,
            connect_timeout=CONNECT_TIMEOUT_S,
            application_name="s2s",
        )
        # Ours to raise even where the server's default was lowered: an acknowledged append
        # must be durable.
        connection.execute("SET synchronous_commit = on")
        if not autocommit:
            connection.commit()
        return connection

    @staticmethod
    def _check_durability(connection: Connection) -> None:
        row = connection.execute("SHOW fsync").fetchone()
        connection.commit()
        if row is None or row[0] != "on":
            connection.close()
            raise DatabaseRefused(
                "the PostgreSQL server runs with fsync off, so a commit it acknowledges can be "
                "lost: turn fsync on in its configuration"
            )

    @staticmethod
    def _lock_writer(connection: Connection) -> bool:
        """Take the writer's advisory lock for the connection's life; False if another
        connection holds it."""
        row = connection.execute("SELECT pg_try_advisory_lock(%s)", (WRITER_LOCK,)).fetchone()
        connection.commit()
        return bool(row and row[0])

    def _create_tables(self) -> None:
        with self._writer.transaction():
            for table in Table:
                self._writer.execute(
                    sql.SQL(
                        "CREATE TABLE IF NOT EXISTS {} "
                        "(key bytea PRIMARY KEY, value bytea NOT NULL)"
                    ).format(sql.Identifier(table_name(table)))
                )

    # --- writes ------------------------------------------------------------------------------

    def commit(self, writes: Sequence[Write]) -> None:
        if self._lost_writer_lock:
            raise StorageFenced(
                "another s2s server took over this PostgreSQL database while the connection "
                "was lost: this server no longer writes to it; restart it"
            )
        if self._writer.closed or self._writer.broken:
            self._reconnect_writer()
        # The last write of a key wins, as if applied in order: collapse first, then one
        # statement per table and kind. Keys go in sorted order, so two nodes' commits lock
        # the rows they share in the same order and never deadlock.
        expected: dict[tuple[Table, bytes], bytes | None] = {}
        last: dict[tuple[Table, bytes], Put | Delete] = {}
        for write in writes:
            if isinstance(write, Expect):
                expected[(write.table, write.key)] = write.value
            else:
                last[(write.table, write.key)] = write
        puts: dict[Table, tuple[list[bytes], list[bytes]]] = {}
        deletes: dict[Table, list[bytes]] = {}
        for (table, key), write in sorted(last.items(), key=lambda item: item[0][1]):
            if isinstance(write, Put):
                keys, values = puts.setdefault(table, ([], []))
                keys.append(key)
                values.append(write.value)
            else:
                deletes.setdefault(table, []).append(key)
        connection = self._writer
        try:
            with connection.transaction():
                if expected:
                    self._check(connection, expected)
                for table, keys in deletes.items():
                    connection.execute(
                        sql.SQL("DELETE FROM {} WHERE key = ANY(%s)").format(self._names[table]),
                        (keys,),
                    )
                tails = puts.get(Table.TAILS)
                if tails is not None and not self._exclusive:
                    self._announce(connection, tails[0])
                for table, (keys, values) in puts.items():
                    connection.execute(
                        sql.SQL(
                            "INSERT INTO {} (key, value) SELECT * FROM unnest(%s::bytea[], "
                            "%s::bytea[]) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
                        ).format(self._names[table]),
                        (keys, values),
                    )
        except psycopg.errors.DiskFull as error:
            raise StorageFull(
                "the PostgreSQL server's disk is full: its operator must free space; appends "
                "succeed again as soon as there is room, without a restart"
            ) from error
        except psycopg.OperationalError:
            if connection.closed or connection.broken:
                log.error("the connection to PostgreSQL was lost; reconnecting")
                self._reconnect_writer()
            raise

    def _check(
        self, connection: Connection, expected: dict[tuple[Table, bytes], bytes | None]
    ) -> None:
        """Raise `Conflict` unless every expected key holds its value, with those keys locked
        until the transaction ends.

        Row locks cannot hold a key that is absent, so each key is locked by a transaction
        advisory lock on its hash instead, taken in one order by every node; under READ
        COMMITTED the reads that follow the locks see every commit made before them.
        """
        locks = sorted({_key_lock(table, key) for table, key in expected})
        connection.execute(
            "SELECT pg_advisory_xact_lock(%s, lock) FROM unnest(%s::int[]) AS lock",
            (KEY_LOCK_CLASS, locks),
        )
        actual: dict[tuple[Table, bytes], bytes | None] = dict.fromkeys(expected)
        by_table: dict[Table, list[bytes]] = {}
        for table, key in expected:
            by_table.setdefault(table, []).append(key)
        for table, keys in by_table.items():
            rows = connection.execute(
                sql.SQL("SELECT key, value FROM {} WHERE key = ANY(%s)").format(self._names[table]),
                (keys,),
            ).fetchall()
            for key, value in rows:
                actual[(table, bytes(key))] = bytes(value)
        if actual != expected:
            raise Conflict(actual)

    def _announce(self, connection: Connection, tail_keys: list[bytes]) -> None:
        """Tell the nodes watching (`watch_tails`) which tails this commit moves: PostgreSQL
        delivers a notification only if, and once, its transaction commits."""
        for first in range(0, len(tail_keys), _NOTIFY_KEYS_MAX):
            chunk = tail_keys[first : first + _NOTIFY_KEYS_MAX]
            payload = " ".join([self._node, *(key.hex() for key in chunk)])
            connection.execute("SELECT pg_notify(%s, %s)", (TAILS_CHANNEL, payload))

    def watch_tails(self, on_change: Callable[[list[bytes] | None], None]) -> None:
        """Listen for the tails other stores on the database commit, on a thread of its own
        with a connection of its own. After the connection was lost (and on the first
        connect), `on_change(None)`: notifications sent meanwhile are gone."""
        if self._exclusive:
            return  # no other store writes this database
        thread = threading.Thread(
            target=self._listen, args=(on_change,), name="s2s-tails", daemon=True
        )
        thread.start()

    def _listen(self, on_change: Callable[[list[bytes] | None], None]) -> None:
        retry_s = 0.1
        while not self._closed:
            try:
                connection = self._connect(autocommit=True)
            except psycopg.OperationalError as error:
                log.error("cannot listen for other nodes' appends: %s", error)
                time.sleep(retry_s)
                retry_s = min(retry_s * 2, _LISTEN_RETRY_S_MAX)
                continue
            retry_s = 0.1
            try:
                connection.execute(sql.SQL("LISTEN {}").format(sql.Identifier(TAILS_CHANNEL)))
                on_change(None)
                while not self._closed:
                    for notify in connection.notifies(timeout=0.5):
                        node, *keys = notify.payload.split(" ")
                        if node != self._node:
                            on_change([bytes.fromhex(key) for key in keys])
            except psycopg.OperationalError as error:
                if not self._closed:
                    log.warning(
                        "lost the connection that listens for other nodes' appends: %s", error
                    )
            finally:
                connection.close()

    def _reconnect_writer(self) -> None:
        """Replace the writer's connection. The advisory lock went with the old one: if
        another server took it meanwhile, its view of every tail is newer than ours, so this
        one must never write again."""
        try:
            connection = self._connect(autocommit=False)
        except psycopg.OperationalError as error:
            # The next commit tries again.
            log.error("cannot reconnect to PostgreSQL: %s", error)
            return
        if self._exclusive and not self._lock_writer(connection):
            log.error("another s2s server writes to this PostgreSQL database now; stopping writes")
            self._lost_writer_lock = True
        self._writer = connection

    # --- reads -------------------------------------------------------------------------------

    def _reader(self) -> Connection:
        if self._closed:
            raise StorageClosed("the stream log is closed")
        connection: Connection | None = getattr(self._local, "connection", None)
        if connection is None or connection.closed or connection.broken:
            connection = self._connect(autocommit=True)
            self._local.connection = connection
            with self._readers_lock:
                if self._closed:  # closed while this one was connecting
                    connection.close()
                    raise StorageClosed("the stream log is closed")
                self._readers = [c for c in self._readers if not c.closed]
                self._readers.append(connection)
        return connection

    def _read(
        self, query: sql.SQL | sql.Composed, params: tuple[object, ...]
    ) -> list[tuple[Any, ...]]:
        """Run a read on this thread's connection; one that was cut (a failover, a restart of
        the database) is replaced and the read tried once more."""
        try:
            return self._reader().execute(query, params).fetchall()
        except psycopg.OperationalError:
            connection = self._local.connection
            if self._closed or not (connection.closed or connection.broken):
                raise
            log.warning("a read connection to PostgreSQL was lost; reconnecting")
            self._local.connection = None
            return self._reader().execute(query, params).fetchall()

    def get(self, table: Table, key: bytes) -> bytes | None:
        rows = self._read(
            sql.SQL("SELECT value FROM {} WHERE key = %s").format(self._names[table]), (key,)
        )
        return bytes(rows[0][0]) if rows else None

    def scan(
        self, table: Table, start: bytes, end: bytes | None, limit: int
    ) -> list[tuple[bytes, bytes]]:
        return [(bytes(key), bytes(value)) for key, value in self._rows(table, start, end, limit)]

    def scan_map(
        self,
        table: Table,
        start: bytes,
        end: bytes | None,
        limit: int,
        project: Callable[[memoryview], T],
    ) -> list[tuple[bytes, T]]:
        return [
            (bytes(key), project(memoryview(value)))
            for key, value in self._rows(table, start, end, limit)
        ]

    def _rows(
        self, table: Table, start: bytes, end: bytes | None, limit: int
    ) -> list[tuple[bytes, bytes]]:
        if limit <= 0:
            return []
        # LIMIT takes a bigint; callers pass sys.maxsize for "all".
        limit = min(limit, 2**63 - 1)
        name = self._names[table]
        if end is None:
            query = sql.SQL("SELECT key, value FROM {} WHERE key >= %s ORDER BY key LIMIT %s")
            params: tuple[object, ...] = (start, limit)
        else:
            query = sql.SQL(
                "SELECT key, value FROM {} WHERE key >= %s AND key < %s ORDER BY key LIMIT %s"
            )
            params = (start, end, limit)
        return [(row[0], row[1]) for row in self._read(query.format(name), params)]

    def size_bytes(self) -> int:
        rows = self._read(
            sql.SQL(
                "SELECT sum(pg_total_relation_size(name::regclass)) FROM unnest(%s::text[]) AS name"
            ),
            ([table_name(table) for table in Table],),
        )
        return int(rows[0][0] or 0)

    def close(self) -> None:
        """Close every connection; reads still running end with `StorageClosed` or their
        connection's error, and none opens a new one."""
        with self._readers_lock:
            self._closed = True
            readers, self._readers = self._readers, []
        self._writer.close()
        for connection in readers:
            connection.close()


def _key_lock(table: Table, key: bytes) -> int:
    """A key's advisory lock: a signed 32-bit hash of its table and key (a collision only
    makes two keys' commits take turns)."""
    value = zlib.crc32(key, zlib.crc32(table.value))
    return value - (1 << 32) if value >= 1 << 31 else value


class DatabaseRefused(StartupError):
    """The database answered, but this store must not use it (another server writes it, or
    its commits are not durable); nothing was written."""


class StorageClosed(Exception):
    """A read after the store was closed (a background task still finishing)."""


class StorageFenced(Exception):
    """Another server writes the database now; this one must not."""
