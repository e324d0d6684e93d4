"""The store's record format and fold (`s2s/kv_format.py`, `s2s/kv_state.py`) on a simulated
stream: random commits, compactions (snapshot parts written after the position they are as
of, with commits landing between the parts, some killed before their trim, some racing a
second compactor), trims that follow a complete snapshot, and readers that open the store
from the trim point, reload from where they were, or watch. Every reader must end with exactly
the model's entries, and `changed_through` must say whether a change landed after a revision.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s2s.errors import S2Error
from s2s.kv_format import (
    COMMAND,
    FOREIGN,
    SNAPSHOT_INLINE_VALUE_BYTES_MAX,
    Change,
    ChangeRecord,
    Entry,
    SnapshotPart,
    append_batches,
    commit_input,
    parse_record,
    snapshot_records,
    store_of_stream,
    store_stream,
    validate_store_name,
)
from s2s.kv_state import KeyHistory, KvChange, KvState
from s2s.records import trim_record, validate_append_input
from s2s.v1 import records_pb2 as pb


@dataclass
class Stream:
    """An append-only list of records with a trim point, as a store's stream behaves."""

    records: list[pb.SequencedRecord] = field(default_factory=list)
    trim_point: int = 0
    clock_ms: int = 1_000

    @property
    def tail(self) -> int:
        return len(self.records)

    def append(self, records: list[pb.AppendRecord]) -> int:
        """Append one batch; returns its first sequence number."""
        validate_append_input(pb.AppendInput(records=records))
        first = self.tail
        self.clock_ms += 1
        for record in records:
            self.records.append(
                pb.SequencedRecord(
                    seq_num=self.tail,
                    timestamp=self.clock_ms,
                    headers=record.headers,
                    body=record.body,
                )
            )
        return first

    def trim(self, first_seq_num: int) -> None:
        self.append([trim_record(first_seq_num)])
        self.trim_point = max(self.trim_point, min(first_seq_num, self.tail))

    def read(self, start: int) -> list[pb.SequencedRecord]:
        """What a read from `start` returns: nothing below the trim point."""
        return self.records[max(start, self.trim_point) :]


def load(stream: Stream, state: KvState | None = None) -> KvState:
    state = state or KvState()
    records = stream.read(state.position)
    # In chunks, as reads return them, so a gap may fall between two of them.
    for index in range(0, len(records), 7):
        state.fold(records[index : index + 7])
    state.check_whole()
    return state


def values(state: KvState) -> dict[str, str]:
    chars = sum(len(key) + len(entry.value) for key, entry in state.entries.items())
    assert state.live_chars == chars
    return {key: entry.value for key, entry in state.entries.items()}


class Model:
    """The store as commits made it: every key's latest value, and where changes landed."""

    def __init__(self) -> None:
        self.entries: dict[str, str] = {}
        self.change_positions: list[int] = []

    def commit(self, stream: Stream, changes: list[Change]) -> None:
        first = stream.append(list(commit_input(changes, None).records))
        for offset, change in enumerate(changes):
            if change.op == "put":
                assert change.value is not None
                self.entries[change.key] = change.value
            else:
                self.entries.pop(change.key, None)
            self.change_positions.append(first + offset)

    def changed_after(self, revision: int) -> bool:
        return any(position >= revision for position in self.change_positions)


keys = st.sampled_from([f"k{i}" for i in range(12)] + ["é/ü", "a b"])
changes = st.lists(
    st.one_of(
        st.builds(Change, st.just("put"), keys, st.text(max_size=8)),
        st.builds(Change, st.just("delete"), keys),
    ),
    min_size=1,
    max_size=4,
)


def compact(
    stream: Stream,
    model: Model,
    rng: random.Random,
    *,
    kill_after: int | None = None,
    stale: Sequence[pb.AppendRecord] = (),
) -> None:
    """One compaction: fold to the tail T, write a snapshot as of T in parts (commits may land
    between them), then trim to T, unless killed after `kill_after` parts. The `stale` parts of
    a slower compactor's snapshot, as of an earlier position, land after its first part."""
    state = load(stream)
    as_of = state.position
    parts = snapshot_records(
        sorted(state.entries.items()), as_of, state.changed_through, rng.choice([1, 60, 10**6])
    )
    while rng.random() < 0.3:  # commits that land after the fold, before the first part
        model.commit(stream, [Change("put", rng.choice(["k1", "k2", "new"]), "before")])
    for written, part in enumerate(parts):
        if kill_after is not None and written == kill_after:
            return
        stream.append([part])
        if written == 0:
            for stale_part in stale:
                stream.append([stale_part])
        if rng.random() < 0.3:
            change = rng.choice([Change("put", "k1", "between"), Change("delete", "k2")])
            model.commit(stream, [change])
    if kill_after is None:
        stream.trim(as_of)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 9), changes), min_size=1, max_size=30), st.randoms())
