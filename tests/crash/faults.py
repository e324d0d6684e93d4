"""`FaultyStore`: a `KeyValueStore` that fails chosen commits, for fault-injection tests.

It delegates everything to a real store. A commit chosen to fail raises `OSError(EIO)` without
reaching the real store, as a failed write or fsync does: nothing of it lands. A commit can
also be held at its start until the test releases it, so a test can line up jobs behind it
and decide which commit they share.
"""

from __future__ import annotations

import errno
import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from server.storage.kv import Changed, KeyValueStore, T, Table, Write


@dataclass
class Gate:
    """Holds one commit: `entered` is set when it starts; it proceeds once `release` is set."""

    entered: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


class FaultyStore:
    def __init__(self, inner: KeyValueStore, failure_rate: float = 0.0, seed: int = 0) -> None:
        self.inner = inner
        self.started = 0
        """Commits begun so far, failed ones included; the next commit is `started + 1`."""
        self.failed: list[int] = []
        """Numbers of the commits that were made to fail."""
        self.failure_rate = failure_rate
        self._rng = random.Random(seed)
        self._fail_at: set[int] = set()
        self._gates: dict[int, Gate] = {}
        self._lock = threading.Lock()

    def fail_commit(self, after: int = 0) -> int:
        """Make the commit that starts after `after` more commits fail; return its number."""
        with self._lock:
            number = self.started + 1 + after
            self._fail_at.add(number)
            return number

    def hold_commit(self, after: int = 0) -> Gate:
        """Hold the commit that starts after `after` more commits, until the gate is released."""
        gate = Gate()
        with self._lock:
            self._gates[self.started + 1 + after] = gate
        return gate

    def commit(self, writes: Sequence[Write]) -> None:
        with self._lock:
            self.started += 1
            number = self.started
            gate = self._gates.pop(number, None)
            fail = number in self._fail_at or (
                self.failure_rate > 0 and self._rng.random() < self.failure_rate
            )
        if gate is not None:
            gate.entered.set()
            gate.release.wait()
        if fail:
            self.failed.append(number)
            raise OSError(errno.EIO, f"injected failure of commit {number}")
        self.inner.commit(writes)

    def get(self, table: Table, key: bytes) -> bytes | None:
        return self.inner.get(table, key)

    def scan(
        self, table: Table, start: bytes, end: bytes | None, limit: int
    ) -> list[tuple[bytes, bytes]]:
        return self.inner.scan(table, start, end, limit)

    def scan_map(
        self,
        table: Table,
        start: bytes,
        end: bytes | None,
        limit: int,
        project: Callable[[memoryview], T],
        head_bytes: int | None = None,
    ) -> list[tuple[bytes, T]]:
        return self.inner.scan_map(table, start, end, limit, project, head_bytes)

    def size_bytes(self) -> int:
        return self.inner.size_bytes()

    def watch_changes(self, on_change: Callable[[Changed | None], None]) -> None:
        self.inner.watch_changes(on_change)

    def reclaim(self) -> None:
        self.inner.reclaim()

    @property
    def shared(self) -> bool:
        return self.inner.shared

    def leads(self, role: str) -> bool:
        return self.inner.leads(role)

    def close(self) -> None:
        self.inner.close()
