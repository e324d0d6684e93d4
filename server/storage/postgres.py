"""The `KeyValueStore` interface on PostgreSQL: the stream log in a database that replicates and
fails over (issue 17's first step; LMDB stays the embedded default).

Each `Table` is a PostgreSQL table `s2s_<name> (key bytea PRIMARY KEY, value bytea)`; `bytea`
compares bytewise, so scans come back in the same key order as LMDB's. A commit is one
statement (`_statement`): its preconditions, its deletes and puts per table, its notifications
and its token are parts of one `WITH`, sent in binary and run in autocommit, so a group commit
of many appends is one round trip and one WAL flush (where other nodes write too, an advisory
lock per expected key is taken just before it, in the same round trip). The store refuses a
server that would acknowledge before the flush (`fsync` off), and sets `synchronous_commit` on
for its own sessions, so `commit` returns only once PostgreSQL made the transaction durable
(and, with synchronous standbys configured, replicated).

A lost connection (the primary killed and a standby promoted, a restart, a network fault):

- Found lost when a commit starts, the connection is replaced, with one attempt: while the
  database cannot be reached, each commit fails at once with `StorageUnavailable` (503),
  having written nothing.
- Lost while a commit's statement was sent or answered, PostgreSQL may have committed it or
  not: failed, a commit that did land would have its appends answered as failed although
  they are in their streams, and perhaps not yet on the synchronous standby. So the commit is
  not reported until its outcome is known: each statement also writes a random token to the
  store's row of `s2s_last_commit`, and the store reconnects (for up to `OUTCOME_WAIT_S`,
  with backoff; a multi-host conninfo with `target_session_attrs=read-write` finds the
  promoted standby), retakes the writer's lock if it holds one, and rewrites that row in a
  transaction of its own. That transaction's synchronous commit makes everything before it as
  durable (and replicated) as any commit; the token it finds says whether the lost commit
  landed. Landed: `commit` returns and its appends are acknowledged. Not landed:
  `StorageUnavailable`. Appends queued meanwhile wait behind it. Where another server took
  the writer's lock meanwhile (it deletes the rows of the stores before it), the store is
  fenced at once.
- If the database stays unreachable past `OUTCOME_WAIT_S`, the commit fails with
  `StorageUnavailable` (which promises nothing about its effect) and the token is kept for
  the log: if it had landed after all, the appends numbered after it cannot land on the stale
  tails, since each expects the tail it was numbered from (`Expect`; ADR 0013), and their
  sequencers reload.

Reads run on a connection of the calling thread's own, opened on first use, in autocommit: each
read sees the latest committed state. A read whose connection was lost reconnects and tries
once more; if that fails too it is `StorageUnavailable`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import secrets
import threading
import time
import zlib
from collections.abc import Callable, Container, Sequence
from typing import Any, NoReturn, TypeVar

import psycopg
from psycopg import sql

from server.startup import StartupError
from server.storage.kv import (
    WATCHED_TABLES,
    Changed,
    Conflict,
    Delete,
    Expect,
    Put,
    StorageFull,
    StorageUnavailable,
    Table,
    Write,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
Connection = psycopg.Connection[tuple[Any, ...]]

CONNECT_TIMEOUT_S = 10
CHANGES_CHANNEL = "s2s_changes"
"""Where a shared store announces the keys of `WATCHED_TABLES` each commit wrote
(`watch_changes`)."""
_NOTIFY_PAYLOAD_MAX = 7_900
"""Bytes per notification: PostgreSQL refuses payloads of 8,000 bytes or more. A key is at
most 511 bytes (LMDB's limit, which the layouts keep to), 1,022 in hex, so one always fits."""
_LISTEN_RETRY_S_MAX = 5.0
OUTCOME_WAIT_S = 60.0
"""How long a commit whose connection was lost during its statement keeps trying to reconnect
to learn its outcome: longer than a failover takes (Patroni's default leader TTL is 30 s); then the
commit, and the appends queued behind it, fail. Once connected, the check is a commit like any
other: it waits for a synchronous standby as long as PostgreSQL makes every commit wait."""
RECONNECT_BACKOFF_S_MIN = 0.05
RECONNECT_BACKOFF_S_MAX = 1.0
"""Pauses between reconnection attempts while an outcome is awaited, doubling from the first
to the second: a promoted standby is found within about a second of accepting writes."""
LAST_COMMIT = sql.Identifier("s2s_last_commit")
"""A row per store, keyed by its node name (`_node`): the token of the last transaction its
`commit` ran (see the module docstring). A store holding the writer's lock deletes the rows of
the stores before it; the rows of shared stores that stopped stay (a few dozen bytes each)."""
EXPECTATION_FAILED = "S2E01"
"""The SQLSTATE `s2s_expectation_failed()` raises: a commit's precondition did not hold."""
EXPECTATION_FAILED_FUNCTION = sql.SQL(
    "CREATE OR REPLACE FUNCTION s2s_expectation_failed() RETURNS void LANGUAGE plpgsql AS $$ "
    "BEGIN RAISE EXCEPTION 'a key of the commit does not hold the value it expected' "
    "USING ERRCODE = '" + EXPECTATION_FAILED + "'; END $$"
)
TAKEN_OVER = (
    "another s2s server took over this PostgreSQL database while the connection was lost: "
    "this server no longer writes to it; restart it"
)
RECLAIMED_TABLES = (Table.BATCHES, Table.TIMESTAMPS)
"""The tables trims, retention and deletions delete from in bulk (`reclaim`)."""
_VALUES_ROWS_MAX = 1000
"""Rows of one table a commit sends as parameters of their own; more go as two arrays."""
_ROW = sql.SQL("(%b, %b)")
SCHEMA_LOCK = 0x5325_0002
"""Taken while a store creates its tables and function: nodes starting at once take turns
(concurrent `CREATE ... IF NOT EXISTS` of one name can fail)."""
KEY_LOCK_CLASS = 0x5325
"""The first half of the two-part advisory locks `commit` takes per expected key (a key
space apart from one-part locks such as `WRITER_LOCK`)."""
LOCK_KEYS = (
    "SELECT CASE WHEN exclusive THEN pg_advisory_xact_lock(%s, lock) "
    "ELSE pg_advisory_xact_lock_shared(%s, lock) END "
    "FROM unnest(%s::int[], %s::bool[]) AS k (lock, exclusive)"
)
"""Takes a commit's key locks (`_key_locks`) in the order given."""
LEAD_LOCK_CLASS = 0x5326
"""The first half of the two-part session advisory lock a shared store holds while it leads a
role (`leads`); the second half is a hash of the role's name."""
LEAD_LEASE_S = 10.0
"""How long the connection holding a store's roles may sit idle before PostgreSQL ends its
session, freeing them (`idle_session_timeout`): a node frozen (SIGSTOP, a long GC pause, a
network partition) loses its roles to another node after this, though its socket stays open.
Leaders ask every second or so (`leads`), which keeps a live one's session."""
WRITER_LOCK_WAIT_S = 5.0
"""How long a starting server waits for the writers' lock before it refuses: a server killed a
moment ago (kill -9, a crash, restarted at once by its supervisor) holds it until PostgreSQL
notices its connection closed, which its backend does only between statements."""
WRITER_LOCK_RETRY_S = 0.05
WRITER_LOCK = 0x5325_0001
"""The advisory lock every server writing a database holds on its writer connection: the one
server of an exclusive store exclusively, the nodes sharing it (`--shared-storage`) shared."""


def table_name(table: Table) -> str:
    return f"s2s_{table.value.decode()}"


class PostgresStore:
    """A stream log in the PostgreSQL database named by a libpq connection string."""

    def __init__(self, conninfo: str, option: str = "--storage", exclusive: bool = True) -> None:
        """`option`: the command-line flag that named the database, for the messages of
        `StartupError`. `exclusive`: hold the database's writer lock alone, refusing a second
        server. Without, several stores (nodes) share the database, holding the lock shared:
        commits decide each stream's tail by their preconditions (`Expect`), announce what
        they change, and roles are led by one node at a time (ADR 0013)."""
        self._conninfo = conninfo
        self._exclusive = exclusive
        self._node = secrets.token_hex(8)
        """Names this store: its notifications, so its own are not taken for another node's,
        and its row of `s2s_last_commit`."""
        try:
            self._writer = self._connect(autocommit=True)
        except psycopg.OperationalError as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else "no answer"
            raise StartupError(
                f"cannot connect to PostgreSQL ({reason}): check the connection string of "
                f"{option} and that the server is running"
            ) from None
        self._check_durability(self._writer)
        if not self._lock_writer(self._writer):
            self._writer.close()
            raise DatabaseRefused(
                "another s2s server is writing to this PostgreSQL database: stop it, give "
                "another database, or run every server on it with --shared-storage"
                if exclusive
                else "an s2s server without --shared-storage is writing to this PostgreSQL "
                "database: restart it with --shared-storage, or stop it"
            )
        # Why this store may no longer write, once it may not.
        self._fenced: str | None = None
        # The token of a commit whose outcome is not known yet.
        self._unresolved: bytes | None = None
        self._closed = False
        self._create_tables()
        self._readers: list[Connection] = []
        self._readers_lock = threading.Lock()
        self._local = threading.local()
        # `leads`: the connection holding the leadership locks, and the roles they are for.
        self._lead: Connection | None = None
        self._led: set[str] = set()
        self._lead_mutex = threading.Lock()
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
        if not _fsync_on(connection):
            connection.close()
            raise DatabaseRefused(f"{FSYNC_OFF}: turn fsync on in its configuration")

    def _lock_writer(self, connection: Connection) -> bool:
        """Take the writers' advisory lock for the connection's life, exclusively or, for a
        store shared with other nodes, shared with theirs: a server that expects to write
        alone and nodes that expect to share never write one database at once. False if a
        connection holds it in the other mode (or exclusively)."""
        take = "pg_try_advisory_lock" if self._exclusive else "pg_try_advisory_lock_shared"
        deadline = time.monotonic() + WRITER_LOCK_WAIT_S
        while True:
            row = connection.execute(f"SELECT {take}(%s)", (WRITER_LOCK,)).fetchone()
            connection.commit()
            if row and row[0]:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(WRITER_LOCK_RETRY_S)

    def _create_tables(self) -> None:
        with self._writer.transaction():
            self._writer.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            self._writer.execute(EXPECTATION_FAILED_FUNCTION)
            self._writer.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} (store text PRIMARY KEY, token bytea NOT NULL)"
                ).format(LAST_COMMIT)
            )
            if self._exclusive:
                self._writer.execute(sql.SQL("DELETE FROM {}").format(LAST_COMMIT))
            self._writer.execute(
                sql.SQL("INSERT INTO {} VALUES (%s, '')").format(LAST_COMMIT), (self._node,)
            )
            for table in Table:
                self._writer.execute(
                    sql.SQL(
                        "CREATE TABLE IF NOT EXISTS {} "
                        "(key bytea PRIMARY KEY, value bytea NOT NULL)"
                    ).format(sql.Identifier(table_name(table)))
                )

    # --- writes ------------------------------------------------------------------------------

    def commit(self, writes: Sequence[Write]) -> None:
        if self._fenced is not None:
            raise StorageFenced(self._fenced)
        reconnect = self._unresolved is not None or self._writer.closed or self._writer.broken
        # One attempt: while the database is away, appends fail at once.
        if reconnect and self._reconnect_writer(wait_s=0):
            log.warning(
                "a commit whose connection was lost took effect after its appends had been "
                "failed: they are in their streams, unacknowledged; the appends numbered after "
                "them expect the tails they were numbered from, so they are numbered again"
            )
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
        announced: dict[Table, list[bytes]] = {}
        for (table, key), write in sorted(last.items(), key=lambda item: item[0][1]):
            if table in WATCHED_TABLES and not self._exclusive:
                announced.setdefault(table, []).append(key)
            if isinstance(write, Put):
                keys, values = puts.setdefault(table, ([], []))
                keys.append(key)
                values.append(write.value)
            else:
                deletes.setdefault(table, []).append(key)
        connection = self._writer
        token = secrets.token_bytes(16)
        statement, params = self._statement(expected, deletes, puts, announced, token)
        try:
            if self._exclusive or not expected:
                # Autocommit: one statement is one transaction and one round trip.
                connection.execute(statement, params)
            else:
                # The keys' locks before the statement that reads them, whose snapshot is
                # taken as it starts: sent together, answered together.
                locks, exclusive = _key_locks(expected, last)
                with connection.pipeline(), connection.transaction():
                    connection.execute(
                        LOCK_KEYS, (KEY_LOCK_CLASS, KEY_LOCK_CLASS, locks, exclusive)
                    )
                    connection.execute(statement, params)
        except psycopg.errors.DiskFull as error:
            raise StorageFull(
                "the PostgreSQL server's disk is full: its operator must free space; appends "
                "succeed again as soon as there is room, without a restart"
            ) from error
        except psycopg.Error as error:
            if not (connection.closed or connection.broken):
                if error.sqlstate == EXPECTATION_FAILED:
                    raise Conflict(self._held(expected)) from None
                raise  # the transaction failed and was rolled back: nothing was written
            # Sent whole, the commit may or may not have reached COMMIT.
            self._unresolved = token
            log.error("the connection to PostgreSQL was lost during a commit; reconnecting")
            try:
                landed = self._reconnect_writer(wait_s=OUTCOME_WAIT_S)
            except StorageFenced as fenced:
                # The outcome stays unknown: `unavailable` promises nothing, `storage` would
                # promise that nothing was written (docs/adr/0010).
                raise StorageUnavailable(str(fenced)) from None
            if not landed:
                raise StorageUnavailable(
                    f"the connection to PostgreSQL was lost ({_first_line(error)}) during a "
                    "commit that did not take effect"
                ) from None

    def _statement(
        self,
        expected: dict[tuple[Table, bytes], bytes | None],
        deletes: dict[Table, list[bytes]],
        puts: dict[Table, tuple[list[bytes], list[bytes]]],
        announced: dict[Table, list[bytes]],
        token: bytes,
    ) -> tuple[str, list[object]]:
        """The commit as one statement (`_commit_text`) and its parameters."""
        params: list[object] = []
        by_table: dict[Table, tuple[list[bytes], list[bytes | None]]] = {}
        for (table, key), value in expected.items():
            expected_keys, expected_values = by_table.setdefault(table, ([], []))
            expected_keys.append(key)
            expected_values.append(value)
        for expected_keys, expected_values in by_table.values():
            params += (expected_keys, expected_values)
        for keys in deletes.values():
            params.append(keys)
        put_rows: list[tuple[Table, int]] = []
        for table, (keys, values) in puts.items():
            if len(keys) > _VALUES_ROWS_MAX:
                put_rows.append((table, 0))
                params += (keys, values)
            else:
                put_rows.append((table, len(keys)))
                for row in zip(keys, values, strict=True):
                    params += row
        if announced:
            params += (CHANGES_CHANNEL, self._payloads(announced))
        params += (token, self._node)
        text = _commit_text(tuple(by_table), tuple(deletes), tuple(put_rows), bool(announced))
        return text, params

    def _held(
        self, expected: dict[tuple[Table, bytes], bytes | None]
    ) -> dict[tuple[Table, bytes], bytes | None]:
        """What the expected keys hold now, read after a commit whose expectations failed."""
        held: dict[tuple[Table, bytes], bytes | None] = dict.fromkeys(expected)
        by_table: dict[Table, list[bytes]] = {}
        for table, key in expected:
            by_table.setdefault(table, []).append(key)
        for table, keys in by_table.items():
            rows = self._read(
                sql.SQL("SELECT key, value FROM {} WHERE key = ANY(%b)").format(self._names[table]),
                (keys,),
            )
            for key, value in rows:
                held[(table, bytes(key))] = bytes(value)
        return held

    def _payloads(self, announced: dict[Table, list[bytes]]) -> list[str]:
        """The notifications that tell the nodes watching (`watch_changes`) which keys this
        commit writes: PostgreSQL delivers them only if, and once, the transaction commits.
        Each is `node table key...`, the keys in hex."""
        payloads: list[str] = []
        for table, keys in announced.items():
            head = f"{self._node} {table.value.decode()}"
            payload = head
            for key in keys:
                word = key.hex()
                if len(payload) + 1 + len(word) > _NOTIFY_PAYLOAD_MAX:
                    payloads.append(payload)
                    payload = head
                payload += " " + word
            payloads.append(payload)
        return payloads

    def watch_changes(self, on_change: Callable[[Changed | None], None]) -> None:
        """Listen for the keys other stores on the database commit, on a thread of its own
        with a connection of its own. After the connection was lost (and on the first
        connect), `on_change(None)`: notifications sent meanwhile are gone."""
        if self._exclusive:
            return  # no other store writes this database
        thread = threading.Thread(
            target=self._listen, args=(on_change,), name="s2s-changes", daemon=True
        )
        thread.start()

    def _listen(self, on_change: Callable[[Changed | None], None]) -> None:
        retry_s = 0.1
        while not self._closed:
            try:
                connection = self._connect(autocommit=True)
            except psycopg.OperationalError as error:
                log.error("cannot listen for other nodes' changes: %s", error)
                time.sleep(retry_s)
                retry_s = min(retry_s * 2, _LISTEN_RETRY_S_MAX)
                continue
            retry_s = 0.1
            try:
                connection.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANGES_CHANNEL)))
                on_change(None)
                while not self._closed:
                    for notify in connection.notifies(timeout=0.5):
                        node, table, *keys = notify.payload.split(" ")
                        if node != self._node:
                            written = [bytes.fromhex(key) for key in keys]
                            on_change(Changed(Table(table.encode()), written))
            except psycopg.OperationalError as error:
                if not self._closed:
                    log.warning(
                        "lost the connection that listens for other nodes' changes: %s", error
                    )
            finally:
                connection.close()

    @property
    def shared(self) -> bool:
        return not self._exclusive

    def leads(self, role: str) -> bool:
        """An exclusive store always leads. A shared one leads while a connection of its own
        holds the role's session advisory lock: the first store to ask takes it (without
        waiting), and keeps it until that connection is closed, lost, or idle for `LEAD_LEASE_S`.
        Each call is a round trip on that connection, so a lost one is noticed: then this
        store does not lead until a later call, on a new connection, takes the lock again."""
        if self._exclusive:
            return True
        with self._lead_mutex:
            try:
                connection = self._lead_connection()
                if connection is None:
                    return False
                if role in self._led:
                    connection.execute("SELECT 1")  # the session lives, so its lock is held
                    return True
                row = connection.execute(
                    "SELECT pg_try_advisory_lock(%s, %s)", (LEAD_LOCK_CLASS, _role_lock(role))
                ).fetchone()
            except psycopg.Error as error:
                if self._lead is not None:
                    self._lead.close()  # its session ends, and with it every lock it held
                self._lead = None
                self._led.clear()
                log.debug("leadership connection failed: %s", _first_line(error))
                return False
            if row is not None and row[0]:
                self._led.add(role)
                return True
            return False

    def _lead_connection(self) -> Connection | None:
        """The connection `leads` holds its locks on, opened if needed; None once closed."""
        if self._closed:
            return None
        connection = self._lead
        if connection is not None:
            if not (connection.closed or connection.broken):
                return connection
            connection.close()
        self._led.clear()  # a new session holds nothing
        connection = self._connect(autocommit=True)
        connection.execute(f"SET idle_session_timeout = {int(LEAD_LEASE_S * 1000)}")
        with self._readers_lock:  # `close` takes it too: no connection is left open after it
            if self._closed:
                connection.close()
                return None
            self._lead = connection
        return connection

    def _reconnect_writer(self, wait_s: float) -> bool:
        """Replace the writer's connection, retrying with backoff for up to `wait_s`, and
        settle the outcome of an unresolved commit: True if it took effect (then it is durable
        now, as any commit), False if it did not or none was unresolved.

        The writer's advisory lock went with the old connection. If it cannot be taken back,
        either our old session still holds it exclusively (the same server, its backend not yet
        gone: we wait) or another s2s server took the database over (it deleted our token's
        row): its view of every tail is newer than ours, so this one must never write again
        (`StorageFenced`). Raises
        `StorageUnavailable` if the database cannot be reached in time.
        """
        deadline = time.monotonic() + wait_s
        backoff_s = RECONNECT_BACKOFF_S_MIN
        while True:
            if self._closed:
                raise StorageUnavailable("the stream log is closed")
            failure: str | None = None
            try:
                landed = self._try_reconnect_writer()
            except psycopg.Error as error:  # a server not ready yet, or gone again
                failure = _first_line(error)
            else:
                if landed is not None:
                    return landed
            if time.monotonic() + backoff_s > deadline:
                if failure is None:
                    self._fence(TAKEN_OVER)
                raise StorageUnavailable(f"PostgreSQL is unavailable: {failure}")
            time.sleep(backoff_s)
            backoff_s = min(2 * backoff_s, RECONNECT_BACKOFF_S_MAX)

    def _try_reconnect_writer(self) -> bool | None:
        """One attempt of `_reconnect_writer`: None if the lock is held by another session."""
        connection = self._connect(autocommit=True)
        try:
            if not _fsync_on(connection):
                raise psycopg.OperationalError(FSYNC_OFF)
            if not self._lock_writer(connection):
                ours = connection.execute(
                    sql.SQL("SELECT 1 FROM {} WHERE store = %s").format(LAST_COMMIT),
                    (self._node,),
                ).fetchone()
                connection.close()
                if ours is None:  # a server that took the lock deletes the rows before it
                    self._fence(TAKEN_OVER)
                return None  # our own old session, not gone yet: wait for it
            # Rewritten, not only read: this transaction's synchronous commit waits until
            # everything before it, the lost commit included, is as durable as a commit is.
            row = connection.execute(
                sql.SQL("UPDATE {} SET token = token WHERE store = %s RETURNING token").format(
                    LAST_COMMIT
                ),
                (self._node,),
            ).fetchone()
            connection.commit()
        except BaseException:
            connection.close()
            raise
        self._writer.close()
        self._writer = connection
        landed = self._unresolved is not None and row is not None and row[0] == self._unresolved
        if self._unresolved is not None:
            log.warning(
                "reconnected to PostgreSQL: the commit whose connection was lost %s",
                "took effect" if landed else "did not take effect",
            )
        else:
            log.warning("reconnected to PostgreSQL")
        self._unresolved = None
        return landed

    def _fence(self, reason: str) -> NoReturn:
        log.error("%s", reason)
        self._fenced = reason
        raise StorageFenced(reason)

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
        self, query: sql.SQL | sql.Composed, params: tuple[object, ...], fetch: bool = True
    ) -> list[tuple[Any, ...]]:
        """Run a read on this thread's connection (autocommit); one that was cut (a failover,
        a restart of the database) is replaced and the read tried once more. A read that
        still fails is `StorageUnavailable`. `fetch` False: a statement without rows."""
        for attempt in range(2):
            try:
                cursor = self._reader().execute(query, params, binary=True)
                return cursor.fetchall() if fetch else []
            except psycopg.OperationalError as error:
                if self._closed:
                    raise
                connection: Connection | None = getattr(self._local, "connection", None)
                lost = connection is None or connection.closed or connection.broken
                if not lost or attempt == 1:
                    raise StorageUnavailable(
                        f"PostgreSQL did not answer a read: {_first_line(error)}"
                    ) from None
                if connection is not None:
                    log.warning("a read connection to PostgreSQL was lost; reconnecting")
                    self._local.connection = None
        raise AssertionError("unreachable")

    def get(self, table: Table, key: bytes) -> bytes | None:
        rows = self._read(
            sql.SQL("SELECT value FROM {} WHERE key = %s").format(self._names[table]), (key,)
        )
        return bytes(rows[0][0]) if rows else None

    def scan(
        self, table: Table, start: bytes, end: bytes | None, limit: int
    ) -> list[tuple[bytes, bytes]]:
        return [
            (bytes(key), bytes(value)) for key, value in self._rows(table, start, end, limit, None)
        ]

    def scan_map(
        self,
        table: Table,
        start: bytes,
        end: bytes | None,
        limit: int,
        project: Callable[[memoryview], T],
        head_bytes: int | None = None,
    ) -> list[tuple[bytes, T]]:
        return [
            (bytes(key), project(memoryview(value)))
            for key, value in self._rows(table, start, end, limit, head_bytes)
        ]

    def _rows(
        self, table: Table, start: bytes, end: bytes | None, limit: int, head_bytes: int | None
    ) -> list[tuple[bytes, bytes]]:
        if limit <= 0:
            return []
        # LIMIT takes a bigint; callers pass sys.maxsize for "all".
        limit = min(limit, 2**63 - 1)
        value: sql.Composable = sql.SQL("value")
        if head_bytes is not None:
            value = sql.SQL("substring(value FROM 1 FOR {})").format(sql.Literal(head_bytes))
        bounds = sql.SQL("key >= %s" if end is None else "key >= %s AND key < %s")
        query = sql.SQL("SELECT key, {} FROM {} WHERE {} ORDER BY key LIMIT %s").format(
            value, self._names[table], bounds
        )
        params: tuple[object, ...] = (start, limit) if end is None else (start, end, limit)
        return [(row[0], row[1]) for row in self._read(query, params)]

    def reclaim(self) -> None:
        """VACUUM the tables the jobs delete from (batches and their timestamp index): dead
        rows' space, TOAST included, is reused by later inserts at once instead of after
        autovacuum's next pass (its default naptime is a minute, and its thresholds scale with
        the table). Not FULL: nothing is locked against appends, and the space stays the
        table's rather than going back to the file system."""
        tables = sql.SQL(", ").join(self._names[table] for table in RECLAIMED_TABLES)
        self._read(sql.SQL("VACUUM {}").format(tables), (), fetch=False)

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
            lead, self._lead = self._lead, None
        # The writer's lock and the roles led are released before the connections close: a
        # session's locks outlive its client's close until its backend has exited, so a store
        # opened right after this one closed could otherwise be refused the database.
        for holder in [self._writer, *([lead] if lead is not None else [])]:
            _release_session_locks(holder)
        self._writer.close()
        for connection in [*readers, *([lead] if lead is not None else [])]:
            connection.close()


