"""Compaction against a real server: under concurrent commits every state a reader opens is
exactly the one the commits made at its revision, and the stream stays bounded; a store of
100,000 keys opens by reading a snapshot, far fewer records than were written; and a kill -9
anywhere in a compaction loses nothing, doubles nothing, and a later run completes."""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from client import KvConflict, ReadUnwrittenError, S2SClient, SyncClient
from s2s.errors import ReadUnwritten
from s2s.kv_format import DEFAULT_BASIN
from s2s.kv_state import KvState
from s2s.records import metered_size
from s2s.v1 import records_pb2 as pb
from server.jobs import JobSettings
from server.reader import ReadLimits, ReadStart
from server.streamstore import StreamStore
from tests.conftest import decode
from tests.server_process import ServerProcess
from tests.storage_mode import storage_for

FAST = ("--kv-compaction-interval-s", "0.2")


def start(tmp_path: Path, *args: str) -> ServerProcess:
    return ServerProcess(str(tmp_path / "data"), extra_args=[*FAST, *args]).start()


@pytest.fixture
def servers() -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for process in started:
        if process.process is not None and process.process.poll() is None:
            process.stop()


def stream_records(client: SyncClient, stream: str) -> list[pb.SequencedRecord]:
    """Every record of the store's stream that a reader gets, from its trim point on."""
    records: list[pb.SequencedRecord] = []
    while True:
        position = records[-1].seq_num + 1 if records else 0
        try:
            batch = client.read(DEFAULT_BASIN, stream, seq_num=position, clamp=True)
        except ReadUnwrittenError:
            return records
        records.extend(batch.records)


def compactions_done(server: ServerProcess) -> int:
    return sum("kv compaction of" in line and " done:" in line for line in server.log)


def wait_for(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.05)


def wait_for_line(server: ServerProcess, text: str, since: int, timeout_s: float) -> None:
    try:
        wait_for(lambda: any(text in line for line in server.log[since:]), timeout_s)
    except TimeoutError:
        raise TimeoutError(f"no {text!r} in the log:\n" + "".join(server.log[since:])) from None


async def test_compaction_under_concurrent_commits(
    tmp_path: Path, servers: list[ServerProcess]
) -> None:
    server = start(tmp_path, "--kv-compaction-min-bytes", "20000")
    servers.append(server)
    commits: list[tuple[int, dict[str, str | None]]] = []  # (first seq_num, changes)
    opened: list[tuple[int, dict[str, str]]] = []  # (revision, what a reader saw)
    stop = asyncio.Event()

    async def writer(client: S2SClient, index: int) -> None:
        store = await client.get_kv_store("busy")
        rng = random.Random(index)
        while not stop.is_set():
            changes: dict[str, str | None] = {}
            for _ in range(rng.randint(1, 5)):
                key = f"key-{rng.randrange(60)}"
                if key in store and rng.random() < 0.2:
                    del store[key]
                    changes[key] = None
                else:
                    store[key] = changes[key] = f"{index}-{rng.random()}" * 3
            try:
                revision = await store.commit()
            except KvConflict:
                await store.reload()
                continue
            commits.append((revision - len(changes), changes))

    async def reader(client: S2SClient) -> None:
        while not stop.is_set():
            store = await client.get_kv_store("busy")
            opened.append((store.revision, dict(store)))
            await asyncio.sleep(0.05)

    async with S2SClient(server.target) as client:
        tasks = [asyncio.create_task(writer(client, i)) for i in range(3)]
        tasks.append(asyncio.create_task(reader(client)))
        began = time.monotonic()
        while time.monotonic() < began + 30 and (
            compactions_done(server) < 3 or time.monotonic() < began + 4
        ):
            await asyncio.sleep(0.2)
        stop.set()
        await asyncio.gather(*tasks)
        final = await client.get_kv_store("busy")
    assert compactions_done(server) >= 3, "".join(server.log[-20:])

    def model_at(revision: int) -> dict[str, str]:
        entries: dict[str, str] = {}
        for first, changes in sorted(commits, key=lambda commit: commit[0]):
            if first >= revision:
                break
            for key, value in changes.items():
                if value is None:
                    entries.pop(key, None)
                else:
                    entries[key] = value
        return entries

    assert len(opened) > 20
    for revision, seen in opened:
        assert seen == model_at(revision), revision
    assert dict(final) == model_at(final.revision)
    assert len(commits) > 200

    # Bounded: a few runs after the last commit, the stream holds at most twice what a
    # snapshot of the live entries takes, plus --kv-compaction-min-bytes, whatever was written.
    time.sleep(2)
    with SyncClient(server.target) as sync:
        records = stream_records(sync, "kv/busy")
    stored = sum(metered_size(pb.AppendRecord(headers=r.headers, body=r.body)) for r in records)
    written = sum(
        len(key) + len(value or "") + 40 for _, changes in commits for key, value in changes.items()
    )
    snapshot = sum(len(key) + len(value) + 24 for key, value in final.items()) + 200
    assert records[0].seq_num > 0, "trimmed"
    assert stored <= 2 * snapshot + 20_000, (stored, snapshot)
    assert stored < written / 4, (stored, written)


