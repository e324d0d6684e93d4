"""A gate that lets many threads read a shared resource, or one thread replace it.

`LmdbStore` reads from the event loop and from worker threads (jobs, the lake, usage) while its
writer thread commits. When a commit leaves the LMDB environment unusable (`MDB_PANIC`), the
writer closes and reopens it; closing unmaps the file, so no read may be inside the old
environment at that moment. Readers pass the gate in shared mode (a counter under a lock: about
a microsecond per read call, never per record: a 100-byte `get` took 1.3-2.2 us without it and
2.4 us with it); the reopen waits for them to leave and holds new ones back until it is done.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class ReopenGate:
    def __init__(self) -> None:
        # Readers take the bare lock (a C-level call); only waits go through the condition.
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._readers = 0
        self._replacing = False
        self.epoch = 0
        """Bumped by every replacement (done or failed), so a reader can wait for the next."""

    def enter(self) -> int:
        """Start a read; returns the epoch it reads in."""
        with self._lock:
            while self._replacing:
                self._changed.wait()
            self._readers += 1
            return self.epoch

    def leave(self) -> None:
        with self._lock:
            self._readers -= 1
            if self._readers == 0 and self._replacing:
                self._changed.notify_all()

    def replace(self, action: Callable[[], None]) -> None:
        """Run `action` with no reader inside; readers arriving meanwhile wait for it."""
        with self._changed:
            self._replacing = True
            while self._readers:
                self._changed.wait()
        try:
            action()
        finally:
            with self._changed:
                self._replacing = False
                self.epoch += 1
                self._changed.notify_all()

    def wait_past(self, epoch: int, timeout_s: float) -> bool:
        """Wait (outside the gate) until a replacement after `epoch` finished; False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: self.epoch != epoch, timeout_s)
