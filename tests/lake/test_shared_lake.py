"""Materializations on servers that share a PostgreSQL stream store and a PostgreSQL lake
catalog (ADR 0013): one server at a time runs them, another takes over within seconds when its
database session ends, a leader that has not noticed it lost the lead applies nothing twice,
and status, ingest and lifecycle work through any server.

Each "node" is a whole `StreamStore` (`PostgresStore(exclusive=False)`) with its own `Lake`
(its own DuckDB instance and lake directory) in one process; what they share is the stream
database, the catalog database and the data path, as separate processes would.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import threading
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from s2s.config import StreamConfig
from s2s.errors import S2Error
from server.lake.apply import Applier, RecordBatch
from server.lake.connection import LakeSettings, lake_cursor, open_lake
from server.lake.data_files import DataFiles, LakeConflict
from server.lake.definition import INGEST_BASIN, MaterializationSpec, build_materialization
from server.lake.ingest import IngestRequest, parse_ingest_request
from server.lake.materializations import LAKE_ROLE
from server.lake.registry import (
    CONFLICT_ATTEMPTS_MAX,
    Checkpoint,
    checkpoint,
    insert,
    load_all,
)
from server.lake.runner_reports import report_key
from server.lake.service import Lake
from server.storage.choice import POSTGRES_PREFIX
from server.storage.kv import KeyValueStore, Table
from server.storage.postgres import LEAD_LOCK_CLASS
from server.streamstore import StreamStore
from tests.conftest import MANUAL_JOBS, ManualClock, make_batch
from tests.crash.faults import FaultyStore
from tests.storage_mode import empty_tables
from tests.test_shared_store import open_node

TABLE = "bronze.events"
NAME = "events"
STREAM = TABLE
"""The table's ingest stream, in `INGEST_BASIN`."""
TAKEOVER_S_MAX = 5.0
"""How long another node may take to run the materializations once the leader's session
ends: a check every `LEAD_CHECK_S` (1 s), the runner's start and its first commit."""

_catalog_ids = itertools.count()
T = TypeVar("T")


@dataclass
class LakeNode:
    store: StreamStore
    lake: Lake

    async def close(self) -> None:
        await self.lake.close()
        await self.store.close()

    async def state(self) -> str:
        return (await self.lake.materialization_status(NAME)).progress.state


@dataclass(frozen=True)
class SharedLake:
    storage: str
    catalog: str
    data_path: Path
    tmp: Path

    async def open_node(
        self, name: str, wrap: Callable[[KeyValueStore], KeyValueStore] | None = None
    ) -> LakeNode:
        store = await open_node(self.storage, ManualClock(), MANUAL_JOBS, wrap)
        settings = LakeSettings(
            root=self.tmp / name / "lake",
            catalog=self.catalog,
            data_path=str(self.data_path),
            threads=1,
            memory_limit_mib=256,
            linger_s=0.05,
            maintenance_interval_s=0,
            reopen_after_commits=0,
        )
        try:
            lake = await Lake.open(store, settings)
        except BaseException:
            await store.close()
            raise
        return LakeNode(store, lake)

    @contextlib.asynccontextmanager
    async def node(
        self, name: str, wrap: Callable[[KeyValueStore], KeyValueStore] | None = None
    ) -> AsyncIterator[LakeNode]:
        opened = await self.open_node(name, wrap)
        try:
            yield opened
        finally:
            await opened.close()


