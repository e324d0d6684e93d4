"""Every `KeyValueStore` behaves the same: LMDB (the embedded default) and PostgreSQL (a real
server started here, with fsync on). The stream log above the seam relies on exactly this:
bytewise key order, half-open scans with limits, the last write of a key in a commit winning,
a commit's expectations deciding all or nothing of it, values of any size, everything
committed still there after reopening, and a commit that failed changing nothing while the
next one succeeds. Keys are never empty (LMDB refuses them)."""

from __future__ import annotations

import itertools
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import lmdb
import pytest

from server.startup import StartupError
from server.storage.kv import (
    Conflict,
    Delete,
    Expect,
    KeyValueStore,
    LmdbStore,
    Put,
    StorageUnavailable,
    Table,
)
from server.storage.postgres import PostgresStore, StorageFenced
from tests.postgres import PostgresServer, running_postgres

pytestmark = pytest.mark.xdist_group("kv-conformance")

Opener = Callable[[], KeyValueStore]
_databases = itertools.count()


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with running_postgres(durable=True) as server:
        yield server


@pytest.fixture(params=["lmdb", "postgres"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens the same store again each call (a reopen sees what was committed before)."""
    opened: list[KeyValueStore] = []
    if request.param == "lmdb":

        def open_store() -> KeyValueStore:
            store = LmdbStore(str(tmp_path / "log"))
            opened.append(store)
            return store

    else:
        server: PostgresServer = request.getfixturevalue("postgres")
        dbname = f"kv_{next(_databases)}"
        server.psql(f'CREATE DATABASE "{dbname}"', dbname="postgres")
        conninfo = server.libpq().replace(f"dbname={server.dbname}", f"dbname={dbname}")

        def open_store() -> KeyValueStore:
            store = PostgresStore(conninfo)
            opened.append(store)
            return store

    yield open_store
    for store in opened:
        store.close()


def test_get_returns_what_was_put_and_none_for_what_was_not(opener: Opener) -> None:
    store = opener()
    store.commit([Put(Table.STREAMS, b"a", b"1"), Put(Table.BASINS, b"a", b"2")])
    assert store.get(Table.STREAMS, b"a") == b"1"
    assert store.get(Table.BASINS, b"a") == b"2"  # tables are separate key spaces
    assert store.get(Table.STREAMS, b"b") is None
    assert store.get(Table.TAILS, b"a") is None


def test_scans_are_half_open_in_bytewise_order_with_limits(opener: Opener) -> None:
    store = opener()
    keys = [b"\x00", b"\x00\x00", b"\x01", b"a", b"ab", b"b", b"\x7f", b"\x80", b"\xff"]
    store.commit([Put(Table.BATCHES, key, key + b"!") for key in reversed(keys)])
    ordered = sorted(keys)
    everything = store.scan(Table.BATCHES, b"", None, sys.maxsize)
    assert everything == [(key, key + b"!") for key in ordered]
    assert [k for k, _ in store.scan(Table.BATCHES, b"\x00", b"b", 100)] == [
        key for key in ordered if b"\x00" <= key < b"b"
    ]
    assert [k for k, _ in store.scan(Table.BATCHES, b"a", None, 2)] == [b"a", b"ab"]
    assert store.scan(Table.BATCHES, b"a", b"a", 10) == []
    assert store.scan(Table.BATCHES, b"\xff\xff", None, 10) == []
    assert store.scan(Table.BATCHES, b"", None, 0) == []


def test_scan_map_projects_each_value_in_order(opener: Opener) -> None:
    store = opener()
    store.commit([Put(Table.TIMESTAMPS, bytes([i]), bytes([i]) * i) for i in range(1, 6)])
    lengths = store.scan_map(Table.TIMESTAMPS, b"\x02", b"\x05", 10, lambda view: len(view))
    assert lengths == [(b"\x02", 2), (b"\x03", 3), (b"\x04", 4)]
    firsts = store.scan_map(Table.TIMESTAMPS, b"", None, 2, lambda view: bytes(view[:1]))
    assert firsts == [(b"\x01", b"\x01"), (b"\x02", b"\x02")]


def test_the_last_write_of_a_key_in_a_commit_wins(opener: Opener) -> None:
    store = opener()
    store.commit([Put(Table.SYSTEM, b"gone", b"old"), Put(Table.SYSTEM, b"kept", b"old")])
    store.commit(
        [
            Put(Table.SYSTEM, b"kept", b"first"),
            Delete(Table.SYSTEM, b"kept"),
            Put(Table.SYSTEM, b"kept", b"last"),
            Put(Table.SYSTEM, b"gone", b"new"),
            Delete(Table.SYSTEM, b"gone"),
            Delete(Table.SYSTEM, b"never-there"),
        ]
    )
    assert store.get(Table.SYSTEM, b"kept") == b"last"
    assert store.get(Table.SYSTEM, b"gone") is None
    assert store.get(Table.SYSTEM, b"never-there") is None


def test_large_values_and_many_keys_round_trip(opener: Opener) -> None:
    store = opener()
    big = os.urandom(2 << 20)  # incompressible, so the size is the size
    store.commit([Put(Table.BATCHES, b"big", big)])
    store.commit([Put(Table.USAGE, i.to_bytes(4, "big"), b"v%d" % i) for i in range(5000)])
    assert store.get(Table.BATCHES, b"big") == big
    assert store.scan_map(Table.BATCHES, b"big", None, 1, len) == [(b"big", len(big))]
    counted = store.scan(Table.USAGE, b"", None, sys.maxsize)
    assert len(counted) == 5000 and counted[4999] == ((4999).to_bytes(4, "big"), b"v4999")
    assert store.size_bytes() >= len(big)


def test_what_was_committed_is_there_after_reopening(opener: Opener) -> None:
    store = opener()
    store.commit([Put(Table.TAILS, b"s1", b"tail-1"), Put(Table.STREAMS, b"s1", b"config")])
    store.commit([Delete(Table.STREAMS, b"s1")])
    store.close()
    reopened = opener()
    assert reopened.get(Table.TAILS, b"s1") == b"tail-1"
    assert reopened.get(Table.STREAMS, b"s1") is None


def test_a_commit_applies_only_if_its_expectations_hold(opener: Opener) -> None:
    store = opener()
    store.commit([Put(Table.TAILS, b"s1", b"v1")])
    store.commit(
        [
            Expect(Table.TAILS, b"s1", b"v1"),
            Expect(Table.TAILS, b"s2", None),
            Put(Table.TAILS, b"s1", b"v2"),
            Put(Table.BATCHES, b"b1", b"first"),
        ]
    )
    assert store.get(Table.TAILS, b"s1") == b"v2"
    with pytest.raises(Conflict) as info:
        store.commit(
            [
                Expect(Table.TAILS, b"s1", b"v1"),  # stale: v2 is there now
                Expect(Table.TAILS, b"s2", None),  # holds; told anyway
                Put(Table.TAILS, b"s1", b"v3"),
                Put(Table.BATCHES, b"b2", b"second"),
            ]
        )
    assert info.value.actual == {(Table.TAILS, b"s1"): b"v2", (Table.TAILS, b"s2"): None}
    assert store.get(Table.TAILS, b"s1") == b"v2"
    assert store.get(Table.BATCHES, b"b2") is None
    with pytest.raises(Conflict) as absent:
        store.commit([Expect(Table.TAILS, b"s3", b"v1"), Put(Table.TAILS, b"s3", b"v2")])
    assert absent.value.actual == {(Table.TAILS, b"s3"): None}
    assert store.get(Table.TAILS, b"s3") is None


def test_a_failed_commit_changes_nothing_and_the_next_one_succeeds(
    opener: Opener, request: pytest.FixtureRequest
) -> None:
    store = opener()
    store.commit([Put(Table.TAILS, b"t", b"before")])
    if isinstance(store, PostgresStore):
        # The connection is cut under the commit's feet, as a failover or a network fault does.
        server: PostgresServer = request.getfixturevalue("postgres")
        store.commit([Put(Table.SYSTEM, b"warm", b"up")])
        _cut_connections(server, store)
        with pytest.raises(StorageUnavailable):
            store.commit([Put(Table.TAILS, b"t", b"lost"), Put(Table.TAILS, b"u", b"lost")])
    else:
        with pytest.raises(lmdb.BadValsizeError):  # an empty key, after a good put
            store.commit([Put(Table.TAILS, b"u", b"x"), Put(Table.TAILS, b"", b"x")])
    assert store.get(Table.TAILS, b"t") == b"before"
    assert store.get(Table.TAILS, b"u") is None
    store.commit([Put(Table.TAILS, b"t", b"after")])
    assert store.get(Table.TAILS, b"t") == b"after"


def test_postgres_without_fsync_is_refused() -> None:
    with running_postgres(durable=False) as server, pytest.raises(StartupError) as refused:
        PostgresStore(server.libpq())
    assert "fsync" in str(refused.value)


def _cut_connections(server: PostgresServer, store: PostgresStore) -> None:
    """Terminate every connection the store has, as a failover or a network fault does."""
    dbname = store._conninfo.split("dbname=")[1].split()[0]
    server.psql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        f"WHERE datname = '{dbname}' AND application_name = 's2s' AND pid <> pg_backend_pid()",
        dbname="postgres",
    )


@pytest.fixture
def postgres_conninfo(postgres: PostgresServer) -> str:
    dbname = f"kv_{next(_databases)}"
    postgres.psql(f'CREATE DATABASE "{dbname}"', dbname="postgres")
    return postgres.libpq().replace(f"dbname={postgres.dbname}", f"dbname={dbname}")


def test_a_second_server_on_one_database_is_refused_until_the_first_stops(
    postgres_conninfo: str,
) -> None:
    first = PostgresStore(postgres_conninfo)
    with pytest.raises(StartupError) as refused:
        PostgresStore(postgres_conninfo)
    assert "another s2s server" in str(refused.value)
    first.close()
    PostgresStore(postgres_conninfo).close()


def test_a_server_whose_database_was_taken_over_never_writes_again(
    postgres: PostgresServer, postgres_conninfo: str
) -> None:
    """The first server's connection is cut and a second server starts on the database before
    the first reconnects: the first must not write on its stale view of the tails."""
    first = PostgresStore(postgres_conninfo)
    first.commit([Put(Table.TAILS, b"s", b"1")])
    _cut_connections(postgres, first)
    second = PostgresStore(postgres_conninfo)
    second.commit([Put(Table.TAILS, b"s", b"2")])
    with pytest.raises(StorageUnavailable):
        first.commit([Put(Table.TAILS, b"s", b"stale")])  # meets the cut connection
    for _ in range(2):
        with pytest.raises(StorageFenced):
            first.commit([Put(Table.TAILS, b"s", b"stale")])
    assert second.get(Table.TAILS, b"s") == b"2"
    first.close()
    second.close()


def test_reads_racing_close_end_cleanly_and_leave_nothing_open(
    opener: Opener, request: pytest.FixtureRequest
) -> None:
    """A background task cancelled at shutdown may still be reading on its thread while the
    store closes: its reads must end with an error, never crash the process (LMDB unmaps the
    file on close) or open a connection again (PostgreSQL)."""
    store = opener()
    store.commit([Put(Table.USAGE, i.to_bytes(2, "big"), b"v" * 100) for i in range(2000)])
    stop = threading.Event()
    outcomes: list[str] = []

    def read_until_refused() -> None:
        reads = 0
        while not stop.is_set():
            try:
                store.scan(Table.USAGE, b"", None, 500)
            except Exception as error:  # the point: which error, and that it is one
                outcomes.append(type(error).__name__)
                return
            reads += 1
        outcomes.append(f"still reading after {reads}")

    readers = [threading.Thread(target=read_until_refused) for _ in range(4)]
    for reader in readers:
        reader.start()
    time.sleep(0.2)
    store.close()
    time.sleep(0.2)
    stop.set()
    for reader in readers:
        reader.join(10)
    assert len(outcomes) == 4 and not any(o.startswith("still") for o in outcomes), outcomes
    if isinstance(store, PostgresStore):
        server: PostgresServer = request.getfixturevalue("postgres")
        dbname = store._conninfo.split("dbname=")[1].split()[0]
        left = server.psql(
            "SELECT count(*) FROM pg_stat_activity "
            f"WHERE datname = '{dbname}' AND application_name = 's2s'",
            dbname="postgres",
        )
        assert left.strip() == "0", f"{left} connections left open"


def test_a_store_one_process_writes_leads_every_role(opener: Opener) -> None:
    """Only a store shared by several processes (`PostgresStore(exclusive=False)`) may not
    lead: tests/test_shared_store.py."""
    store = opener()
    assert not store.shared
    assert store.leads("background-jobs") and store.leads("another role")
