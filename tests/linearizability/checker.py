"""Is a history of stream operations linearizable? Wing & Gong's search with Lowe's memoisation,
the algorithm Porcupine and Knossos use, over each stream on its own (streams are independent
objects, and linearizability is compositional, so a history is linearizable iff each stream's
is).

The history becomes a list of call and return entries in time order. The search walks it:
at a call it tries to linearize that operation now (the model accepts its outcome in the
current state) and restarts from the first entry; at a return whose operation is not yet
linearized, it backtracks. Lowe's memoisation skips any (set of linearized operations, state)
already explored, which is what makes the search practical.

Operations with unknown outcomes (`outcome` None) may take effect with any outcome, or not at
all: at their return entry (the latest moment they could take effect; none if None), one that
was not linearized is set aside as having had no effect, a step the search undoes when it
backtracks past it.

Bounds: the worst case is exponential: up to 2^n sets of linearized operations times the states
reachable, for n operations on a stream. In practice the work grows with n times 2^c, where c
is the number of operations concurrent with one another at any moment, and each unknown
operation stays concurrent with everything until its deadline. Histories of a few thousand
operations per stream with c up to about 10 check in seconds; `step_budget` caps the work and
makes the verdict "unknown" rather than hanging. Memory is the memo: one entry per explored
(set, state), each state sharing the records of the state it extends (`model.Log`), so memory
grows with the states explored times a batch, plus the n-bit sets (a 20 s run: about 3,000
operations and 15,000 to 40,000 steps per stream, checked in about 0.5 s each).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from tests.linearizability.history import Append, Operation
from tests.linearizability.model import StreamState, initial, step

STEP_BUDGET_DEFAULT = 5_000_000


@dataclass(frozen=True)
class StreamVerdict:
    stream: str
    operations: int
    linearizable: bool | None
    """None: the step budget ran out before the search finished."""
    steps: int
    stuck_at: Operation | None = None
    """When not linearizable: an operation that no order of the others could explain, at the
    deepest point the search reached."""


@dataclass(frozen=True)
class Verdict:
    streams: tuple[StreamVerdict, ...]

    @property
    def linearizable(self) -> bool | None:
        values = [stream.linearizable for stream in self.streams]
        if False in values:
            return False
        return None if None in values else True

    def describe(self) -> str:
        return "; ".join(
            f"{s.stream}: {s.operations} ops, {s.steps} steps, linearizable={s.linearizable}"
            + ("" if s.stuck_at is None else f", stuck at {s.stuck_at}")
            for s in self.streams
        )


def check(history: Iterable[Operation], step_budget: int = STEP_BUDGET_DEFAULT) -> Verdict:
    """Check each stream's operations on its own, from an empty, never-fenced stream."""
    by_stream: dict[str, list[Operation]] = {}
    for operation in history:
        if operation.outcome is None and not isinstance(operation.call, Append):
            continue  # an unknown read or check-tail observed nothing and changed nothing
        by_stream.setdefault(operation.stream, []).append(operation)
    return Verdict(
        tuple(check_stream(name, ops, step_budget) for name, ops in sorted(by_stream.items()))
    )


class _Entry:
    """A node of the doubly linked list of call and return entries."""

    __slots__ = ("index", "is_call", "match", "next", "operation", "prev")

    def __init__(self, index: int, is_call: bool, operation: Operation) -> None:
        self.index = index
        self.is_call = is_call
        self.operation = operation
        self.match: _Entry | None = None
        """A call's return entry, and a return's call entry (None: a call without deadline)."""
        self.prev: _Entry | None = None
        self.next: _Entry | None = None


def _entries(operations: list[Operation]) -> _Entry:
    """The list's head (a sentinel), entries sorted by time, calls before returns at a tie."""
    events: list[tuple[int, int, _Entry]] = []
    for index, operation in enumerate(operations):
        call = _Entry(index, True, operation)
        events.append((operation.invoked_ns, 0, call))
        if operation.completed_ns is not None:
            done = _Entry(index, False, operation)
            call.match, done.match = done, call
            events.append((operation.completed_ns, 1, done))
    events.sort(key=lambda event: (event[0], event[1]))
    head = _Entry(-1, False, operations[0])
    last = head
    for _, _, entry in events:
        last.next, entry.prev = entry, last
        last = entry
    return head


def _lift(entry: _Entry) -> None:
    """Take a call (and its return) out of the list."""
    assert entry.prev is not None
    entry.prev.next = entry.next
    if entry.next is not None:
        entry.next.prev = entry.prev
    done = entry.match
    if done is not None:
        assert done.prev is not None
        done.prev.next = done.next
        if done.next is not None:
            done.next.prev = done.prev


def _unlift(entry: _Entry) -> None:
    """Put back what `_lift` took out, in reverse order."""
    done = entry.match
    if done is not None:
        assert done.prev is not None
        done.prev.next = done
        if done.next is not None:
            done.next.prev = done
    assert entry.prev is not None
    entry.prev.next = entry
    if entry.next is not None:
        entry.next.prev = entry


def check_stream(
    name: str, operations: list[Operation], step_budget: int = STEP_BUDGET_DEFAULT
) -> StreamVerdict:
    if not operations:
        return StreamVerdict(name, 0, True, 0)
    head = _entries(operations)
    known_left = sum(1 for operation in operations if operation.outcome is not None)
    state: StreamState = initial()
    decided = 0
    """Bit i: operation i is linearized or set aside as never having taken effect."""
    memo: set[tuple[int, StreamState]] = set()
    # (call entry, state before it, whether it was set aside rather than linearized)
    stack: list[tuple[_Entry, StreamState, bool]] = []
    deepest = -1
    stuck: Operation | None = None
    steps = 0
    entry = head.next
    while known_left > 0:
        steps += 1
        if steps > step_budget:
            return StreamVerdict(name, len(operations), None, steps)
        assert entry is not None, "a known operation's return entry is always ahead"
        operation = entry.operation
        if entry.is_call:
            after = step(state, operation.call, operation.outcome)
            linearized = decided | 1 << entry.index
            if after is not None and (linearized, after) not in memo:
                memo.add((linearized, after))
                stack.append((entry, state, False))
                state, decided = after, linearized
                known_left -= operation.outcome is not None
                _lift(entry)
                entry = head.next
            else:
                entry = entry.next
            continue
        call = entry.match
        assert call is not None
        if operation.outcome is None:
            # Its deadline passed without it taking effect: it never did, in this branch.
            stack.append((call, state, True))
            decided |= 1 << call.index
            _lift(call)
            entry = head.next
            continue
        if len(stack) > deepest:
            deepest, stuck = len(stack), operation
        # Backtrack: undo set-asides (not choices) down to the last linearized operation.
        while True:
            if not stack:
                return StreamVerdict(name, len(operations), False, steps, stuck)
            top, state, set_aside = stack.pop()
            decided &= ~(1 << top.index)
            _unlift(top)
            if not set_aside:
                known_left += top.operation.outcome is not None
                entry = top.next
                break
    return StreamVerdict(name, len(operations), True, steps)
