"""`s2s migrate --from DATA_DIR --to 'postgres:...'`: move a stopped server's stream log from its
LMDB data directory into an empty PostgreSQL database, then prove the copy exact.

Both engines hold the same bytes under the same keys (`server/storage/layout.py`), so the copy
is every (key, value) of every key space (`Table`) as it is: batches keep their sequence
numbers, timestamps and checksums, tails their fencing tokens and trim points, access tokens
their digests, usage its counters, the jobs their markers. Nothing is decoded or rewritten.

1. Refusals, each before anything is written (exit 2): the source must hold an LMDB stream log
   (`DATA_DIR/log`) whose key spaces are all ones this version knows; the data directory is
   claimed as `s2s serve` claims it (`DATA_DIR/lock`), so a running server refuses the
   migration and no server starts on it meanwhile; the target is opened as a server opens it
   (`PostgresStore`: fsync on, the writer's advisory lock, so no server writes it meanwhile) and
   every key space must be empty.
2. Copy: each key space in key order, all from one read transaction of the source, in
   PostgreSQL transactions of at most `transaction_bytes_max` bytes (or one value, if larger)
   and `TRANSACTION_ROWS_MAX` rows, each durable before the next (`PostgresStore.commit`).
3. Verify: every key space is read back from PostgreSQL in key order over a connection of its
   own; its count and SHA-256 must equal those of the source's pairs (computed from the reads
   that fed the copy). One line per key space on stdout, then the verdict; exit 0 only if all
   match, 1 otherwise or on any failure (one line on stderr).

What the log does not hold stays in the data directory: the root token's secret
(`root.token`), a self-signed certificate (`tls/`) and the lake (`lake/`, with the server's id).
docs/deploy.md says what the operator keeps or copies.
"""

from __future__ import annotations

import hashlib
import struct
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import lmdb
import psycopg
from psycopg import sql

from server.startup import DataDirInUse, StartupError, claim_data_dir
from server.storage.choice import POSTGRES_PREFIX
from server.storage.kv import Put, StorageFull, Table, Write
from server.storage.postgres import (
    CONNECT_TIMEOUT_S,
    DatabaseRefused,
    PostgresStore,
    StorageFenced,
    table_name,
)

EXIT_MATCH = 0
EXIT_FAILED = 1
EXIT_REFUSED = 2

TRANSACTION_MIB_DEFAULT = 32
TRANSACTION_ROWS_MAX = 10_000
"""Bounds the arrays of one `INSERT ... unnest(...)`, whatever the values' sizes."""
VERIFY_FETCH_ROWS = 64
"""Rows per round trip reading the target back: a batch is at most a few MiB, so a fetch holds
at most a few hundred MiB even if every row is a full batch."""
PROGRESS_INTERVAL_S = 2.0
LOG_DIR = "log"
LMDB_DATA_FILE = "data.mdb"


class Refused(Exception):
    """The migration cannot start as asked; nothing was written."""


class Failed(Exception):
    """The migration started and could not finish, or the source could not be read."""


@dataclass
class Digest:
    """The count of a key space's (key, value) pairs and their SHA-256, in key order. Each pair
    is hashed as its key's length, the key, its value's length, the value (8-byte big-endian
    lengths), so no two different sequences of pairs hash the same bytes."""

    count: int = 0
    bytes_total: int = 0
    sha256: hashlib._Hash = field(default_factory=hashlib.sha256)

    def add(self, key: bytes, value: bytes) -> None:
        self.count += 1
        self.bytes_total += len(key) + len(value)
        self.sha256.update(struct.pack(">Q", len(key)))
        self.sha256.update(key)
        self.sha256.update(struct.pack(">Q", len(value)))
        self.sha256.update(value)

    def same_as(self, other: Digest) -> bool:
        return self.count == other.count and self.sha256.digest() == other.sha256.digest()


class Progress:
    """Lines on stderr: one every `PROGRESS_INTERVAL_S` while a key space is copied or
    verified, and one when each is copied."""

    def __init__(self, err: TextIO) -> None:
        self._err = err
        self._last_s = time.monotonic()

    def running(self, doing: str, table: Table, digest: Digest) -> None:
        now = time.monotonic()
        if now - self._last_s >= PROGRESS_INTERVAL_S:
            self._last_s = now
            print(f"{doing} {_name(table)}: {_amount(digest)} so far", file=self._err, flush=True)

    def copied(self, table: Table, digest: Digest, transactions: int, seconds: float) -> None:
        self._last_s = time.monotonic()
        print(
            f"copied {_name(table)}: {_amount(digest)} in {transactions} "
            f"transaction{'' if transactions == 1 else 's'}, {seconds:.1f} s",
            file=self._err,
            flush=True,
        )


def _name(table: Table) -> str:
    return table.value.decode()


