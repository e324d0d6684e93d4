"""PostgreSQL failover under s2s: a primary with a synchronous standby (`tests/postgres.py`),
the primary killed with kill -9 and the standby promoted, while s2s, started with a multi-host
connection string, keeps serving.

- A flood of appends from several writers across the failover: every acknowledged batch is on
  the promoted server, read back through s2s, whole and at its acknowledged sequence numbers;
  the stream is contiguous; no batch is there twice or in part; appends and reads that failed
  during the outage failed with a retryable code (never `other`, never a traceback); appends
  resume within 30 s of the kill (the time is printed); the server retook its writer's lock.
- The store alone: a commit whose connection is cut while it waits for the standby (committed
  on the primary only) is acknowledged only once the standby has it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from client import S2SClient, S2SError
from server.storage.kv import Put, StorageUnavailable, Table
from server.storage.postgres import PostgresStore
from tests.grpc_api.conftest import BASIN
from tests.postgres import running_replicated_postgres
from tests.server_process import ServerProcess

pytestmark = pytest.mark.xdist_group("postgres-failover")

STREAM = "failover"
WRITERS = 4
FLOOD_BEFORE_KILL_S = 1.5
PROMOTE_AFTER_S = 1.0
"""The outage: how long after the kill the standby is promoted (failure detection, in a real
deployment: Patroni's TTL)."""
RESUME_S_MAX = 30.0
ACKS_AFTER_PROMOTION = 40
RETRYABLE_CODES = {"unavailable", "storage"}
"""`storage`: an append refused while the committer recovers from the failed commit before it
(nothing of it written); `unavailable`: the database unreachable, or a commit cut off whose
outcome could not be learned."""


@dataclass
class Sent:
    bodies: list[bytes]
    sent_s: float
    start: int | None = None  # set once acknowledged
    acked_s: float | None = None
    error: str | None = None


async def _write(client: S2SClient, writer: int, sent: list[Sent], stop: asyncio.Event) -> None:
    stream = client.stream(BASIN, STREAM)
    number = 0
    while not stop.is_set():
        batch = Sent([b"w%d-%d-%d" % (writer, number, j) for j in range(1 + number % 5)], 0.0)
        number += 1
        batch.sent_s = time.monotonic()
        sent.append(batch)
        try:
            ack = await asyncio.wait_for(stream.append(batch.bodies), 90)
        except S2SError as error:
            batch.error = f"{error.code} ({error.status})"
            await asyncio.sleep(0.05)
            continue
        batch.start, batch.acked_s = ack.start.seq_num, time.monotonic()
        assert ack.end.seq_num - ack.start.seq_num == len(batch.bodies)


async def _read(client: S2SClient, outcomes: list[tuple[float, str]], stop: asyncio.Event) -> None:
    """Unary reads all along: they run on the server's worker threads, each with its own
    connection, which the failover cuts."""
    stream = client.stream(BASIN, STREAM)
    while not stop.is_set():
        try:
            await stream.read(seq_num=0, count=5)
            outcomes.append((time.monotonic(), "ok"))
        except S2SError as error:
            outcomes.append((time.monotonic(), error.code))
        await asyncio.sleep(0.02)


async def test_a_failover_under_a_flood_keeps_every_acknowledged_record(tmp_path: Path) -> None:
    with running_replicated_postgres(dbname="s2s_log") as cluster:
        storage = ["--storage", f"postgres:{cluster.libpq()}"]
        server = ServerProcess(str(tmp_path / "a"), extra_args=storage).start()
        try:
            # No retries: every failure of the outage is seen, and appends are never retried.
            async with S2SClient(server.target, retries=0) as client:
                await client.create_basin(BASIN)
                await client.create_stream(BASIN, STREAM)
                # One record first, so that the reads have something to read.
                first = Sent([b"first"], time.monotonic(), 0)
                ack = await client.stream(BASIN, STREAM).append(first.bodies)
                first.acked_s = time.monotonic()
                assert ack.start.seq_num == 0
                sent: list[Sent] = [first]
                reads: list[tuple[float, str]] = []
                stop = asyncio.Event()
                tasks = [
                    asyncio.create_task(_write(client, writer, sent, stop))
                    for writer in range(WRITERS)
                ]
                tasks.append(asyncio.create_task(_read(client, reads, stop)))
                await asyncio.sleep(FLOOD_BEFORE_KILL_S)
                acked_before = sum(batch.start is not None for batch in sent)
                await asyncio.to_thread(cluster.kill_primary)
                killed_s = time.monotonic()
                await asyncio.sleep(PROMOTE_AFTER_S)
                await asyncio.to_thread(cluster.promote_standby)
                promoted_s = time.monotonic()
                deadline_s = killed_s + RESUME_S_MAX + 10
                while time.monotonic() < deadline_s and (
                    sum(b.acked_s is not None and b.sent_s > promoted_s for b in sent)
                    < ACKS_AFTER_PROMOTION
                ):
                    await asyncio.sleep(0.1)
                stop.set()
                await asyncio.gather(*tasks)

            acked = [batch for batch in sent if batch.start is not None]
            after_kill = [b.acked_s for b in sent if b.acked_s is not None and b.sent_s > killed_s]
            assert after_kill, "no append succeeded after the failover"
            resumed_s = min(after_kill) - killed_s
            errors = sorted({batch.error for batch in sent if batch.error is not None})
            print(
                f"\nfailover: promotion done {promoted_s - killed_s:.2f} s after the kill; first "
                f"append sent after the kill acknowledged {resumed_s:.2f} s after it; "
                f"{len(acked)} batches acknowledged ({acked_before} before the kill), "
                f"{len(sent) - len(acked)} failed: {errors}"
            )
            assert resumed_s < RESUME_S_MAX
            assert acked_before > 0
            assert {error.split()[0] for error in errors} <= RETRYABLE_CODES, errors
            read_errors = {code for _, code in reads if code != "ok"}
            assert read_errors <= {"unavailable"}, read_errors
            assert any(code == "ok" and at > promoted_s for at, code in reads), "reads resumed"

            # Read back through s2s, which now reads the promoted server.
            async with S2SClient(server.target) as client:
                stored = await _read_all(client)
            assert [seq_num for seq_num, _ in stored] == list(range(len(stored)))
            where = {body: seq_num for seq_num, body in stored}
            assert len(where) == len(stored), "a body is in the stream twice"
            for batch in sent:
                places = [where.get(body) for body in batch.bodies]
                if batch.start is not None:
                    assert places == list(range(batch.start, batch.start + len(batch.bodies)))
                elif places != [None] * len(places):  # not acknowledged, yet there: whole
                    start = places[0]
                    assert start is not None, places
                    assert places == list(range(start, start + len(places))), places
            assert len(stored) == sum(
                len(b.bodies) for b in sent if where.get(b.bodies[0]) is not None
            )

            # The server holds the writer's lock on the promoted server again.
            second = ServerProcess(str(tmp_path / "b"), extra_args=storage)
            with pytest.raises(RuntimeError):
                second.start()
            assert "another s2s server is writing" in "".join(second.log)
        finally:
            server.stop()
        log = "".join(server.log)
        print("".join(line for line in server.log if "PostgreSQL" in line))
        assert "Traceback" not in log, log
        assert "reconnected to PostgreSQL" in log


async def _read_all(client: S2SClient) -> list[tuple[int, bytes]]:
    stream = client.stream(BASIN, STREAM)
    tail = (await stream.check_tail()).seq_num
    records: list[tuple[int, bytes]] = []
    async for batch in stream.read_session(seq_num=0, count=tail):
        records.extend((record.seq_num, record.body) for record in batch.records)
    return records


def test_a_commit_cut_while_it_waits_for_the_standby_succeeds_once_the_standby_has_it() -> None:
    """The standby is down, so the primary holds the commit until it comes back; cutting the
    connection then leaves the commit on the primary only (PostgreSQL has committed it there).
    The store must neither fail it (it is in the database: its sequence numbers would be given
    out again) nor acknowledge it before the standby has it."""
    with running_replicated_postgres(dbname="s2s_log") as cluster:
        store = PostgresStore(cluster.libpq())
        try:
            store.commit([Put(Table.TAILS, b"before", b"1")])
            cluster.stop_standby()
            outcome: list[BaseException | None] = []

            def commit() -> None:
                try:
                    store.commit([Put(Table.TAILS, b"cut", b"2")])
                    outcome.append(None)
                except BaseException as error:  # the point: whether it raises
                    outcome.append(error)

            thread = threading.Thread(target=commit)
            thread.start()
            waiting = _wait_for_sync_rep(cluster.primary.psql)
            time.sleep(0.5)
            assert thread.is_alive() and not outcome, outcome  # not before the standby has it
            cluster.primary.psql(f"SELECT pg_terminate_backend({waiting})")
            time.sleep(1.0)
            assert thread.is_alive() and not outcome, outcome
            # It reconnected and waits in a commit of its own, for the standby.
            _wait_for_sync_rep(cluster.primary.psql, other_than=waiting)
            cluster.start_standby()
            thread.join(30)
            assert outcome == [None]
            cluster.kill_primary()
            cluster.promote_standby()
            assert store.get(Table.TAILS, b"cut") == b"2"
            # The first commit meets the connection the kill cut, before anything was sent.
            with pytest.raises(StorageUnavailable):
                store.commit([Put(Table.TAILS, b"after", b"3")])
            assert store.get(Table.TAILS, b"after") is None
            store.commit([Put(Table.TAILS, b"after", b"3")])
            assert store.get(Table.TAILS, b"after") == b"3"
        finally:
            store.close()


def _wait_for_sync_rep(psql: Callable[[str], str], other_than: int = 0) -> int:
    """The pid of the store's backend waiting for the standby's flush (not `other_than`)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pid = psql(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 's2s' "
            f"AND wait_event = 'SyncRep' AND pid <> {other_than}"
        )
        if pid:
            return int(pid)
        time.sleep(0.05)
    raise AssertionError("no commit waits for the standby")