def test_every_reader_ends_with_the_models_entries(
    steps: list[tuple[int, list[Change]]], rng: random.Random
) -> None:
    stream = Stream()
    model = Model()
    early = KvState()  # a reader that reloads from where it was, now and then
    watcher = KvState(watching=True)
    watched: dict[str, str] = {}
    revisions: list[int] = []
    for action, commit in steps:
        if action <= 5:
            model.commit(stream, commit)
        elif action == 6:
            compact(stream, model, rng)
        elif action == 7:
            compact(stream, model, rng, kill_after=rng.randrange(3))
        elif action == 8:
            # Two compactors at once: one folds and is slow to write; the other folds later,
            # and the first's parts land among its own.
            state = load(stream)
            model.commit(stream, commit)
            late = snapshot_records(state.entries.items(), state.position, 0, rng.choice([1, 99]))
            compact(stream, model, rng, stale=late)
            stream.trim(state.position)
        else:
            stream.append([pb.AppendRecord(body=b"not the store's")])
            model.commit(stream, commit)
        if rng.random() < 0.3:
            load(stream, early)
            assert values(early) == model.entries
        if rng.random() < 0.5:
            # A watcher that lags: a few records at a time, so trims land while it is between
            # them, and a gap may open while another waits for its snapshot.
            for change in watcher.fold(stream.read(watcher.position)[: rng.randint(1, 6)]):
                apply_change(watched, change)
        revisions.append(stream.tail)
    opened = load(stream)
    assert values(opened) == model.entries
    assert values(load(stream, early)) == model.entries
    for change in watcher.fold(stream.read(watcher.position)):
        apply_change(watched, change)
    assert watched == model.entries
    for revision in revisions:
        assert (opened.changed_through > revision) == model.changed_after(revision)


def apply_change(view: dict[str, str], change: KvChange) -> None:
    if change.op == "put":
        assert change.value is not None
        view[change.key] = change.value
    else:
        view.pop(change.key, None)


def test_a_trim_without_a_snapshot_is_history_lost() -> None:
    stream = Stream()
    model = Model()
    model.commit(stream, [Change("put", "a", "1")])
    model.commit(stream, [Change("put", "b", "2")])
    stream.trim(1)
    with pytest.raises(S2Error) as caught:
        load(stream)
    assert caught.value.code == "kv_history_lost"


def test_a_killed_snapshot_is_skipped_and_a_later_one_trims() -> None:
    stream = Stream()
    model = Model()
    for i in range(300):
        model.commit(stream, [Change("put", f"key{i % 50}", "x" * 200 + str(i))])
    rng = random.Random(1)
    compact(stream, model, rng, kill_after=1)
    assert values(load(stream)) == model.entries
    assert stream.trim_point == 0
    compact(stream, model, rng)
    assert stream.trim_point > 300
    opened = KvState()
    opened.fold(stream.read(0))
    opened.check_whole()
    assert values(opened) == model.entries
    # The snapshot keeps each entry's own change: its sequence number and timestamp.
    last = next(r for r in reversed(stream.records[:300]) if r.headers[1].value == b"key49")
    assert opened.entries["key49"] == Entry("x" * 200 + "299", last.seq_num, last.timestamp)


def test_large_values_get_parts_of_their_own() -> None:
    big = "v" * (SNAPSHOT_INLINE_VALUE_BYTES_MAX + 1)
    entries = [("small", Entry("s", 3, 7)), ("big", Entry(big, 4, 8))]
    parts = snapshot_records(entries, 10, 5)
    parsed = [parse_record(pb.SequencedRecord(headers=p.headers, body=p.body)) for p in parts]
    assert [p.entries for p in parsed if isinstance(p, SnapshotPart)] == [
        [("big", Entry(big, 4, 8))],
        [("small", Entry("s", 3, 7))],
    ]
    assert all(isinstance(p, SnapshotPart) and p.count == 2 for p in parsed)
    # Several parts of packed entries, cut to appends that fit.
    many = [(f"k{i:06}", Entry("é" * 300, i, i)) for i in range(4000)]
    records = snapshot_records(many, 4000, 4000)
    assert len(records) > 4
    assert sum(len(batch) for batch in append_batches(records)) == len(records)
    for batch in append_batches(records):
        validate_append_input(pb.AppendInput(records=batch))