def _amount(digest: Digest) -> str:
    return f"{digest.count:,} keys, {digest.bytes_total / (1 << 20):,.1f} MiB"


class LmdbLog:
    """A data directory's LMDB stream log, opened read-only: nothing here writes to it."""

    def __init__(self, data_dir: Path) -> None:
        path = data_dir / LOG_DIR
        try:
            self._env = lmdb.open(
                str(path),
                readonly=True,
                create=False,
                max_dbs=len(Table),
                # LMDB maps at least what the file uses; the server's reservation is not needed.
                map_size=max((path / LMDB_DATA_FILE).stat().st_size, 1 << 20),
            )
        except lmdb.InvalidError as error:
            raise Refused(
                f"--from {str(data_dir)!r} is not an s2s data directory: "
                f"{LOG_DIR}/{LMDB_DATA_FILE} is not an LMDB file ({error})"
            ) from None
        except (OSError, lmdb.Error) as error:
            raise Failed(
                f"cannot open the stream log in --from {str(data_dir)!r}: {error}"
            ) from None
        try:
            self._check_key_spaces(data_dir)
        except BaseException:
            self._env.close()
            raise

    def _check_key_spaces(self, data_dir: Path) -> None:
        """Every named database must be a key space this version knows: one it does not would
        be left behind."""
        with self._env.begin() as txn:
            names = {bytes(key) for key, _ in txn.cursor()}
        known = {table.value for table in Table}
        unknown = sorted(names - known)
        if unknown:
            listed = ", ".join(repr(name.decode(errors="replace")) for name in unknown)
            raise Refused(
                f"the stream log in --from {str(data_dir)!r} holds key spaces this s2s does not "
                f"know ({listed}): migrate it with the s2s version that wrote it"
            )
        if not names:
            raise Refused(
                f"--from {str(data_dir)!r} is not an s2s data directory: its "
                f"{LOG_DIR}/{LMDB_DATA_FILE} holds none of the stream log's key spaces"
            )

    def snapshot(self) -> lmdb.Transaction:
        """A read transaction: every read through it sees the same state."""
        return self._env.begin()

    def items(self, txn: lmdb.Transaction, table: Table) -> Iterator[tuple[bytes, bytes]]:
        """`table`'s pairs in key order; none if the log predates that key space."""
        try:
            db = self._env.open_db(table.value, txn=txn, create=False)
        except lmdb.NotFoundError:
            return
        for key, value in txn.cursor(db=db):
            yield bytes(key), bytes(value)

    def close(self) -> None:
        self._env.close()


