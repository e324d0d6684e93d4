"""The group committer on a real LMDB store: jobs are prepared on the loop and committed in
submission order, and a commit writes each key once."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from s2s.errors import S2Error
from server.storage.committer import GroupCommitter
from server.storage.kv import Delete, KeyValueStore, Put, Table, Write
from tests.crash.faults import FaultyStore
from tests.storage_mode import key_value_store


class RecordingStore(FaultyStore):
    """Keeps the writes each commit was given."""

    def __init__(self, inner: KeyValueStore) -> None:
        super().__init__(inner)
        self.commits: list[list[Write]] = []

    def commit(self, writes: Sequence[Write]) -> None:
        self.commits.append(list(writes))
        super().commit(writes)


@asynccontextmanager
async def committer(tmp_path: Path) -> AsyncIterator[tuple[GroupCommitter, RecordingStore]]:
    kv = RecordingStore(key_value_store(tmp_path))
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
    done: list[str],
    name: str,
) -> asyncio.Future[None]:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def prepare() -> Sequence[Write]:
        return writes

    def on_done(error: S2Error | None) -> None:
        done.append(name)
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)

    group_committer.submit(prepare, on_done)
    return future


async def test_jobs_are_prepared_on_the_loop_and_completed_in_submission_order(
    tmp_path: Path,
) -> None:
    async with committer(tmp_path) as (group_committer, kv):
        threads: list[str] = []
        done: list[str] = []
        futures = []
        for index in range(50):

            def prepare(index: int = index) -> Sequence[Write]:
                threads.append(threading.current_thread().name)
                return [Put(Table.SYSTEM, b"k", str(index).encode())]

            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

            def on_done(
                error: S2Error | None, index: int = index, future: asyncio.Future[None] = future
            ) -> None:
                assert error is None
                done.append(str(index))
                future.set_result(None)

            group_committer.submit(prepare, on_done)
            futures.append(future)
        await asyncio.gather(*futures)
        assert set(threads) == {threading.current_thread().name}
        assert done == [str(index) for index in range(50)]
        assert kv.get(Table.SYSTEM, b"k") == b"49"


async def test_a_commit_writes_each_key_once_with_its_last_value(tmp_path: Path) -> None:
    async with committer(tmp_path) as (group_committer, kv):
        done: list[str] = []
        await submit(group_committer, [Put(Table.SYSTEM, b"gone", b"0")], done, "setup")
        gate = kv.hold_commit()
        first = submit(group_committer, [Put(Table.SYSTEM, b"a", b"0")], done, "first")
        await asyncio.to_thread(gate.entered.wait)
        # These three wait behind the held commit and become one group.
        behind = [
            submit(
                group_committer,
                [Put(Table.SYSTEM, b"a", b"1"), Put(Table.SYSTEM, b"c", b"1")],
                done,
                "b1",
            ),
            submit(
                group_committer,
                [Put(Table.SYSTEM, b"a", b"2"), Delete(Table.SYSTEM, b"gone")],
                done,
                "b2",
            ),
            submit(
                group_committer,
                [Put(Table.SYSTEM, b"gone", b"back"), Delete(Table.SYSTEM, b"c")],
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
