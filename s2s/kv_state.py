"""A key-value store's state, folded from its stream's records (formats in `s2s/kv_format.py`),
and a key's history. The SDK, the HTTP API and compaction all fold with this one class.

Folding applies changes in stream order. Snapshot parts are skipped, except where the records
before them were trimmed away: a reader that starts at, or jumps to, a later position than
the one it expected has met a trim (sequence numbers have no other holes). Compaction trims a
store to position T only after every part of a snapshot as of T is durable, and writes those
parts after T. So after a gap ending at T the state starts empty; changes are applied as they
come, and their keys marked touched; each part of a snapshot as of T adds its entries for
the keys not touched (a touched key holds a change newer than T). Once one snapshot as of T
has shown all its parts, the gap is explained, and later parts of any snapshot are skipped
again. A gap that no complete snapshot explains by the end of the records means records were
trimmed by something other than compaction (a manual trim): the state cannot be known, and
`check_whole` raises `kv_history_lost` rather than show a part of it.

docs/adr/0015-kv-store.md gives the argument in full.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from s2s.errors import S2Error
from s2s.kv_format import (
    ChangeRecord,
    Entry,
    Foreign,
    Op,
    SnapshotPart,
    parse_record,
)
from s2s.v1 import records_pb2 as pb


@dataclass(frozen=True)
class KvChange:
    """A change as a watcher or a key's history sees it (`value` None for a delete)."""

    op: Op
    key: str
    value: str | None
    seq_num: int
    timestamp: int


@dataclass
class _Gap:
    """Records before `end` were trimmed; folding waits for a snapshot as of `end`."""

    end: int
    touched: set[str]
    parts: dict[bytes, set[int]]
    before: dict[str, Entry] | None
    """The entries before the gap, kept only to tell watchers what changed across it."""


class KvState:
    """Live entries and the position folded through.

    `position` is the next sequence number to fold (the stream's tail once caught up): the
    store's revision. `changed_through` is one past the last change folded, or the last one a
    snapshot summarized (0: none): a commit made at revision R conflicts with the records
    after R only if `changed_through` grew past R.
    """

    def __init__(self, *, watching: bool = False) -> None:
        """`watching`: `fold` reports the changes it applies, and those across a gap."""
        self.entries: dict[str, Entry] = {}
        self.position = 0
        self.changed_through = 0
        self.foreign_records = 0
        """Records skipped as not the store's (since the last gap)."""
        self.live_chars = 0
        """The characters of the live keys and values: what a snapshot of them would hold."""
        self._watching = watching
        self._gap: _Gap | None = None

    def fold(self, records: Iterable[pb.SequencedRecord]) -> list[KvChange]:
        """Apply records that follow `position` in stream order; returns the changes they
        made when `watching` (else an empty list)."""
        changes: list[KvChange] = []
        for record in records:
            seq_num = record.seq_num
            if seq_num < self.position:
                continue  # read twice: already applied
            if seq_num > self.position:
                self._open_gap(seq_num)
            self.position = seq_num + 1
            parsed = parse_record(record)
            if isinstance(parsed, ChangeRecord):
                self._apply(parsed, seq_num, record.timestamp, changes)
            elif isinstance(parsed, SnapshotPart):
                self._apply_part(parsed, changes)
            elif isinstance(parsed, Foreign):
                self.foreign_records += 1
        return changes

    def _apply(
        self, change: ChangeRecord, seq_num: int, timestamp: int, changes: list[KvChange]
    ) -> None:
        key = change.key
        old = self.entries.pop(key, None)
        if old is not None:
            self.live_chars -= len(key) + len(old.value)
        if change.value is not None:
            self.entries[key] = Entry(change.value, seq_num, timestamp)
            self.live_chars += len(key) + len(change.value)
        self.changed_through = seq_num + 1
        if self._gap is not None:
            self._gap.touched.add(key)
        if self._watching:
            op: Op = "put" if change.value is not None else "delete"
            changes.append(KvChange(op, key, change.value, seq_num, timestamp))

    def _open_gap(self, end: int) -> None:
        """Records before `end` are gone: start over, waiting for a snapshot as of `end`."""
        before = None
        if self._watching:
            before = self.entries if self._gap is None else self._watched(self._gap)
        self._gap = _Gap(end, set(), {}, before)
        self.entries = {}
        self.live_chars = 0
        self.changed_through = 0
        self.foreign_records = 0

    def _watched(self, gap: _Gap) -> dict[str, Entry]:
        """What watchers were shown during an unexplained gap: the state before it, and the
        changes since (the snapshot entries applied are not shown until it is explained)."""
        assert gap.before is not None
        shown = dict(gap.before)
        for key in gap.touched:
            entry = self.entries.get(key)
            if entry is None:
                shown.pop(key, None)
            else:
                shown[key] = entry
        return shown

    def _apply_part(self, part: SnapshotPart, changes: list[KvChange]) -> None:
        gap = self._gap
        if gap is None or part.as_of != gap.end:
            return  # everything it summarizes has been folded already
        entries = self.entries
        touched = gap.touched
        for key, entry in part.entries:
            if key not in touched:
                old = entries.get(key)
                if old is not None:
                    self.live_chars -= len(key) + len(old.value)
                entries[key] = entry
                self.live_chars += len(key) + len(entry.value)
        seen = gap.parts.setdefault(part.snapshot_id, set())
        seen.add(part.index)
        self.changed_through = max(self.changed_through, part.changed)
        if len(seen) == part.count:
            self._gap = None
            if gap.before is not None:
                changes.extend(_differences(gap.before, entries, touched))

    def check_whole(self) -> None:
        """Raise `kv_history_lost` if a gap is unexplained, once every record up to the
        stream's tail has been folded."""
        if self._gap is not None:
            raise S2Error(
                "kv_history_lost",
                f"the store's records before position {self._gap.end} were trimmed, and no "
                "snapshot of its compaction holds them (a trim or retention of its stream "
                "deleted them): its state cannot be rebuilt",
            )