FSYNC_OFF = "the PostgreSQL server runs with fsync off, so a commit it acknowledges can be lost"


def _release_session_locks(connection: Connection) -> None:
    """Releases the session's advisory locks, if it is still up (a cut or ended session holds
    none any more)."""
    with contextlib.suppress(psycopg.Error):
        connection.execute("SELECT pg_advisory_unlock_all()")


def _fsync_on(connection: Connection) -> bool:
    row = connection.execute("SHOW fsync").fetchone()
    connection.commit()
    return row is not None and row[0] == "on"


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@functools.lru_cache(maxsize=1024)
def _commit_text(
    expects: tuple[Table, ...],
    deletes: tuple[Table, ...],
    puts: tuple[tuple[Table, int], ...],
    announce: bool,
) -> str:
    """A commit of this shape as one statement: a part per table and kind of write in a
    `WITH`, with the parameters `PostgresStore._statement` gives, in its order.

    The parts run on one snapshot and, if any fails, none has effect. The preconditions are
    a part that raises `EXPECTATION_FAILED` unless every expected key holds its value (row
    locks cannot hold a key that is absent: where other stores write too, `commit` takes an
    advisory lock per key before this statement starts). Rows go as parameters of their own
    (`puts`: the rows per table), not as an array: PostgreSQL parses a big array whole, at
    about half the throughput (docs/adr/0011); past `_VALUES_ROWS_MAX` rows of a table (0
    here) they go as arrays, under the protocol's 65,535 parameters a statement. One text per
    shape, cached: psycopg prepares a statement it has run a few times, so PostgreSQL parses
    and plans each shape once per connection.
    """
    parts: list[sql.Composable] = []
    counted: list[sql.Composable] = []
    for table in expects:
        name = sql.Identifier(f"expect_{table.value.decode()}")
        parts.append(
            sql.SQL(
                "{} AS (SELECT s2s_expectation_failed() FROM unnest(%b::bytea[], "
                "%b::bytea[]) AS e (key, value) LEFT JOIN {} AS t ON t.key = e.key "
                "WHERE t.value IS DISTINCT FROM e.value LIMIT 1)"
            ).format(name, sql.Identifier(table_name(table)))
        )
        counted.append(name)
    for table in deletes:
        parts.append(
            sql.SQL("{} AS (DELETE FROM {} WHERE key = ANY(%b))").format(
                sql.Identifier(f"delete_{table.value.decode()}"), sql.Identifier(table_name(table))
            )
        )
    for table, count in puts:
        rows: sql.Composable
        if count == 0:
            rows = sql.SQL("SELECT * FROM unnest(%b::bytea[], %b::bytea[])")
        else:
            rows = sql.SQL("VALUES ") + sql.SQL(", ").join([_ROW] * count)
        parts.append(
            sql.SQL(
                "{} AS (INSERT INTO {} (key, value) {} "
                "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value)"
            ).format(
                sql.Identifier(f"put_{table.value.decode()}"),
                sql.Identifier(table_name(table)),
                rows,
            )
        )
    if announce:
        parts.append(
            sql.SQL(
                "announce AS (SELECT pg_notify(%s, payload) FROM unnest(%s::text[]) AS payload)"
            )
        )
        counted.append(sql.Identifier("announce"))
    parts.append(
        sql.SQL("token AS (UPDATE {} SET token = %b WHERE store = %s)").format(LAST_COMMIT)
    )
    # A part that only reads runs only if the statement reads it.
    reads: list[sql.Composable] = [
        sql.SQL("(SELECT count(*) FROM {})").format(name) for name in counted
    ]
    total = sql.SQL(" + ").join(reads or [sql.SQL("0")])
    return sql.SQL("WITH {} SELECT {}").format(sql.SQL(", ").join(parts), total).as_string()


