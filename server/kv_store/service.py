"""The operations of the HTTP API's key-value stores, each made through the caller's
`ScopedStore`, so a token is checked as for the stream itself: reads of a store need `read`
on its stream `kv/NAME`, writes `append`, and the first write `create-stream` (and, in the
default basin `kv-stores`, `create-basin` if it is missing).

Writes are appends of change records (`s2s/kv_format.py`):

- a put without an expected revision is a plain append: it needs no read;
- a conditional write (an `expected_revision`, or a delete, which must find its key) folds
  the store to its tail, checks, and appends with `match_seq_num` = that tail, so the check
  holds where the append lands; if something landed first, it checks again (after waits
  growing from 10 ms to 200 ms) for up to `WRITE_RETRY_WINDOW_S`. An expected revision is
  met while no change landed after it: compaction's snapshots and trims do not count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from s2s.errors import S2Error, SeqNumMismatch
from s2s.kv_format import DEFAULT_BASIN, STREAM_CONFIG, Change, commit_input, store_stream
from s2s.kv_retry import CommitRetry
from s2s.kv_state import KeyHistory, KvState
from s2s.records import validate_append_input
from server.kv_store.folding import read_to_tail
from server.kv_store.views import KvViews, StoreView
from server.reader import ReadLimits, ReadOutput, ReadStart
from server.scoped_store import ScopedStore
from server.sequencer import AppendAck
from server.streamstore import StreamStore

WRITE_RETRY_WINDOW_S = 10.0
"""A conditional write checks again after an append landed before it, for this long: longer
than compaction at its default rate takes to write the largest snapshot (8 s), shorter than
HTTP clients' usual timeouts; a store written faster than that fails it with `kv_conflict`."""


@dataclass(frozen=True)
class StoreRef:
    """A store as the caller names it: its basin, its name and its stream's name."""

    basin: str
    name: str

    @property
    def stream(self) -> str:
        return store_stream(self.name)


class KvConflict(S2Error):
    """A conditional write found the store changed; `revision` is where it is now."""

    def __init__(self, message: str, revision: int) -> None:
        super().__init__("kv_conflict", message)
        self.revision = revision

    def body(self) -> dict[str, Any]:
        return {**super().body(), "revision": self.revision}


class KvService:
    def __init__(self, store: StreamStore) -> None:
        self._views = KvViews(store)

    async def view(self, scoped: ScopedStore, ref: StoreRef) -> StoreView:
        """The store as of its tail (its `state.position` is the revision)."""
        return await self._views.current(scoped, ref.basin, ref.stream)

    async def history(self, scoped: ScopedStore, ref: StoreRef, key: str) -> KeyHistory:
        """`key`'s changes still in the stream (a read of the whole stream)."""
        history = KeyHistory(key)

        async def read(start: ReadStart, limits: ReadLimits) -> ReadOutput:
            return await scoped.read(ref.basin, ref.stream, start, limits, STREAM_CONFIG)

        try:
            await read_to_tail(read, 0, history.fold)
        except S2Error as error:
            if error.code != "stream_not_found":
                raise
        return history

    async def write(
        self,
        scoped: ScopedStore,
        ref: StoreRef,
        changes: Sequence[Change],
        expected_revision: int | None = None,
        must_exist: Sequence[str] = (),
    ) -> AppendAck:
        """Append `changes` as one batch: at once, or where `expected_revision` still holds
        and every key of `must_exist` is live (else `kv_conflict`, `key_not_found`)."""
        commit_input(changes, None)  # every key, value and limit checked before anything
        if expected_revision is None and not must_exist:
            return await self._append(scoped, ref, changes, None)
        retry = CommitRetry(WRITE_RETRY_WINDOW_S)
        while True:
            state = (await self.view(scoped, ref)).state
            _check(state, expected_revision, must_exist)
            try:
                return await self._append(scoped, ref, changes, state.position)
            except SeqNumMismatch:
                if not await retry.wait():
                    raise KvConflict(
                        f"the store was written {retry.attempts} times in {retry.window_s:.0f} s "
                        "while this write was checked against it: try again",
                        state.position,
                    ) from None

    async def _append(
        self, scoped: ScopedStore, ref: StoreRef, changes: Sequence[Change], match: int | None
    ) -> AppendAck:
        batch = validate_append_input(commit_input(changes, match))
        try:
            return await scoped.append(ref.basin, ref.stream, batch, STREAM_CONFIG)
        except S2Error as error:
            missing = error.code in ("stream_not_found", "basin_not_found")
            if not missing or match not in (None, 0):
                raise
        await _create(scoped, ref)
        return await scoped.append(ref.basin, ref.stream, batch, STREAM_CONFIG)


def _check(state: KvState, expected_revision: int | None, must_exist: Sequence[str]) -> None:
    if expected_revision is not None and state.changed_through > expected_revision:
        raise KvConflict(
            f"the store changed after revision {expected_revision} (it is at "
            f"{state.position} now): read it again and make the changes on what it holds",
            state.position,
        )
    for key in must_exist:
        if key not in state.entries:
            raise S2Error("key_not_found", f"no key {key!r} in the store")


async def _create(scoped: ScopedStore, ref: StoreRef) -> None:
    """The store's first write: its stream, and the default basin if that is missing."""
    if ref.basin == DEFAULT_BASIN:
        try:
            await scoped.create_basin(DEFAULT_BASIN)
        except S2Error as error:
            if error.code != "resource_already_exists":
                raise
    try:
        await scoped.create_stream(ref.basin, ref.stream, STREAM_CONFIG)
    except S2Error as error:
        if error.code != "resource_already_exists":
            raise
