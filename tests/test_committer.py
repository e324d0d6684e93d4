"""The group committer on a real LMDB store: order kept when cheap jobs skip the encoder thread,
and one write per key per commit."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from s2s.errors import S2Error
from server.storage.committer import GroupCommitter
from server.storage.kv import Delete, LmdbStore, Put, Table, Write
from tests.crash.faults import FaultyStore


class RecordingStore(FaultyStore):
    """Keeps the writes each commit was given."""

    def __init__(self, inner: LmdbStore) -> None:
        super().__init__(inner)
        self.commits: list[list[Write]] = []

    def commit(self, writes: Sequence[Write]) -> None:
        self.commits.append(list(writes))
        super().commit(writes)


@asynccontextmanager
async def committer(tmp_path: Path) -> AsyncIterator[tuple[GroupCommitter, RecordingStore]]:
    kv = RecordingStore(LmdbStore(str(tmp_path / "log")))
    group_committer = GroupCommitter(kv, on_failure=lambda: None)
    group_committer.start()
    try:
        yield group_committer, kv
    finally:
        await group_committer.close()
        kv.close()


def submit(
    group_committer: GroupCommitter,
    writes: Sequence[Write],
    cheap: bool,
    done: list[str],
    name: str,
    prepare_s: float = 0.0,
) -> asyncio.Future[None]:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def prepare() -> Sequence[Write]:
        time.sleep(prepare_s)
        return writes

    def on_done(error: S2Error | None) -> None:
        done.append(name)
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)

    group_committer.submit(prepare, on_done, cheap=cheap)
    return future


async def test_a_cheap_job_never_overtakes_one_still_being_encoded(tmp_path: Path) -> None:
    async with committer(tmp_path) as (group_committer, kv):
        done: list[str] = []
        key = b"k"
        slow = submit(group_committer, [Put(Table.SYSTEM, key, b"slow")], False, done, "slow", 0.2)
        cheap = submit(group_committer, [Put(Table.SYSTEM, key, b"cheap")], True, done, "cheap")
        await asyncio.gather(slow, cheap)
        assert done == ["slow", "cheap"]
        assert kv.get(Table.SYSTEM, key) == b"cheap"


async def test_a_cheap_job_is_prepared_on_the_loop_when_the_encoder_is_idle(
    tmp_path: Path,
) -> None:
    async with committer(tmp_path) as (group_committer, _):
        threads: list[str] = []

        def prepare() -> Sequence[Write]:
            threads.append(threading.current_thread().name)
            return [Put(Table.SYSTEM, b"k", b"v")]

        for cheap in (True, False):
            done: asyncio.Event = asyncio.Event()

            def on_done(error: S2Error | None, done: asyncio.Event = done) -> None:
                assert error is None
                done.set()

            group_committer.submit(prepare, on_done, cheap=cheap)
            await done.wait()
        assert threads == [threading.current_thread().name, "s2s-encoder"]


async def test_a_commit_writes_each_key_once_with_its_last_value(tmp_path: Path) -> None:
    async with committer(tmp_path) as (group_committer, kv):
        done: list[str] = []
        await submit(group_committer, [Put(Table.SYSTEM, b"gone", b"0")], True, done, "setup")
        gate = kv.hold_commit()
        first = submit(group_committer, [Put(Table.SYSTEM, b"a", b"0")], True, done, "first")
        await asyncio.to_thread(gate.entered.wait)
        # These three wait behind the held commit and become one group.
        behind = [
            submit(
                group_committer,
                [Put(Table.SYSTEM, b"a", b"1"), Put(Table.SYSTEM, b"c", b"1")],
                True,
                done,
                "b1",
            ),
            submit(
                group_committer,
                [Put(Table.SYSTEM, b"a", b"2"), Delete(Table.SYSTEM, b"gone")],
                True,
                done,
                "b2",
            ),
            submit(
                group_committer,
                [Put(Table.SYSTEM, b"gone", b"back"), Delete(Table.SYSTEM, b"c")],
                True,
                done,
                "b3",
            ),
        ]
        await asyncio.sleep(0.05)
        gate.release.set()
        await asyncio.gather(first, *behind)
        assert done == ["setup", "first", "b1", "b2", "b3"]
        assert kv.commits[-1] == [
            Put(Table.SYSTEM, b"a", b"2"),
            Delete(Table.SYSTEM, b"c"),
            Put(Table.SYSTEM, b"gone", b"back"),
        ]
        assert kv.get(Table.SYSTEM, b"a") == b"2"
        assert kv.get(Table.SYSTEM, b"c") is None
        assert kv.get(Table.SYSTEM, b"gone") == b"back"
