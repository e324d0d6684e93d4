"""`s2s serve` with one deliberately planted bug, to prove the checker catches it.

Run as `python -m tests.linearizability.broken_server BUG serve ARGS...`: the bug is patched
into this process only, then `server.cli.main` runs with the rest of the arguments. The bugs:

- `early-ack`: an append is acknowledged as soon as it is numbered, and its commit is held back
  for a second, so readers miss acked records and a kill -9 in that second loses them;
- `stale-tail`: check-tail answers a stream's tail as it was up to two seconds earlier;
- `mismatch-appended`: a conditional append that matched is appended, then answered with
  `412 seq_num_mismatch` as if it had not been;
- `ack-failed-commit`: runs as `tests/crash/faulted_server.py` (signals inject I/O faults into
  LMDB's commits), and the appends of a commit that failed are acknowledged as if it had
  succeeded;
- `lazy-sync`: LMDB commits without syncing (`MDB_NOSYNC`), and only commits that hold no
  appended records (basins, streams, metrics) sync the environment, and with it everything
  before them: a kill -9 loses nothing, since the kernel still has the pages, but a power loss
  loses what was acknowledged since the last sync.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Sequence
from typing import Any

import lmdb

from s2s.errors import S2Error, SeqNumMismatch
from s2s.records import ValidatedBatch
from server import cli
from server.sequencer import AppendAck, StreamPosition, StreamSequencer
from server.storage.committer import Chain, GroupCommitter
from server.storage.kv import LmdbStore, Table, Write
from server.streamstore import StreamStore
from tests.crash import faulted_server

COMMIT_DELAY_S = 1.0
STALE_TAIL_S = 2.0

_submit = StreamSequencer.submit


def plant_early_ack() -> None:
    commit = GroupCommitter.submit

    def delayed_commit(
        self: GroupCommitter,
        prepare: Callable[[], Sequence[Write]],
        on_done: Callable[[S2Error | None], None],
        reserved_bytes: int = 0,
        chain: Chain | None = None,
    ) -> None:
        asyncio.get_running_loop().call_later(
            COMMIT_DELAY_S, commit, self, prepare, on_done, reserved_bytes, chain
        )

    async def early_ack(
        self: StreamSequencer, batch: ValidatedBatch, doubt: int | None = None
    ) -> asyncio.Future[AppendAck]:
        await _submit(self, batch, doubt)
        end = StreamPosition(self.pending.next_seq, self.pending.last_timestamp)
        start = StreamPosition(end.seq_num - batch.count, end.timestamp)
        ack: asyncio.Future[AppendAck] = asyncio.get_running_loop().create_future()
        ack.set_result(AppendAck(start, end, end))
        return ack

    GroupCommitter.submit = delayed_commit  # type: ignore[method-assign]
    StreamSequencer.submit = early_ack  # type: ignore[method-assign]


def plant_stale_tail() -> None:
    check_tail = StreamStore.check_tail
    seen: dict[tuple[str, str], tuple[float, StreamPosition]] = {}

    async def stale_check_tail(
        self: StreamStore, basin: str, stream: str, *, may_create: bool = True
    ) -> StreamPosition:
        now = asyncio.get_running_loop().time()
        cached = seen.get((basin, stream))
        if cached is None or now - cached[0] > STALE_TAIL_S:
            cached = (now, await check_tail(self, basin, stream, may_create=may_create))
            seen[(basin, stream)] = cached
        return cached[1]

    StreamStore.check_tail = stale_check_tail  # type: ignore[method-assign]


def plant_mismatch_appended() -> None:
    async def lying_submit(
        self: StreamSequencer, batch: ValidatedBatch, doubt: int | None = None
    ) -> asyncio.Future[AppendAck]:
        ack = await _submit(self, batch, doubt)
        if batch.match_seq_num is None:
            return ack
        lie: asyncio.Future[AppendAck] = asyncio.get_running_loop().create_future()

        def on_ack(done: asyncio.Future[AppendAck]) -> None:
            error = done.exception()
            lie.set_exception(error or SeqNumMismatch(self.durable.next_seq))

        ack.add_done_callback(on_ack)
        return lie

    StreamSequencer.submit = lying_submit  # type: ignore[method-assign]


def plant_ack_failed_commit() -> None:
    faulted_server.install()

    def ack_anyway(self: GroupCommitter, group: list[Any], error: S2Error) -> None:
        try:
            self._succeed(group, set(), 0.0)
            self._on_failure()
        finally:
            with self._lock:
                self._recovering = False

    GroupCommitter._fail_and_recover = ack_anyway  # type: ignore[method-assign]


def plant_lazy_sync() -> None:
    commit_synced = LmdbStore.commit

    def open_unsynced(self: LmdbStore) -> None:
        env = lmdb.open(self._path, map_size=self._map_size_bytes, max_dbs=len(Table), sync=False)
        self._env = env
        self._dbs = {table: env.open_db(table.value) for table in Table}

    def commit_appends_unsynced(self: LmdbStore, writes: Sequence[Write]) -> None:
        commit_synced(self, writes)
        if not any(write.table is Table.BATCHES for write in writes):
            self._env.sync(True)  # what came before is durable from here on

    LmdbStore._open = open_unsynced  # type: ignore[method-assign]
    LmdbStore.commit = commit_appends_unsynced  # type: ignore[method-assign]


BUGS: dict[str, Callable[[], None]] = {
    "early-ack": plant_early_ack,
    "stale-tail": plant_stale_tail,
    "mismatch-appended": plant_mismatch_appended,
    "ack-failed-commit": plant_ack_failed_commit,
    "lazy-sync": plant_lazy_sync,
}


def main(argv: list[str]) -> int:
    BUGS[argv[0]]()
    return cli.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