def _catalog_database(storage: str) -> str:
    """A new, empty database on the stream store's PostgreSQL server: its DuckLake catalog."""
    conninfo = storage[len(POSTGRES_PREFIX) :]
    name = f"lake_catalog_{next(_catalog_ids)}_{time.monotonic_ns()}"
    with psycopg.connect(conninfo, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return make_conninfo(conninfo, dbname=name)


@pytest.fixture
def shared(postgres_storage: str, tmp_path: Path) -> SharedLake:
    empty_tables(postgres_storage)
    catalog = "postgres:" + _catalog_database(postgres_storage)
    return SharedLake(postgres_storage, catalog, tmp_path / "shared-data", tmp_path)


async def _eventually(check: Callable[[], Any], timeout_s: float = TAKEOVER_S_MAX) -> float:
    """Seconds until the awaitable `check()` returns true, within `timeout_s`."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"not within {timeout_s} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def _leading(node: LakeNode) -> bool:
    return node.lake.leading


async def _not_leading(node: LakeNode) -> bool:
    return not node.lake.leading


async def _running_here(node: LakeNode) -> bool:
    """Whether `node` leads and its own runner runs (not only reports another's running)."""
    return node.lake.leading and await _state_is(node, "running")


async def _state_is(node: LakeNode, state: str) -> bool:
    try:
        return await node.state() == state
    except S2Error as error:  # not (yet) known on this node
        assert error.code == "materialization_not_found", error
        return False


def _ingest_request(rows: list[dict[str, Any]]) -> IngestRequest:
    body = {"data": rows, "config": {"table": TABLE, "wait": True}}
    return parse_ingest_request(
        json.dumps(body).encode(), content_type="application/json", content_encoding=None, query={}
    )


async def _rows(node: LakeNode) -> tuple[int, int]:
    """How many rows the table holds, and how many distinct ids."""
    table, _ = await node.lake.query(f"SELECT count(*), count(DISTINCT id) FROM {TABLE}")
    return table.column(0)[0].as_py(), table.column(1)[0].as_py()


async def _declare(node: LakeNode) -> None:
    await node.lake.create_materialization(
        MaterializationSpec(name=NAME, table=TABLE, create_table=True)
    )


class Appender:
    """Appends `{"id": n}` records, one per batch, to the ingest stream through a node, every
    few milliseconds, until stopped: the traffic a takeover happens under."""

    def __init__(self, store: StreamStore) -> None:
        self._store = store
        self.sent = 0
        self._stopping = False
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while not self._stopping:
            await self._store.append(
                INGEST_BASIN, STREAM, make_batch(json.dumps({"id": self.sent}).encode())
            )
            self.sent += 1
            await asyncio.sleep(0.005)

    async def until(self, count: int) -> None:
        while self.sent < count:
            await asyncio.sleep(0.01)

    async def stop(self) -> int:
        """How many records were appended, once the last append is acknowledged."""
        self._stopping = True
        await self._task
        return self.sent


async def _all_applied(node: LakeNode, count: int) -> None:
    """Wait until the checkpoint covers the stream's first `count` records."""

    async def applied() -> bool:
        status = await node.lake.materialization_status(NAME)
        return status.progress.next_seq_num >= count

    await _eventually(applied, timeout_s=15)


async def test_one_node_runs_it_and_any_node_ingests_shows_and_controls_it(
    shared: SharedLake,
) -> None:
    async with shared.node("a") as a:
        await _eventually(lambda: _leading(a))
        async with shared.node("b") as b:
            assert not b.lake.leading
            # Declared through the node that does not run it: the leader picks it up.
            await _declare(b)
            assert not b.lake.leading
            await _eventually(lambda: _state_is(a, "running"))
            await _eventually(lambda: _state_is(b, "running"))  # as a reports it

            # Ingest through b waits for a's commit, and answers once the rows are there.
            result = await b.lake.ingest(_ingest_request([{"id": i} for i in range(100)]))
            assert result.snapshot_id is not None, result.warnings
            assert (result.successful_rows, result.rejected) == (100, ())
            assert await _rows(b) == (100, 100)
            # A row the materialization rejects is named in b's answer (from the dead letters).
            result = await b.lake.ingest(_ingest_request([{"id": "x"}, {"id": 100}]))
            assert result.snapshot_id is not None, result.warnings
            assert [(row.index, row.code) for row in result.rejected] == [(0, "rejected")]
            assert await _rows(a) == (101, 101)

            # b's status is the catalog's checkpoint.
            status = await b.lake.materialization_status(NAME)
            assert status.progress.state == "running"
            assert (status.progress.next_seq_num, status.tail_seq_num) == (102, 102)
            assert (status.progress.rows_applied, status.progress.rows_rejected) == (101, 1)
            assert status.lag_records == 0

            # Pause, resume and delete through b reach a.
            await b.lake.pause(NAME)
            await _eventually(lambda: _state_is(a, "paused"))
            await b.lake.resume(NAME)
            await _eventually(lambda: _state_is(a, "running"))
            await _eventually(lambda: _state_is(b, "running"))
            assert not b.lake.leading
            await b.lake.delete(NAME)

            async def forgotten() -> bool:
                return await a.lake.list_materializations() == []

            await _eventually(forgotten)
        assert await _rows(a) == (101, 101)


async def test_any_node_says_what_the_leaders_runner_says(shared: SharedLake) -> None:
    """A node that does not run a materialization answers its status with the state, error and
    last commit the leader reports (runner_reports.py): waiting for its source stream, with
    why, then running, with its last commit's time; once deleted, the report goes too."""
    source = ("lake-sources", "later")
    async with shared.node("a") as a:
        await _eventually(lambda: _leading(a))
        async with shared.node("b") as b:
            spec = MaterializationSpec(
                name=NAME, table=TABLE, basin=source[0], stream=source[1], create_table=True
            )
            await b.lake.create_materialization(spec)
            await _eventually(lambda: _state_is(b, "waiting_for_stream"), timeout_s=10)
            status = await b.lake.materialization_status(NAME)
            assert status.progress.last_error is not None
            assert source[0] in status.progress.last_error, status.progress.last_error

            await b.store.create_stream_if_absent(*source, StreamConfig())
            await b.store.append(*source, make_batch(json.dumps({"id": 1}).encode()))
            await _eventually(lambda: _state_is(b, "running"), timeout_s=30)

            async def committed() -> bool:
                status = await b.lake.materialization_status(NAME)
                return status.progress.last_commit_at is not None

            await _eventually(committed, timeout_s=15)
            status = await b.lake.materialization_status(NAME)
            assert status.progress.last_error is None
            assert (status.progress.next_seq_num, status.progress.rows_applied) == (1, 1)

            await b.lake.delete(NAME)
            key = report_key(NAME)

            async def report_gone() -> bool:
                return await asyncio.to_thread(b.store.kv.get, Table.SYSTEM, key) is None

            await _eventually(report_gone)


def _terminate_lake_leader(storage: str) -> None:
    """End the session holding the lake's leadership lock, as a network fault or a database
    restart would."""
    with psycopg.connect(storage[len(POSTGRES_PREFIX) :], autocommit=True) as connection:
        ended = connection.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
            "AND classid = %s AND objid = %s AND objsubid = 2 AND granted",
            (LEAD_LOCK_CLASS, zlib.crc32(LAKE_ROLE.encode())),
        ).fetchall()
    assert ended == [(True,)]


@pytest.mark.parametrize("leader_ends", ["closed", "cut off"])
async def test_another_node_takes_over_and_every_record_lands_once(
    shared: SharedLake, leader_ends: str
) -> None:
    a = await shared.open_node("a")
    try:
        await _eventually(lambda: _leading(a))
        async with shared.node("b") as b:
            await _declare(a)
            await _eventually(lambda: _state_is(a, "running"))
            appender = Appender(b.store)
            await appender.until(50)
            ended = time.monotonic()
            if leader_ends == "closed":
                await a.close()
            else:
                await asyncio.to_thread(_terminate_lake_leader, shared.storage)
            await _eventually(lambda: _running_here(b))
            taken_over_s = time.monotonic() - ended
            print(f"taken over {taken_over_s:.2f} s after the leader was {leader_ends}")
            if leader_ends == "cut off":
                await _eventually(lambda: _not_leading(a))
            await appender.until(appender.sent + 50)
            sent = await appender.stop()
            await _all_applied(b, sent)
            assert await _rows(b) == (sent, sent)
    finally:
        if leader_ends == "cut off":
            await a.close()


class StaleLeader(FaultyStore):
    """A store whose server never notices that it lost a role it once led: a leader that was
    paused (GC, SIGSTOP) while another took over, and wakes up still running."""

    def __init__(self, inner: KeyValueStore) -> None:
        super().__init__(inner)
        self.led: set[str] = set()

    def leads(self, role: str) -> bool:
        if role in self.led or self.inner.leads(role):
            self.led.add(role)
            return True
        return False


async def test_a_leader_that_missed_the_takeover_applies_nothing_twice(
    shared: SharedLake, caplog: pytest.LogCaptureFixture
) -> None:
    async with shared.node("a", wrap=StaleLeader) as a, shared.node("b") as b:
        await _eventually(lambda: _leading(a))
        await _declare(a)
        await _eventually(lambda: _state_is(a, "running"))
        appender = Appender(b.store)
        await appender.until(50)
        await asyncio.to_thread(_terminate_lake_leader, shared.storage)
        await _eventually(lambda: _state_is(b, "running"))
        assert a.lake.leading and await a.state() == "running", "two runners at once"
        await appender.until(appender.sent + 150)
        sent = await appender.stop()
        await _all_applied(b, sent)
        await _all_applied(a, sent)
        assert await _rows(b) == (sent, sent)
    refused = [r for r in caplog.records if "another runner committed" in r.getMessage()]
    conflicts = [
        r for r in caplog.records if "continuing from the stored checkpoint" in r.getMessage()
    ]
    assert conflicts, "the two runners never met: the test did not test anything"
    print(f"{len(conflicts)} commits refused, {len(refused)} of them by the checkpoint's condition")


# --- two appliers of one materialization, on two lakes over one catalog -----------------


class HeldCommit:
    """A cursor that runs everything but waits before COMMIT until released."""

    def __init__(self, cursor: duckdb.DuckDBPyConnection) -> None:
        self._cursor = cursor
        self.waiting = threading.Event()
        self.release = threading.Event()

    def execute(self, sql: str, *args: Any) -> Any:
        if sql == "COMMIT":
            self.waiting.set()
            assert self.release.wait(30)
        return self._cursor.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)


