"""How an ingest request that waits for its rows (`wait=true`) learns what became of them: the
snapshot that committed the last of them, and which of them the materialization rejected.

A watch is registered with the table's runner *before* the rows are appended: the runner may
apply records as soon as they are durable, before the append's caller runs again, and a
commit the watch did not see would leave its rejections untold. Each commit's rejections
travel in its `ApplyResult`; the watch keeps those among the request's rows.
"""

from __future__ import annotations

import asyncio

from server.lake.apply import ApplyResult


class AppliedWatch:
    def __init__(self) -> None:
        self._first_seq = 0
        self._last_seq: int | None = None
        """None until the rows are appended: until then every rejection is kept, which bounds
        them by what the runner commits while one request is being appended."""
        self._rejections: list[tuple[int, str]] = []
        self._snapshot: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()

    @property
    def rejections(self) -> list[tuple[int, str]]:
        """`(seq_num, reason)` of the rejected records within the expected range, in order of
        their commits (other writers' records in that range included)."""
        return self._rejections

    def expect(self, first_seq: int, last_seq: int) -> None:
        """The request's rows landed within `first_seq..last_seq`: watch for those only."""
        self._first_seq, self._last_seq = first_seq, last_seq
        self._rejections = [r for r in self._rejections if first_seq <= r[0] <= last_seq]

    def note(self, result: ApplyResult) -> None:
        """A commit of the runner, in commit order."""
        last = self._last_seq
        if result.rejections:
            if last is None:
                self._rejections += result.rejections
            else:
                first = self._first_seq
                self._rejections += [r for r in result.rejections if first <= r[0] <= last]
        if last is not None and result.last_seq_num >= last and not self._snapshot.done():
            self._snapshot.set_result(result.snapshot_id)

    def release(self) -> None:
        """The runner stopped, or the server is shutting down: a wait ends now, with None."""
        if self._last_seq is not None and not self._snapshot.done():
            self._snapshot.set_result(None)

    async def snapshot(self, timeout_s: float) -> int | None:
        """The snapshot that committed the last expected record; None if that did not happen
        within `timeout_s` or the wait was released."""
        try:
            return await asyncio.wait_for(self._snapshot, timeout_s)
        except TimeoutError:
            return None