def _key_locks(
    expected: dict[tuple[Table, bytes], bytes | None], written: Container[tuple[Table, bytes]]
) -> tuple[list[int], list[bool]]:
    """The advisory locks a commit takes for its expected keys, in one order for every store
    (so two commits never wait for each other's), and for each whether it is exclusive.

    A key the commit also writes is locked exclusively; one it only expects, shared: the
    records every append expects unchanged (its stream's and basin's) are locked by all of
    them, and appends to different streams must not take turns on a basin's. A commit that
    writes a key still waits for every commit expecting it, and they for it, so no two
    commits decide on a value the other changes (no write skew)."""
    modes: dict[int, bool] = {}
    for table, key in expected:
        lock = _key_lock(table, key)
        modes[lock] = modes.get(lock, False) or (table, key) in written
    locks = sorted(modes)
    return locks, [modes[lock] for lock in locks]


def _key_lock(table: Table, key: bytes) -> int:
    """A key's advisory lock: a signed 32-bit hash of its table and key (a collision only
    makes two keys' commits take turns)."""
    return _signed32(zlib.crc32(key, zlib.crc32(table.value)))


def _role_lock(role: str) -> int:
    """A role's leadership lock: a signed 32-bit hash of its name."""
    return _signed32(zlib.crc32(role.encode()))


def _signed32(value: int) -> int:
    """An unsigned 32-bit hash as the signed int4 PostgreSQL's two-part locks take."""
    return value - (1 << 32) if value >= 1 << 31 else value


class DatabaseRefused(StartupError):
    """The database answered, but this store must not use it (another server writes it, or
    its commits are not durable); nothing was written."""


class StorageClosed(Exception):
    """A read after the store was closed (a background task still finishing)."""


class StorageFenced(Exception):
    """Another server writes the database now; this one must not."""