def test_records_that_are_not_the_stores_are_foreign() -> None:
    def parsed(headers: list[tuple[bytes, bytes]], body: bytes = b"") -> object:
        record = pb.SequencedRecord(
            headers=[pb.Header(name=n, value=v) for n, v in headers], body=body
        )
        return parse_record(record)

    assert parsed([]) is FOREIGN
    assert parsed([(b"", b"trim")], (5).to_bytes(8, "big")) is COMMAND
    assert parsed([(b"s2s-kv", b"put"), (b"s2s-kv-key", b"k")], b"v") == ChangeRecord("k", "v")
    assert parsed([(b"s2s-kv", b"del"), (b"s2s-kv-key", b"k")]) == ChangeRecord("k", None)
    assert parsed([(b"s2s-kv", b"del"), (b"s2s-kv-key", b"k")], b"body") is FOREIGN
    assert parsed([(b"s2s-kv", b"put"), (b"s2s-kv-key", b"")], b"v") is FOREIGN
    assert parsed([(b"s2s-kv", b"put"), (b"s2s-kv-key", b"a\x00b")], b"v") is FOREIGN
    assert parsed([(b"s2s-kv", b"put"), (b"s2s-kv-key", b"\xff")], b"v") is FOREIGN
    assert parsed([(b"s2s-kv", b"put"), (b"s2s-kv-key", b"k")], b"\xff") is FOREIGN
    assert parsed([(b"s2s-kv", b"put"), (b"other", b"k")], b"v") is FOREIGN
    assert parsed([(b"s2s-kv", b"nope"), (b"s2s-kv-key", b"k")]) is FOREIGN
    snapshot = [
        (b"s2s-kv", b"snapshot"),
        (b"s2s-kv-as-of", b"9"),
        (b"s2s-kv-changed", b"4"),
        (b"s2s-kv-snapshot", b"id"),
        (b"s2s-kv-part", b"1/1"),
    ]
    body = json.dumps([["k", "v", 3, 5]]).encode()
    assert isinstance(parsed(snapshot, body), SnapshotPart)
    for bad_body in (b"{", b"{}", b"[[1, 2, 3, 4]]", b'[["k", "v", -1, 5]]', b'[["", "v", 1, 5]]'):
        assert parsed(snapshot, bad_body) is FOREIGN
    for index, bad in ((1, b"x"), (2, b"10"), (4, b"0/1"), (4, b"2/1"), (4, b"1")):
        damaged = list(snapshot)
        damaged[index] = (damaged[index][0], bad)
        assert parsed(damaged, body) is FOREIGN, damaged
    assert parsed([*snapshot, snapshot[1]], body) is FOREIGN


def test_names_keys_values_and_commit_limits() -> None:
    assert store_stream("cursors") == "kv/cursors"
    assert store_of_stream("kv/cursors") == "cursors"
    assert store_of_stream("tenant-1/kv/cursors") == "cursors"
    assert store_of_stream("kv/a/b") is None
    assert store_of_stream("events") is None
    for bad in ("", ".", "..", "a/b", "a b", "x" * 129, "é"):
        with pytest.raises(S2Error):
            validate_store_name(bad)
    for bad_change in (
        Change("put", "", "v"),
        Change("put", "k" * 1025, "v"),
        Change("put", "a\x00", "v"),
        Change("put", "\ud800", "v"),
        Change("put", "k", "\ud800"),
        Change("put", "k", "v" * (1024 * 1024)),
    ):
        with pytest.raises(S2Error) as caught:
            commit_input([bad_change], None)
        assert caught.value.code == "invalid"
    with pytest.raises(S2Error, match="at most 1000 changes"):
        commit_input([Change("put", "k", "v")] * 1001, None)
    with pytest.raises(S2Error, match="metered bytes"):
        commit_input([Change("put", f"k{i}", "v" * 2000) for i in range(600)], None)
    with pytest.raises(S2Error, match="at least one"):
        commit_input([], 0)
    message = commit_input([Change("put", "k", "v" * 1_000_000)], 7)
    assert message.match_seq_num == 7
    validate_append_input(message)


def test_a_keys_history_survives_compaction_without_duplicates() -> None:
    stream = Stream()
    model = Model()
    model.commit(stream, [Change("put", "k", "1")])
    model.commit(stream, [Change("put", "k", "2"), Change("put", "other", "x")])
    compact(stream, model, random.Random(5))
    model.commit(stream, [Change("delete", "k")])
    history = KeyHistory("k")
    history.fold(stream.read(0))
    assert [(c.op, c.value) for c in history.changes()] == [("put", "2"), ("delete", None)]
    assert [c.op for c in history.changes(1)] == ["delete"]
    assert history.changes(0) == []


def test_a_watcher_caught_between_two_trims_sees_the_state_after_both() -> None:
    """A lagging watcher meets a trim, is shown a change after it, and meets a second trim
    before the first one's snapshot: it must be told what changed across both, deletes
    included."""
    stream, model = Stream(), Model()
    watcher = KvState(watching=True)
    watched: dict[str, str] = {}

    def watch(count: int) -> None:
        for change in watcher.fold(stream.read(watcher.position)[:count]):
            apply_change(watched, change)

    model.commit(stream, [Change("put", "a", "1")])
    watch(1)
    model.commit(stream, [Change("put", "b", "1")])
    first = load(stream)  # compaction 1 folds to 2 ...
    model.commit(stream, [Change("put", "c", "1")])  # ... a commit lands before its part
    for part in snapshot_records(first.entries.items(), first.position, first.changed_through):
        stream.append([part])
    stream.trim(first.position)
    watch(1)  # the gap, and the put of c after it; the snapshot not yet read
    assert watched == {"a": "1", "c": "1"}
    model.commit(stream, [Change("delete", "c")])
    compact(stream, model, random.Random(0))  # a second trim, past the first snapshot
    watch(100)
    assert watched == model.entries and "c" not in watched and watched["b"] == "1"