def _differences(
    before: dict[str, Entry], after: dict[str, Entry], reported: set[str]
) -> list[KvChange]:
    """What a watcher that saw `before` must be told to see `after`, besides the keys it was
    told of already (`reported`): the values the trimmed records changed, and the deletes."""
    out: list[KvChange] = []
    for key, entry in after.items():
        if key not in reported and before.get(key) != entry:
            out.append(KvChange("put", key, entry.value, entry.seq_num, entry.timestamp))
    for key, entry in before.items():
        if key not in reported and key not in after:
            out.append(KvChange("delete", key, None, entry.seq_num, entry.timestamp))
    return out


class KeyHistory:
    """One key's changes still in the stream, oldest first: its changes, and the entries
    snapshots hold for it (each change once, though several snapshots may hold it).
    Deletes that compaction dropped are gone; so are values it replaced."""

    def __init__(self, key: str) -> None:
        self.key = key
        self._changes: dict[int, KvChange] = {}

    def fold(self, records: Iterable[pb.SequencedRecord]) -> None:
        key = self.key
        for record in records:
            parsed = parse_record(record)
            if isinstance(parsed, ChangeRecord) and parsed.key == key:
                op: Op = "put" if parsed.value is not None else "delete"
                self._changes[record.seq_num] = KvChange(
                    op, key, parsed.value, record.seq_num, record.timestamp
                )
            elif isinstance(parsed, SnapshotPart):
                for entry_key, entry in parsed.entries:
                    if entry_key == key and entry.seq_num not in self._changes:
                        self._changes[entry.seq_num] = KvChange(
                            "put", key, entry.value, entry.seq_num, entry.timestamp
                        )

    def changes(self, limit: int | None = None) -> list[KvChange]:
        """The latest `limit` changes (all if None), oldest first."""
        ordered = [self._changes[seq_num] for seq_num in sorted(self._changes)]
        if limit is None:
            return ordered
        return ordered[-limit:] if limit > 0 else []
