"""How a key-value commit waits between attempts after records it may build on landed first.

A commit appends with `match_seq_num` = the revision its checks used. Compaction appends a
snapshot's parts one at a time and then a trim; none of them changes an entry, so a commit
that lost to one is checked again at the new tail and tried again (docs/adr/0015-kv-store.md).
While parts keep landing the commit keeps losing, until it slips in between two of them or the
snapshot is done: a budget counted in attempts ran out first on a slow disk (CI, on PostgreSQL,
gave up after 8 attempts in 2.5 s during a 12 MB snapshot written at 8 MiB/s). So the budget is
time: `COMMIT_RETRY_WINDOW_S`, enough for the largest snapshot compaction writes (256 MiB) at
its default rate (32 MiB/s), 8 s, several times over.
"""

from __future__ import annotations

import asyncio
import time

COMMIT_RETRY_WINDOW_S = 60.0
"""How long one commit keeps trying while only records that leave its checks true land."""
RETRY_DELAY_S = 0.01
"""The first wait; each one after doubles it, up to `RETRY_DELAY_MAX_S`."""
RETRY_DELAY_MAX_S = 0.2
"""Short enough that a commit waiting out a snapshot lands soon after its last part."""


class CommitRetry:
    """The waits between the attempts of one commit, within `window_s` of its first."""

    def __init__(self, window_s: float = COMMIT_RETRY_WINDOW_S) -> None:
        self.window_s = window_s
        self.attempts = 1
        self._deadline = time.monotonic() + window_s
        self._delay = RETRY_DELAY_S

    async def wait(self) -> bool:
        """Sleep before the next attempt and count it; False at once if the window is over."""
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            return False
        await asyncio.sleep(min(self._delay, remaining))
        self._delay = min(self._delay * 2, RETRY_DELAY_MAX_S)
        self.attempts += 1
        return True