def test_a_100k_key_store_opens_from_its_snapshot(
    tmp_path: Path, servers: list[ServerProcess]
) -> None:
    """Written with compaction off, then compacted at once by a restart with it on."""
    server = ServerProcess(str(tmp_path / "data"), extra_args=["--kv-compaction-interval-s", "0"])
    servers.append(server.start())
    keys = 100_000
    with SyncClient(server.target) as client:
        store = client.get_kv_store("big")
        for round_ in range(2):  # every key written twice: half of what is stored is garbage
            for first in range(0, keys, 1000):
                for i in range(first, first + 1000):
                    store[f"key-{i:06}"] = f"value-{i}-{round_}"
                store.commit()
        written = store.revision
        assert written == 2 * keys
    server.stop()
    server = start(tmp_path)
    servers.append(server)
    wait_for(lambda: compactions_done(server) >= 1, 60)
    with SyncClient(server.target) as client:
        started = time.perf_counter()
        opened = client.get_kv_store("big")
        open_s = time.perf_counter() - started
        records = stream_records(client, "kv/big")
    assert len(opened) == keys
    assert opened["key-000000"] == "value-0-1" and opened["key-099999"] == "value-99999-1"
    assert opened.revision >= written
    # What opening read: the snapshot (and the trim), not the 200,000 changes.
    assert len(records) < written // 1000, len(records)
    assert records[0].seq_num == written
    assert open_s < 10, open_s
    print(f"opened {keys} keys from {len(records)} records in {open_s:.2f} s")