@dataclass
class TwoLakes:
    first: duckdb.DuckDBPyConnection
    second: duckdb.DuckDBPyConnection
    files: DataFiles


@pytest.fixture
def two_lakes(shared: SharedLake) -> Iterator[TwoLakes]:
    connections = [
        open_lake(
            LakeSettings(
                root=shared.tmp / name / "lake",
                catalog=shared.catalog,
                data_path=str(shared.data_path),
                threads=1,
            )
        )
        for name in ("first", "second")
    ]
    try:
        yield TwoLakes(connections[0], connections[1], DataFiles(str(shared.data_path)))
    finally:
        for connection in connections:
            connection.close()


DEFINITION = build_materialization(MaterializationSpec(name="m", table="s.once", create_table=True))


def _batch(first: int, count: int, after: int) -> RecordBatch:
    seq_nums = list(range(first, first + count))
    bodies = [json.dumps({"id": n}).encode() for n in seq_nums]
    return RecordBatch.of(seq_nums, [0] * count, bodies, None, seq_nums[-1], after)


def _stored(lakes: TwoLakes) -> tuple[Checkpoint | None, list[tuple[Any, ...]]]:
    cursor = lake_cursor(lakes.first)
    rows = cursor.execute("SELECT count(*), count(DISTINCT id) FROM s.once").fetchall()
    return checkpoint(cursor, "m"), rows


