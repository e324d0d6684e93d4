"""The operations of a history: what a client asked of one stream, when, and what it was told.

Times are `time.monotonic_ns()` of the recording process. An operation whose outcome is unknown
(the call timed out, the connection broke, the server was killed) has `outcome` None: it may or
may not have taken effect, at any point after its invocation and before its `completed_ns`,
which is then the latest moment it could have taken effect (the server process that received
it was dead by then), or None if there is no such moment.

Records are modelled as `bytes` keys: a data record is its body; a command record is
`COMMAND_PREFIX + command + b":" + body` (its header value and body), so fences and trims that
readers get back compare equal to what was appended.
"""

from __future__ import annotations

from dataclasses import dataclass

COMMAND_PREFIX = b"!cmd:"


def command_key(command: bytes, body: bytes) -> bytes:
    """The model's key for a command record (`fence` or `trim`) with this body."""
    return COMMAND_PREFIX + command + b":" + body


@dataclass(frozen=True)
class Append:
    """A batch, atomic: `records` are model keys; the conditions as the client sent them."""

    records: tuple[bytes, ...]
    match_seq_num: int | None = None
    fencing_token: str | None = None


@dataclass(frozen=True)
class Read:
    """Up to `count` records from `start_seq` (no waiting)."""

    start_seq: int
    count: int


@dataclass(frozen=True)
class CheckTail:
    """The stream's next sequence number."""


Call = Append | Read | CheckTail


@dataclass(frozen=True)
class Acked:
    """An append took effect at [start, end)."""

    start: int
    end: int


@dataclass(frozen=True)
class SeqNumMismatch:
    """412: `match_seq_num` was not the next sequence number, which was `expected`."""

    expected: int


@dataclass(frozen=True)
class FencingTokenMismatch:
    """412: the fencing token did not match the stream's, which was `current`."""

    current: str


@dataclass(frozen=True)
class NoEffect:
    """An append that failed in a way that means it took no effect (ADR 0010), so the checker
    holds the server to that. The server promises it for `STORAGE`, a failed commit (neither
    acknowledged nor ever visible), `CONFLICT`, an append left out because another node
    changed the stream first (ADR 0013), and `BEHIND_REFUSED`, a batch behind a refused one in its
    append session, which sequences nothing after a refusal; the client library for
    `NEVER_SENT`, a request that failed before it existed on the wire (no connection)."""

    reason: str


STORAGE = "storage"
CONFLICT = "transaction_conflict"
BEHIND_REFUSED = "behind a refused batch"
NEVER_SENT = "never sent"


@dataclass(frozen=True)
class Records:
    """What a read returned: (seq_num, key) pairs, in order."""

    records: tuple[tuple[int, bytes], ...]


@dataclass(frozen=True)
class BeyondTail:
    """A read refused because it started beyond the tail, which was `tail`."""

    tail: int


@dataclass(frozen=True)
class Tail:
    """What check-tail returned."""

    next_seq: int


Outcome = Acked | SeqNumMismatch | FencingTokenMismatch | NoEffect | Records | BeyondTail | Tail


@dataclass(frozen=True)
class Operation:
    """One call on one stream by one client; `outcome` None: unknown (module docstring)."""

    client: int
    stream: str
    call: Call
    invoked_ns: int
    completed_ns: int | None
    outcome: Outcome | None

    def __post_init__(self) -> None:
        if self.completed_ns is None and self.outcome is not None:
            raise ValueError("an operation with an outcome has a completion time")
        if self.completed_ns is not None and self.completed_ns < self.invoked_ns:
            raise ValueError("an operation completed before it was invoked")
