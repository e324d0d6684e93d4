"""Records a history as clients run: each operation's invocation, completion and outcome, and
the lives of the server processes, which bound when an operation of unknown outcome could have
taken effect."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from tests.linearizability.history import Acked, Append, Call, Operation, Outcome


@dataclass
class _Pending:
    client: int
    stream: str
    call: Call
    invoked_ns: int
    failed_ns: int
    settled_by_next_ack: bool


@dataclass
class Recorder:
    operations: list[Operation] = field(default_factory=list)
    unknown: list[_Pending] = field(default_factory=list)
    lives: list[tuple[int, int | None]] = field(default_factory=list)
    """(spawned, died) of each server process, in order; died None: still running."""

    def spawned(self) -> None:
        """Call just before a server process is started."""
        self.lives.append((time.monotonic_ns(), None))

    def died(self) -> None:
        """Call once the server process is dead (killed and reaped, or stopped)."""
        spawned, _ = self.lives[-1]
        self.lives[-1] = (spawned, time.monotonic_ns())

    def completed(
        self, client: int, stream: str, call: Call, invoked_ns: int, outcome: Outcome
    ) -> None:
        operation = Operation(client, stream, call, invoked_ns, time.monotonic_ns(), outcome)
        self.operations.append(operation)

    def failed(
        self,
        client: int,
        stream: str,
        call: Call,
        invoked_ns: int,
        settled_by_next_ack: bool = False,
    ) -> None:
        """The outcome is unknown (an error that does not say, a timeout, a broken call).

        `settled_by_next_ack`: the server had submitted the call to its committer, if at all,
        before the client saw the failure (a batch behind a failed commit in an append session,
        which the server sequences nothing after once it has sent the session's error). A
        stream's appends through one server are committed in submission order (where several
        nodes share the store, an append numbered again after another node's waits for those
        before it), so such a call took effect, if ever, before any append to its stream
        invoked after the failure was acknowledged.
        """
        failed_ns = time.monotonic_ns()
        pending = _Pending(client, stream, call, invoked_ns, failed_ns, settled_by_next_ack)
        self.unknown.append(pending)

    def history(self) -> list[Operation]:
        """Every operation; an unknown one's deadline is the death of the last server process
        that could have received it (spawned before the failure was seen), None if that one
        still runs, or the first ack after its failure if that settles it (`failed`). One that
        no process could have received gets its invocation as deadline: it had no effect."""
        resolved = [
            Operation(p.client, p.stream, p.call, p.invoked_ns, self._deadline(p), None)
            for p in self.unknown
        ]
        return self.operations + resolved

    def _deadline(self, pending: _Pending) -> int | None:
        receivers = [life for life in self.lives if life[0] <= pending.failed_ns]
        if not receivers:
            return pending.invoked_ns
        died = receivers[-1][1]
        deadlines = [] if died is None else [max(died, pending.invoked_ns)]
        if pending.settled_by_next_ack:
            deadlines += [
                operation.completed_ns
                for operation in self.operations
                if isinstance(operation.call, Append)
                and operation.stream == pending.stream
                and isinstance(operation.outcome, Acked)
                and operation.invoked_ns > pending.failed_ns
                and operation.completed_ns is not None
            ]
        return min(deadlines, default=None)