def migrate(
    source: str,
    target: str,
    transaction_bytes_max: int,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    """Run `s2s migrate`; returns its exit status. `target` is `postgres:<connection string>`."""
    try:
        return _migrate(
            Path(source), target.removeprefix(POSTGRES_PREFIX), transaction_bytes_max, out, err
        )
    except Refused as error:
        print(f"error: refused, nothing written: {error}", file=err)
        return EXIT_REFUSED
    except Failed as error:
        print(f"error: {error}", file=err)
        return EXIT_FAILED


def _migrate(
    source: Path, conninfo: str, transaction_bytes_max: int, out: TextIO, err: TextIO
) -> int:
    _check_source(source)
    with ExitStack() as resources:
        try:
            resources.enter_context(claim_data_dir(str(source)))
        except DataDirInUse as error:
            raise Refused(
                f"--from {str(source)!r} is in use by a running s2s server (pid {error.holder}): "
                "stop it first; only a stopped server's data directory can be migrated"
            ) from None
        except StartupError as error:
            raise Failed(str(error)) from None
        log = LmdbLog(source)
        resources.callback(log.close)
        store = _open_target(conninfo)
        resources.callback(store.close)
        progress = Progress(err)
        try:
            with log.snapshot() as txn:
                source_digests = {
                    table: _copy(
                        log.items(txn, table), table, store, transaction_bytes_max, progress
                    )
                    for table in Table
                }
        except lmdb.Error as error:
            raise Failed(
                f"reading the stream log in --from {str(source)!r} failed ({error}): the database "
                "holds part of it; drop its s2s_* tables (or the database) before running again"
            ) from None
        target_digests = _read_back(conninfo, progress)
    return _report(source_digests, target_digests, out, err)


def _check_source(source: Path) -> None:
    if not source.is_dir():
        raise Refused(f"--from {str(source)!r} is not a directory: give a server's --data-dir")
    if not (source / LOG_DIR / LMDB_DATA_FILE).is_file():
        raise Refused(
            f"--from {str(source)!r} is not an s2s data directory: it has no "
            f"{LOG_DIR}/{LMDB_DATA_FILE} (the stream log of a server run with --storage lmdb, "
            "the default)"
        )


def _open_target(conninfo: str) -> PostgresStore:
    """The target opened as a server opens it (durability checked, the writer's lock taken,
    the tables created if missing); refused unless every key space is empty."""
    try:
        store = PostgresStore(conninfo, option="--to")
    except DatabaseRefused as error:
        raise Refused(str(error)) from None
    except StartupError as error:
        raise Failed(str(error)) from None
    except psycopg.Error as error:
        raise Failed(f"cannot use the target database: {_first_line(error)}") from None
    try:
        holding = [_name(table) for table in Table if store.scan(table, b"", None, 1)]
    except psycopg.Error as error:
        store.close()
        raise Failed(f"cannot read the target database: {_first_line(error)}") from None
    if holding:
        store.close()
        raise Refused(
            f"the target database already holds s2s data (key spaces {', '.join(holding)}): "
            "give an empty database; after an interrupted migrate, drop its s2s_* tables first"
        )
    return store


def _copy(
    items: Iterator[tuple[bytes, bytes]],
    table: Table,
    store: PostgresStore,
    transaction_bytes_max: int,
    progress: Progress,
) -> Digest:
    """Copy one key space; returns the digest of what was read from the source."""
    started_s = time.monotonic()
    digest = Digest()
    pending: list[Write] = []
    pending_bytes = 0
    transactions = 0
    for key, value in items:
        size = len(key) + len(value)
        if pending and (
            pending_bytes + size > transaction_bytes_max or len(pending) >= TRANSACTION_ROWS_MAX
        ):
            _commit(store, pending, table, digest)
            transactions += 1
            pending, pending_bytes = [], 0
            progress.running("copying", table, digest)
        digest.add(key, value)
        pending.append(Put(table, key, value))
        pending_bytes += size
    if pending:
        _commit(store, pending, table, digest)
        transactions += 1
    progress.copied(table, digest, transactions, time.monotonic() - started_s)
    return digest


def _commit(store: PostgresStore, writes: list[Write], table: Table, read: Digest) -> None:
    try:
        store.commit(writes)
    except (psycopg.Error, StorageFull, StorageFenced) as error:
        reason = _first_line(error)
        copied = read.count - len(writes)
        raise Failed(
            f"the copy failed in key space {_name(table)} after {copied:,} of its keys "
            f"({reason}): the database holds part of the log; drop its s2s_* tables (or the "
            "database) and run migrate again"
        ) from None


def _read_back(conninfo: str, progress: Progress) -> dict[Table, Digest]:
    """Every key space's digest as PostgreSQL returns it, over a connection of its own."""
    digests: dict[Table, Digest] = {}
    try:
        with psycopg.connect(
            conninfo, connect_timeout=CONNECT_TIMEOUT_S, application_name="s2s migrate"
        ) as connection:
            for table in Table:
                digest = Digest()
                # A server-side cursor: the table comes VERIFY_FETCH_ROWS rows at a time.
                with connection.cursor(name="s2s_migrate_verify", binary=True) as cursor:
                    cursor.itersize = VERIFY_FETCH_ROWS
                    cursor.execute(
                        sql.SQL("SELECT key, value FROM {} ORDER BY key").format(
                            sql.Identifier(table_name(table))
                        )
                    )
                    for key, value in cursor:
                        digest.add(bytes(key), bytes(value))
                        progress.running("verifying", table, digest)
                digests[table] = digest
    except psycopg.Error as error:
        raise Failed(
            f"the copy finished, but reading it back failed ({_first_line(error)}): "
            "the copy is unverified; drop its s2s_* tables and run migrate again"
        ) from None
    return digests


def _report(
    source: dict[Table, Digest], target: dict[Table, Digest], out: TextIO, err: TextIO
) -> int:
    mismatched: list[str] = []
    for table in Table:
        ours, theirs = source[table], target[table]
        if ours.same_as(theirs):
            digest = ours.sha256.hexdigest()
            print(f"{_name(table):<14} {ours.count:>12,} keys  sha256 {digest}  match", file=out)
            continue
        mismatched.append(_name(table))
        print(
            f"{_name(table):<14} MISMATCH: lmdb {ours.count:,} keys sha256 "
            f"{ours.sha256.hexdigest()}, postgres {theirs.count:,} keys sha256 "
            f"{theirs.sha256.hexdigest()}",
            file=out,
        )
    if mismatched:
        print(
            f"verdict: MISMATCH in {', '.join(mismatched)}: do not serve this database; drop "
            "its s2s_* tables and run migrate again",
            file=out,
        )
        return EXIT_FAILED
    print(f"verdict: match: all {len(Table)} key spaces copied exactly", file=out)
    print(
        "next: run s2s serve with --storage set to this --to, on this data directory "
        "(root.token, tls/ and lake/ stay in it; see docs/deploy.md)",
        file=err,
    )
    return EXIT_MATCH


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