def _while_held(
    held: HeldCommit, first: Callable[[], object], second: Callable[[], object]
) -> object:
    """Run `first` on a thread until its COMMIT waits at `held`, run `second` meanwhile, then
    let the COMMIT go: what `first` returned or raised."""
    outcome: list[object] = []

    def run_first() -> None:
        try:
            outcome.append(first())
        except BaseException as error:
            outcome.append(error)

    thread = threading.Thread(target=run_first)
    thread.start()
    try:
        assert held.waiting.wait(30)  # its statements ran; its COMMIT waits
        second()
    finally:
        held.release.set()
        thread.join(30)
    [result] = outcome
    return result


def test_a_batch_committed_after_another_runners_commit_is_refused(two_lakes: TwoLakes) -> None:
    """The stale runner's transaction begins after the other's commit: DuckLake sees no
    conflict, the checkpoint's condition does."""
    first = Applier(lake_cursor(two_lakes.first), two_lakes.files, DEFINITION)
    second = Applier(lake_cursor(two_lakes.second), two_lakes.files, DEFINITION)
    assert insert(lake_cursor(two_lakes.first), two_lakes.files, DEFINITION)
    first.apply(_batch(0, 10, after=-1))
    with pytest.raises(LakeConflict, match="another runner committed"):
        second.apply(_batch(0, 10, after=-1))
    with pytest.raises(LakeConflict):
        second.apply(_batch(5, 10, after=4))  # overlapping what was applied
    assert _stored(two_lakes) == (Checkpoint(9, 10, 0), [(10, 10)])
    second.apply(_batch(10, 5, after=9))  # on top of the stored checkpoint, it applies
    assert _stored(two_lakes) == (Checkpoint(14, 15, 0), [(15, 15)])


