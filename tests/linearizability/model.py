"""The sequential specification of one stream (docs/s2-compat.md §7), as a pure step function.

The state is small and hashable, so the checker can memoise on it: the records' keys in order
(a `Log`), the fencing token, and the trim point. `step` says whether a call could have returned
the given outcome in the given state and, if so, the state after it.
"""

from __future__ import annotations

from typing import NamedTuple

from tests.linearizability.history import (
    COMMAND_PREFIX,
    Acked,
    Append,
    BeyondTail,
    Call,
    CheckTail,
    FencingTokenMismatch,
    NoEffect,
    Outcome,
    Read,
    Records,
    SeqNumMismatch,
    Tail,
)

_FENCE = COMMAND_PREFIX + b"fence:"
_TRIM = COMMAND_PREFIX + b"trim:"


class Log:
    """A stream's record keys as a chain of appended batches, each log sharing its parent.

    The checker memoises every state it explores; with the keys in one tuple per state, each
    held a copy of the whole stream (a 300 s run with 28,000 records per stream grew past
    10 GB). Here a state costs one batch. A log is interned by its parent: appending the same
    batch to the same log returns the same object, so identity is equality (the default
    `__eq__` and `__hash__`) and the memo still recognises a state reached twice. Each check
    starts from its own `Log()`, so nothing outlives it.
    """

    __slots__ = ("_children", "keys", "length", "parent")
    length: int

    def __init__(self, parent: Log | None = None, keys: tuple[bytes, ...] = ()) -> None:
        self.parent = parent
        self.keys = keys
        self.length = (0 if parent is None else parent.length) + len(keys)
        self._children: dict[tuple[bytes, ...], Log] | None = None

    def __len__(self) -> int:
        return self.length

    def appended(self, keys: tuple[bytes, ...]) -> Log:
        if self._children is None:
            self._children = {}
        child = self._children.get(keys)
        if child is None:
            child = self._children[keys] = Log(self, keys)
        return child

    def between(self, first: int, end: int) -> tuple[bytes, ...]:
        """The keys of records [first, end), end <= len(self): a walk back from the tail, as
        long as the batches after `first` (reads are near the tail)."""
        batches: list[tuple[bytes, ...]] = []
        node: Log | None = self
        while node is not None and node.length > first:
            batches.append(node.keys)
            node = node.parent
        base = first if node is None else first - node.length
        keys = tuple(key for batch in reversed(batches) for key in batch)
        return keys[base : base + end - first]


class StreamState(NamedTuple):
    records: Log
    fencing_token: str = ""
    trim_point: int = 0


def initial() -> StreamState:
    """An empty, never-fenced stream, with a log of its own."""
    return StreamState(Log())


def step(state: StreamState, call: Call, outcome: Outcome | None) -> StreamState | None:
    """The state after `call` returned `outcome` (None: unknown, any outcome) in `state`, or
    None if it could not have."""
    if isinstance(call, Append):
        return _append(state, call, outcome)
    if isinstance(call, CheckTail):
        return state if outcome is None or outcome == Tail(len(state.records)) else None
    return state if outcome is None or _read_matches(state, call, outcome) else None


def _append(state: StreamState, call: Append, outcome: Outcome | None) -> StreamState | None:
    """Checks in the contract's order: fencing token, then match_seq_num; a failed check
    changes nothing; otherwise the whole batch is appended and its commands take effect. A
    failure the server promises had no effect (a failed commit) changes nothing."""
    if isinstance(outcome, NoEffect):
        return state
    if isinstance(outcome, (SeqNumMismatch, FencingTokenMismatch)):
        return state if _refusal_possible(state, call, outcome) else None
    tail = len(state.records)
    fenced = call.fencing_token is not None and call.fencing_token != state.fencing_token
    if fenced or (call.match_seq_num is not None and call.match_seq_num != tail):
        return state if outcome is None else None
    if outcome is not None and outcome != Acked(tail, tail + len(call.records)):
        return None
    return _appended(state, call.records)


def _refusal_possible(
    state: StreamState, call: Append, outcome: SeqNumMismatch | FencingTokenMismatch
) -> bool:
    """Whether s2s could refuse the append so in this state. The server checks conditions
    against its pending state (the durable one plus appends in flight, which readers do not
    see yet), so a refusal may name a tail beyond the one readers see, or the token of a fence
    still in flight (ADR 0010). A refusal is still wrong if the value it names would have
    matched, or names a tail below the stream's."""
    if isinstance(outcome, SeqNumMismatch):
        return (
            call.match_seq_num is not None
            and call.match_seq_num != outcome.expected
            and outcome.expected >= len(state.records)
        )
    return call.fencing_token is not None and call.fencing_token != outcome.current


def _appended(state: StreamState, records: tuple[bytes, ...]) -> StreamState:
    token = state.fencing_token
    trim_point = state.trim_point
    first = len(state.records)
    for index, key in enumerate(records):
        if key.startswith(_FENCE):
            token = key[len(_FENCE) :].decode()
        elif key.startswith(_TRIM):
            requested = int.from_bytes(key[len(_TRIM) :], "big")
            # A trim never reaches past its own record, and trim points only move forward.
            trim_point = max(trim_point, min(requested, first + index + 1))
    return StreamState(state.records.appended(records), token, trim_point)


def _read_matches(state: StreamState, call: Read, outcome: Outcome) -> bool:
    """A read returns every record from its start up to `count` or the tail; a start below
    the trim point may begin anywhere up to the trim point (deletion is asynchronous). A read
    that starts at or beyond the tail is refused with the tail (a unary read cannot wait)."""
    tail = len(state.records)
    if isinstance(outcome, BeyondTail):
        return call.start_seq >= tail and outcome.tail == tail
    if not isinstance(outcome, Records) or call.start_seq >= tail:
        return False
    got = outcome.records
    first = got[0][0] if got else min(max(call.start_seq, state.trim_point), tail)
    if not call.start_seq <= first <= max(call.start_seq, state.trim_point):
        return False
    end = min(first + call.count, tail)
    if len(got) != max(0, end - first):
        return False
    expected = zip(range(first, end), state.records.between(first, end), strict=True)
    return got == tuple(expected)
