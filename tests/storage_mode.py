"""Which engine the suite's servers and stores run on: LMDB (the default), or PostgreSQL when
`S2S_TEST_STORAGE=postgres` (`make test-postgres`).

In the PostgreSQL mode each test process (each pytest worker) starts one durable PostgreSQL
server on first use and stops it at exit, and every data directory gets a database of its own,
created on first use and named after the directory's path: a server restarted on the same data
directory finds its data again, a new data directory starts empty. Tests about LMDB itself are
marked `lmdb_only` and skipped in that mode (tests/conftest.py)."""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import threading

import psycopg

from server.storage.choice import LMDB, POSTGRES_PREFIX, open_key_value_store
from server.storage.kv import MAP_SIZE_BYTES_DEFAULT, KeyValueStore, Table
from server.storage.postgres import table_name
from tests.postgres import PostgresServer, running_postgres

MODE_VARIABLE = "S2S_TEST_STORAGE"
POSTGRES_MODE = "postgres"


def postgres_mode() -> bool:
    """Whether the suite runs on PostgreSQL; any other value than `postgres` or `lmdb` (or
    unset) is refused, so a typo does not quietly run the LMDB suite."""
    mode = os.environ.get(MODE_VARIABLE, LMDB)
    if mode not in (LMDB, POSTGRES_MODE):
        raise RuntimeError(f"{MODE_VARIABLE} must be {LMDB!r} or {POSTGRES_MODE!r}, not {mode!r}")
    return mode == POSTGRES_MODE


_lock = threading.Lock()
_server_stack = contextlib.ExitStack()
_server: PostgresServer | None = None


def postgres_server() -> PostgresServer:
    """This process's durable PostgreSQL server, started on the first call (durable: the
    stream log refuses a server with fsync off)."""
    global _server
    with _lock:
        if _server is None:
            _server = _server_stack.enter_context(running_postgres(durable=True))
            atexit.register(stop_postgres_server)
        return _server


def stop_postgres_server() -> None:
    """Stops the server if one was started (the session's end, or the process's exit)."""
    global _server
    with _lock:
        _server_stack.close()
        _server = None


def postgres_database(name: str) -> str:
    """`--storage` for database `name` on this process's server, created if missing."""
    server = postgres_server()
    admin = PostgresServer(server.host, server.port, server.user, "postgres", server.bin_dir)
    with psycopg.connect(admin.libpq(), autocommit=True) as connection:
        exists = connection.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
        ).fetchone()
        if exists is None:
            connection.execute(f'CREATE DATABASE "{name}"')
    database = PostgresServer(server.host, server.port, server.user, name, server.bin_dir)
    return POSTGRES_PREFIX + database.libpq()


def storage_for(data_dir: object) -> str:
    """`--storage` for a server or store on `data_dir`: `lmdb`, or in the PostgreSQL mode the
    database of that directory (the same one for every path spelling of it)."""
    if not postgres_mode():
        return LMDB
    path = os.path.realpath(str(data_dir))
    digest = hashlib.sha256(path.encode()).hexdigest()[:24]
    return postgres_database(f"s2s_dir_{digest}")


def key_value_store(data_dir: object) -> KeyValueStore:
    """The stream log's store of `data_dir` in the suite's mode, for tests that wrap it."""
    return open_key_value_store(storage_for(data_dir), str(data_dir), MAP_SIZE_BYTES_DEFAULT)


def empty_tables(storage: str) -> None:
    """Empties the stream log's tables of a `postgres:` storage (those that exist)."""
    with psycopg.connect(storage[len(POSTGRES_PREFIX) :], autocommit=True) as connection:
        names = [table_name(table) for table in Table]
        existing = connection.execute(
            "SELECT tablename FROM pg_tables WHERE tablename = ANY(%s)", (names,)
        ).fetchall()
        if existing:
            connection.execute(f"TRUNCATE {', '.join(row[0] for row in existing)}")