def test_ducklake_refuses_the_second_of_two_concurrent_commits(two_lakes: TwoLakes) -> None:
    """Both transactions advance the checkpoint from the same snapshot (the condition holds
    in each): the one that commits second is refused by DuckLake's own conflict check."""
    assert insert(lake_cursor(two_lakes.first), two_lakes.files, DEFINITION)
    held = HeldCommit(lake_cursor(two_lakes.first))
    first = Applier(held, two_lakes.files, DEFINITION)  # type: ignore[arg-type]
    second = Applier(lake_cursor(two_lakes.second), two_lakes.files, DEFINITION)
    outcome = _while_held(
        held,
        lambda: first.apply(_batch(0, 10, after=-1)),
        lambda: second.apply(_batch(0, 10, after=-1)),
    )
    assert isinstance(outcome, LakeConflict), outcome
    assert _stored(two_lakes) == (Checkpoint(9, 10, 0), [(10, 10)])


def test_a_declaration_is_made_again_after_a_conflicting_commit(two_lakes: TwoLakes) -> None:
    """A declaration through one server while another commits a batch: the batch commits
    first, the declaration's transaction conflicts with it (both change `s2s.checkpoints`),
    and is made again."""
    assert insert(lake_cursor(two_lakes.first), two_lakes.files, DEFINITION)
    applier = Applier(lake_cursor(two_lakes.first), two_lakes.files, DEFINITION)
    held = HeldCommit(lake_cursor(two_lakes.second))
    other = build_materialization(MaterializationSpec(name="n", table="s.other"))
    outcome = _while_held(
        held,
        lambda: insert(held, two_lakes.files, other),  # type: ignore[arg-type]
        lambda: applier.apply(_batch(0, 3, after=-1)),
    )
    assert outcome is True
    assert checkpoint(lake_cursor(two_lakes.second), "n") == Checkpoint(-1, 0, 0)
    assert _stored(two_lakes) == (Checkpoint(2, 3, 0), [(3, 3)])


def test_two_declarations_of_one_name_at_once_store_it_once(two_lakes: TwoLakes) -> None:
    """Two servers declare one name at the same instant (ingest's first use of a table through
    two of them): each sees the name free, and DuckLake lets two transactions insert into one
    table. Both also rewrite `s2s.declarations`' row, so the second COMMIT conflicts; made
    again, it finds the name taken."""
    held = HeldCommit(lake_cursor(two_lakes.second))
    outcome = _while_held(
        held,
        lambda: insert(held, two_lakes.files, DEFINITION),  # type: ignore[arg-type]
        lambda: insert(lake_cursor(two_lakes.first), two_lakes.files, DEFINITION),
    )
    assert outcome is False
    loaded = load_all(lake_cursor(two_lakes.second))
    assert loaded.damaged == []
    assert [definition.name for definition, _ in loaded.materializations] == ["m"]
    assert checkpoint(lake_cursor(two_lakes.first), "m") == Checkpoint(-1, 0, 0)


class ConflictingCommits:
    """A cursor whose COMMITs DuckLake refuses as conflicting, as long as `conflicts` lasts."""

    def __init__(self, cursor: duckdb.DuckDBPyConnection, conflicts: int) -> None:
        self._cursor = cursor
        self.conflicts = conflicts
        self.commits = 0

    def execute(self, sql: str, *args: Any) -> Any:
        if sql == "COMMIT":
            self.commits += 1
            if self.commits <= self.conflicts:
                raise duckdb.TransactionException(
                    "Failed to commit DuckLake transaction.\nTransaction conflict - injected"
                )
        return self._cursor.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)


@pytest.mark.parametrize("conflicts", [CONFLICT_ATTEMPTS_MAX - 1, CONFLICT_ATTEMPTS_MAX])
def test_a_declaration_meeting_conflicts_is_tried_again_then_unavailable(
    tmp_path: Path, conflicts: int
) -> None:
    settings = LakeSettings(root=tmp_path / "lake")
    connection = open_lake(settings)
    try:
        cursor = ConflictingCommits(lake_cursor(connection), conflicts)
        files = DataFiles(settings.data_dir)
        if conflicts < CONFLICT_ATTEMPTS_MAX:
            assert insert(cursor, files, DEFINITION)  # type: ignore[arg-type]
            assert checkpoint(lake_cursor(connection), "m") == Checkpoint(-1, 0, 0)
        else:
            with pytest.raises(S2Error) as info:
                insert(cursor, files, DEFINITION)  # type: ignore[arg-type]
            assert info.value.code == "unavailable"
            assert checkpoint(lake_cursor(connection), "m") is None
        assert cursor.commits == min(conflicts + 1, CONFLICT_ATTEMPTS_MAX)
    finally:
        connection.close()
