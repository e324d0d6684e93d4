"""The checker on tiny hand-written histories whose verdict is known, with and without
operations of unknown outcome."""

from __future__ import annotations

from tests.linearizability.checker import check
from tests.linearizability.history import (
    Acked,
    Append,
    BeyondTail,
    Call,
    CheckTail,
    FencingTokenMismatch,
    Operation,
    Outcome,
    Read,
    Records,
    SeqNumMismatch,
    Tail,
    command_key,
)


def op(
    client: int, call: Call, invoked: int, completed: int | None, outcome: Outcome | None
) -> Operation:
    return Operation(client, "s", call, invoked, completed, outcome)


def fence(token: str) -> bytes:
    return command_key(b"fence", token.encode())


def trim(seq: int) -> bytes:
    return command_key(b"trim", seq.to_bytes(8, "big"))


def test_sequential_appends_and_reads_are_linearizable() -> None:
    history = [
        op(0, Append((b"a", b"b")), 0, 1, Acked(0, 2)),
        op(0, Append((b"c",), match_seq_num=2), 2, 3, Acked(2, 3)),
        op(1, Read(1, 5), 4, 5, Records(((1, b"b"), (2, b"c")))),
        op(1, CheckTail(), 6, 7, Tail(3)),
        op(1, Read(4, 1), 8, 9, BeyondTail(3)),
    ]
    assert check(history).linearizable is True


def test_concurrent_appends_may_be_ordered_either_way() -> None:
    history = [
        op(0, Append((b"a",)), 0, 10, Acked(1, 2)),
        op(1, Append((b"b",)), 1, 9, Acked(0, 1)),
        op(2, Read(0, 9), 11, 12, Records(((0, b"b"), (1, b"a")))),
    ]
    assert check(history).linearizable is True


def test_ack_not_seen_by_a_later_check_tail_is_caught() -> None:
    history = [
        op(0, Append((b"a",)), 0, 1, Acked(0, 1)),
        op(1, CheckTail(), 2, 3, Tail(0)),
    ]
    verdict = check(history)
    assert verdict.linearizable is False
    assert verdict.streams[0].stuck_at is not None


def test_a_read_concurrent_with_the_append_may_see_it_or_not() -> None:
    append = op(0, Append((b"a",)), 0, 10, Acked(0, 1))
    assert check([append, op(1, Read(0, 5), 1, 2, BeyondTail(0))]).linearizable is True
    assert check([append, op(1, Read(0, 5), 1, 2, Records(((0, b"a"),)))]).linearizable is True
    # But not seen, then unseen (a read must not go back in time).
    history = [
        append,
        op(1, Read(0, 5), 1, 2, Records(((0, b"a"),))),
        op(1, Read(0, 5), 3, 4, BeyondTail(0)),
    ]
    assert check(history).linearizable is False


def test_a_mismatch_that_still_appended_is_caught() -> None:
    history = [
        op(0, Append((b"a",), match_seq_num=0), 0, 1, SeqNumMismatch(1)),
        op(1, Read(0, 5), 2, 3, Records(((0, b"a"),))),
    ]
    assert check(history).linearizable is False


def test_a_mismatch_explained_by_a_concurrent_append_is_fine() -> None:
    history = [
        op(0, Append((b"a",), match_seq_num=0), 0, 5, SeqNumMismatch(1)),
        op(1, Append((b"b",)), 1, 4, Acked(0, 1)),
    ]
    assert check(history).linearizable is True


def test_a_partial_batch_is_caught() -> None:
    history = [
        op(0, Append((b"a", b"b")), 0, None, None),
        op(1, Read(0, 5), 2, 3, Records(((0, b"a"),))),
        op(1, CheckTail(), 4, 5, Tail(1)),
    ]
    assert check(history).linearizable is False


def test_an_unknown_append_may_have_taken_effect_or_not() -> None:
    unknown = op(0, Append((b"a",)), 0, None, None)
    assert check([unknown, op(1, CheckTail(), 5, 6, Tail(1))]).linearizable is True
    assert check([unknown, op(1, CheckTail(), 5, 6, Tail(0))]).linearizable is True
    # Late: not seen first, seen later, which an unbounded unknown operation allows.
    late = [unknown, op(1, CheckTail(), 5, 6, Tail(0)), op(1, CheckTail(), 7, 8, Tail(1))]
    assert check(late).linearizable is True