def test_kill9_during_compaction_loses_and_doubles_nothing(
    tmp_path: Path, servers: list[ServerProcess]
) -> None:
    """Each cycle rewrites every key (so a compaction is due), waits for a compaction to
    begin, kills the server a moment later, and reads what is on disk: the store must hold
    exactly what was committed, and again once restarted. The store holds 2,000 small values
    and 120 of 100 KB (each a snapshot part of its own), so a snapshot takes a dozen appends:
    cycles go on until a kill fell between a snapshot's first part and its trim (parts on
    disk, as of a position after the trim point). Then a later compaction completes."""
    # At 8 MiB/s a snapshot of 12 MB takes 1.5 s to write: a kill after 0.05-0.8 s lands
    # among its parts, or before them.
    args = ("--kv-compaction-min-bytes", "0", "--kv-compaction-write-mib-per-s", "8")
    server = start(tmp_path, *args)
    servers.append(server)
    model: dict[str, str] = {}
    partial_seen = False

    def rewrite_every_key(round_: object) -> None:
        with SyncClient(server.target) as client:
            store = client.get_kv_store("precious")
            for i in range(2000):
                store[f"small-{i:04}"] = model[f"small-{i:04}"] = f"{round_}-{i}"
                if i % 1000 == 999:
                    store.commit()
            for i in range(120):
                store[f"large-{i:03}"] = model[f"large-{i:03}"] = f"{round_}-{i}-" + "v" * 100_000
                if i % 9 == 8:
                    store.commit()
            store.commit()

    def rewrite_until_a_compaction_begins(round_: object) -> None:
        began = len(server.log)
        rewrite_every_key(round_)
        try:
            wait_for_line(server, "entries as of", began, 10)
        except TimeoutError:
            # A compaction that began before the rewrite (the one a restart finds due) ended
            # in the middle of it, as of a position there: what came after does not yet drop
            # as much as the snapshot holds. A second rewrite does.
            began = len(server.log)
            rewrite_every_key(f"{round_}-again")
            wait_for_line(server, "entries as of", began, 60)

    rewrite_every_key(-1)
    for cycle, delay_s in enumerate([0.3, 0.05, 0.6, 0.8, 0.15, 0.45]):
        rewrite_until_a_compaction_begins(cycle)
        time.sleep(delay_s)
        server.kill()
        state, records = asyncio.run(on_disk(Path(server.data_dir)))
        assert values(state) == model  # nothing lost, nothing doubled, nothing stale
        trim_point = records[0].seq_num
        as_of = {_as_of(r) for r in records if r.headers and r.headers[0].value == b"snapshot"}
        if any(point > trim_point for point in as_of):
            partial_seen = True  # parts written, their trim not: killed in the middle
        server = ServerProcess(server.data_dir, extra_args=[*FAST, *args]).start()
        servers.append(server)
        with SyncClient(server.target) as client:
            assert dict(client.get_kv_store("precious")) == model
        if partial_seen and cycle >= 2:
            break
    assert partial_seen, "no kill landed between a snapshot's first part and its trim"
    began = len(server.log)
    rewrite_every_key("last")
    wait_for_line(server, " done:", began, 60)
    done = next(line for line in server.log[began:] if " done:" in line)
    named = re.search(r"trimmed to (\d+)", done)
    assert named is not None, done
    trimmed_to = int(named[1])
    with SyncClient(server.target) as client:
        assert dict(client.get_kv_store("precious")) == model
        records = stream_records(client, "kv/precious")
    # Commits may land between the fold as of the trim point and the snapshot's first part
    # (ADR 0015), so the record at the trim point can be a change; a snapshot as of it follows.
    trim_point = records[0].seq_num
    assert trim_point >= trimmed_to
    snapshots = [r for r in records if r.headers and r.headers[0].value == b"snapshot"]
    assert any(_as_of(snapshot) == trim_point for snapshot in snapshots)


async def on_disk(data_dir: Path) -> tuple[KvState, list[pb.SequencedRecord]]:
    """The store as a killed server left it: folded, and its stream from the trim point."""
    store = await StreamStore.open(
        str(data_dir), job_settings=JobSettings(interval_s=3600), storage=storage_for(data_dir)
    )
    records: list[pb.SequencedRecord] = []
    try:
        while True:
            start = ReadStart(seq_num=records[-1].seq_num + 1 if records else 0)
            try:
                output = await store.read(
                    DEFAULT_BASIN, "kv/precious", start, ReadLimits(clamp=True), may_create=False
                )
            except ReadUnwritten:
                break
            assert output.records is not None
            records.extend(decode(output.records.payload))
    finally:
        await store.close()
    state = KvState()
    state.fold(records)
    state.check_whole()
    return state, records


def values(state: KvState) -> dict[str, str]:
    return {key: entry.value for key, entry in state.entries.items()}


def _as_of(record: pb.SequencedRecord) -> int:
    return int({h.name: h.value for h in record.headers}[b"s2s-kv-as-of"])
