"""Which engine holds the stream log: `lmdb` (the embedded default, in the data directory) or
`postgres:<libpq connection string>` (a PostgreSQL database), as `--storage` / `S2S_STORAGE`
name it."""

from __future__ import annotations

import argparse
import os

import psycopg
from psycopg.conninfo import conninfo_to_dict

from server.storage.kv import KeyValueStore, LmdbStore
from server.storage.postgres import PostgresStore

LMDB = "lmdb"
POSTGRES_PREFIX = "postgres:"


def storage_option(text: str) -> str:
    """The `--storage` value, checked; an argparse type."""
    if text == LMDB:
        return text
    if text.startswith(POSTGRES_PREFIX) and text[len(POSTGRES_PREFIX) :].strip():
        try:
            conninfo_to_dict(text[len(POSTGRES_PREFIX) :])
        except psycopg.Error as error:
            raise argparse.ArgumentTypeError(
                f"the PostgreSQL connection string does not parse: {error}"
            ) from None
        return text
    raise argparse.ArgumentTypeError(
        f"must be {LMDB!r} or 'postgres:' and a libpq connection string "
        "(e.g. 'postgres:host=db1 dbname=s2s'), not " + repr(text)
    )


def postgres_option(text: str) -> str:
    """A `postgres:<connection string>` value, checked (`s2s migrate --to`); an argparse type."""
    if not text.startswith(POSTGRES_PREFIX):
        raise argparse.ArgumentTypeError(
            "must be 'postgres:' and a libpq connection string "
            "(e.g. 'postgres:host=db1 dbname=s2s'), not " + repr(text)
        )
    return storage_option(text)


def open_key_value_store(
    storage: str, data_dir: str, max_storage_bytes: int, shared: bool = False
) -> KeyValueStore:
    """`shared`: other nodes write the database too (`--shared-storage`; PostgreSQL only)."""
    if storage.startswith(POSTGRES_PREFIX):
        return PostgresStore(storage[len(POSTGRES_PREFIX) :], exclusive=not shared)
    assert not shared, "only a PostgreSQL database is shared by several nodes"
    return LmdbStore(os.path.join(data_dir, "log"), max_storage_bytes)


def describe_storage(storage: str, data_dir: str) -> str:
    """Where the stream log is, for the log: never the connection string's password."""
    if not storage.startswith(POSTGRES_PREFIX):
        return os.path.abspath(data_dir)
    parts = conninfo_to_dict(storage[len(POSTGRES_PREFIX) :])
    where = ", ".join(f"{key}={parts[key]}" for key in ("host", "port", "dbname") if key in parts)
    return f"PostgreSQL ({where or 'libpq defaults'})"