def test_an_unknown_append_cannot_take_effect_after_its_deadline() -> None:
    # The server that received it died at 6: it cannot appear after having been absent then.
    history = [
        op(0, Append((b"a",)), 0, 6, None),
        op(1, CheckTail(), 7, 8, Tail(0)),
        op(1, CheckTail(), 9, 10, Tail(1)),
    ]
    assert check(history).linearizable is False
    assert check(history[:2]).linearizable is True


def test_an_unknown_append_cannot_take_effect_before_its_invocation() -> None:
    history = [
        op(1, CheckTail(), 0, 1, Tail(1)),
        op(0, Append((b"a",)), 2, None, None),
    ]
    assert check(history).linearizable is False


def test_fencing() -> None:
    history = [
        op(0, Append((fence("t1"),), fencing_token=""), 0, 1, Acked(0, 1)),
        op(1, Append((b"a",), fencing_token=""), 2, 3, FencingTokenMismatch("t1")),
        op(0, Append((b"b",), fencing_token="t1"), 4, 5, Acked(1, 2)),
        op(1, Append((b"c",)), 6, 7, Acked(2, 3)),
    ]
    assert check(history).linearizable is True
    wrong = [history[0], op(1, Append((b"a",), fencing_token=""), 2, 3, Acked(1, 2))]
    assert check(wrong).linearizable is False


def test_fence_takes_effect_for_later_batches_only() -> None:
    history = [op(0, Append((fence("t"), b"a"), fencing_token=""), 0, 1, Acked(0, 2))]
    assert check(history).linearizable is True


def test_trim_lets_reads_start_at_the_trim_point() -> None:
    appended = op(0, Append((b"a", b"b", trim(2), b"c")), 0, 1, Acked(0, 4))
    skipped = op(1, Read(0, 9), 2, 3, Records(((2, trim(2)), (3, b"c"))))
    still_there = op(1, Read(0, 9), 2, 3, Records(((0, b"a"), (1, b"b"), (2, trim(2)), (3, b"c"))))
    assert check([appended, skipped]).linearizable is True
    assert check([appended, still_there]).linearizable is True
    # Without the trim, skipping records is a lost write.
    plain = op(0, Append((b"a", b"b", b"x", b"c")), 0, 1, Acked(0, 4))
    skipping = op(1, Read(0, 9), 2, 3, Records(((2, b"x"), (3, b"c"))))
    assert check([plain, skipping]).linearizable is False


def test_a_trim_cannot_reach_past_its_own_record() -> None:
    appended = op(0, Append((b"a", trim(99), b"b")), 0, 1, Acked(0, 3))
    assert check([appended, op(1, Read(0, 9), 2, 3, Records(((2, b"b"),)))]).linearizable is True
    assert check([appended, op(1, Read(0, 9), 2, 3, Records(()))]).linearizable is False


def test_streams_are_checked_separately() -> None:
    a = Operation(0, "a", Append((b"x",)), 0, 1, Acked(0, 1))
    b = Operation(1, "b", CheckTail(), 2, 3, Tail(0))
    verdict = check([a, b])
    assert verdict.linearizable is True
    assert [s.stream for s in verdict.streams] == ["a", "b"]


def test_the_budget_makes_the_verdict_unknown() -> None:
    history = [op(i, Append((bytes([i]),)), i, 100 + i, Acked(i, i + 1)) for i in range(12)]
    assert check(history, step_budget=5).linearizable is None
    assert check(history).linearizable is True


def test_concurrent_unknowns_as_a_kill_leaves_them_stay_tractable() -> None:
    # Eight appends in flight when the server died at 40; three took effect (any three).
    unknowns = [op(i, Append((bytes([i]),)), i, 40, None) for i in range(8)]
    read = op(99, Read(0, 9), 50, 51, Records(((0, b"\x05"), (1, b"\x02"), (2, b"\x07"))))
    assert check([*unknowns, read]).linearizable is True
    # Not linearizable: the whole search space is explored, still within the default budget.
    wrong = op(99, Read(0, 9), 50, 51, Records(((0, b"\x05"), (1, b"\x05"))))
    assert check([*unknowns, wrong]).linearizable is False
