"""Model-based tests: the sequencer and reader against a pure-Python model of the contract.

A hypothesis state machine drives a real `StreamStore` (LMDB on a temporary directory, manual
clock) through appends, command records, clock moves, timestamping reconfigurations, reads,
background jobs and reopenings, and checks every ack, every error and every read result
against `StreamModel`, which is written from docs/s2-compat.md §2, §6.4, §6.5, §7 and §8 only,
never from the implementation.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Coroutine
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, Phase, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from s2s.config import StreamConfig
from s2s.errors import FencingTokenMismatch, ReadUnwritten, S2Error, SeqNumMismatch
from s2s.records import fence_record, trim_record, validate_append_input
from s2s.v1 import records_pb2 as pb
from server.reader import ReadLimits, ReadStart
from server.sequencer import AppendAck, StreamPosition
from server.storage.choice import LMDB
from server.streamstore import StreamStore
from tests.conftest import BASIN, MANUAL_JOBS, ManualClock, decode
from tests.storage_mode import empty_tables, postgres_database, postgres_mode

T = TypeVar("T")

U64_MAX = 2**64 - 1
STREAMS = ("s", "t")
TOKENS = ("", "a", "b", "token-c")
READ_RECORDS_MAX = 1000
READ_BYTES_MAX = 1024 * 1024
MODES = ("client-prefer", "client-require", "arrival")
RAM_DIR = "/dev/shm"


# --- the model ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rec:
    seq_num: int
    timestamp: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes

    @property
    def metered(self) -> int:
        # docs/s2-compat.md §6.5: 8 + 2 per header + names and values + body.
        return 8 + sum(2 + len(n) + len(v) for n, v in self.headers) + len(self.body)


@dataclass(frozen=True)
class Failure:
    """An expected error: its code and the machine-readable value it must carry."""

    code: str
    value: Any = None


@dataclass
class StreamModel:
    records: list[Rec] = field(default_factory=list)
    fencing_token: str = ""
    trim_point: int = 0
    mode: str = "client-prefer"
    uncapped: bool = False

    @property
    def next_seq(self) -> int:
        return len(self.records)

    @property
    def tail(self) -> tuple[int, int]:
        # docs/s2-compat.md §2: empty stream tail is {0, 0}; else the last record's timestamp.
        return (self.next_seq, self.records[-1].timestamp if self.records else 0)

    def append(
        self,
        records: list[pb.AppendRecord],
        match_seq_num: int | None,
        fencing_token: str | None,
        now: int,
    ) -> tuple[tuple[int, int], tuple[int, int]] | Failure:
        """docs/s2-compat.md §7: checks in order, then timestamps, then command effects."""
        if fencing_token is not None and fencing_token != self.fencing_token:
            return Failure("fencing_token_mismatch", self.fencing_token)
        if match_seq_num is not None and match_seq_num != self.next_seq:
            return Failure("seq_num_mismatch", self.next_seq)
        running = self.tail[1]
        timestamps = []
        for record in records:
            if self.mode == "arrival":
                value = now
            elif record.HasField("timestamp"):
                value = record.timestamp
            elif self.mode == "client-require":
                return Failure("invalid")
            else:
                value = now
            if not self.uncapped and value > now:
                value = now
            value = max(value, running)
            running = value
            timestamps.append(value)
        first = self.next_seq
        for record, timestamp in zip(records, timestamps, strict=True):
            seq = self.next_seq
            headers = tuple((h.name, h.value) for h in record.headers)
            self.records.append(Rec(seq, timestamp, headers, record.body))
            if len(headers) == 1 and headers[0][0] == b"":
                if headers[0][1] == b"fence":
                    self.fencing_token = record.body.decode()
                elif headers[0][1] == b"trim":
                    requested = int.from_bytes(record.body, "big")
                    self.trim_point = max(self.trim_point, min(requested, seq + 1))
        return (first, timestamps[0]), self.tail

    def resolve_start(
        self, start: ReadStart, limits: ReadLimits, can_follow: bool
    ) -> int | Failure:
        """docs/s2-compat.md §8: start resolution and the 416 table (before any trimming)."""
        timestamp, until = start.timestamp, limits.until
        if timestamp is not None and until is not None and until <= timestamp:
            return Failure("invalid")
        tail_seq, tail_ts = self.tail
        via_timestamp = False
        if start.seq_num is not None:
            seq = start.seq_num
            beyond = seq > tail_seq
        elif start.timestamp is not None:
            beyond = start.timestamp > tail_ts
            seq = next(
                (r.seq_num for r in self.records if r.timestamp >= start.timestamp), tail_seq
            )
            via_timestamp = True
        else:
            seq = max(tail_seq - (start.tail_offset or 0), 0)
            beyond = False
        if beyond:
            if not limits.clamp:
                return Failure("read_unwritten", self.tail)
            seq = tail_seq
            via_timestamp = False
        if seq == tail_seq and not can_follow and not via_timestamp:
            return Failure("read_unwritten", self.tail)
        return seq

    def collect(
        self, seq: int, count: int | None, size: int | None, until: int | None
    ) -> list[Rec]:
        """Records from `seq`, skipping trimmed ones, stopping at the first that breaks a bound."""
        out: list[Rec] = []
        total = 0
        for record in self.records[max(seq, self.trim_point) :]:
            if count is not None and len(out) + 1 > count:
                break
            if size is not None and total + record.metered > size:
                break
            if until is not None and record.timestamp >= until:
                break
            out.append(record)
            total += record.metered
        return out

    def read_unary(self, start: ReadStart, limits: ReadLimits) -> list[Rec] | Failure:
        wait = min(limits.wait_secs or 0, 60)
        seq = self.resolve_start(start, limits, can_follow=wait > 0)
        if isinstance(seq, Failure):
            return seq
        # Unary limits are clamped to 1000 records and 1 MiB, never rejected.
        count = READ_RECORDS_MAX if limits.count is None else min(limits.count, READ_RECORDS_MAX)
        size = READ_BYTES_MAX if limits.bytes is None else min(limits.bytes, READ_BYTES_MAX)
        return self.collect(seq, count, size, limits.until)

    def read_session(self, start: ReadStart, limits: ReadLimits) -> list[Rec] | Failure:
        bounded = limits.count is not None or limits.bytes is not None or limits.until is not None
        may_follow = not bounded or bool(limits.wait_secs)
        seq = self.resolve_start(start, limits, can_follow=may_follow)
        if isinstance(seq, Failure):
            return seq
        return self.collect(seq, limits.count, limits.bytes, limits.until)


def as_tuples(records: list[pb.SequencedRecord]) -> list[Rec]:
    return [
        Rec(r.seq_num, r.timestamp, tuple((h.name, h.value) for h in r.headers), r.body)
        for r in records
    ]


def describe(records: list[pb.AppendRecord]) -> list[str]:
    """One short line per record, for the notes of a failing example."""
    out = []
    for r in records:
        ts = r.timestamp if r.HasField("timestamp") else "-"
        heads = [(h.name, h.value) for h in r.headers]
        out.append(f"ts={ts} headers={heads} body={r.body[:12]!r}")
    return out


def summary(expected: object) -> str:
    if isinstance(expected, list):
        return f"{len(expected)} records {[(r.seq_num, r.timestamp) for r in expected]}"
    return repr(expected)


def failure_of(error: S2Error) -> Failure:
    if isinstance(error, FencingTokenMismatch):
        return Failure(error.code, error.current_token)
    if isinstance(error, SeqNumMismatch):
        return Failure(error.code, error.expected_seq_num)
    if isinstance(error, ReadUnwritten):
        return Failure(error.code, (error.tail_seq_num, error.tail_timestamp))
    return Failure(error.code)


# --- strategies --------------------------------------------------------------------------------
#
# Rules take plain, state-independent specs (printed as-is in a failing example, and shrunk
# well by Hypothesis); each spec is resolved against the model's state when the rule runs.


@dataclass(frozen=True)
class Ts:
    """A timestamp: `delta` ms from the clock, from a known record (`index` modulo their
    number), or the absolute `index`."""

    base: str
    index: int = 0
    delta: int = 0

    def resolve(self, now: int, known: list[int]) -> int:
        if self.base == "abs":
            return self.index
        base = known[self.index % len(known)] if self.base == "record" and known else now
        return min(U64_MAX, max(0, base + self.delta))


@dataclass(frozen=True)
class Pos:
    """A sequence number: `n` from the head, `n` back from the tail, `n` past it, or u64 max."""

    base: str
    n: int = 0

    def resolve(self, next_seq: int) -> int:
        if self.base == "head":
            return self.n
        if self.base == "back":
            return max(0, next_seq - self.n)
        if self.base == "ahead":
            return next_seq + self.n
        return U64_MAX


@dataclass(frozen=True)
class RecordSpec:
    """`kind` says which fields matter; `stamped` says whether `ts` is used when the batch
    stamps only some of its records."""

    kind: str  # "plain", "fence" or "trim"
    ts: Ts
    stamped: bool
    body: bytes = b""
    headers: tuple[tuple[bytes, bytes], ...] = ()
    token: str = ""
    trim: Pos = Pos("head")

    def __repr__(self) -> str:
        what = {
            "plain": f"body={self.body!r}, headers={self.headers!r}",
            "fence": f"token={self.token!r}",
            "trim": f"trim={self.trim!r}",
        }[self.kind]
        return f"{self.kind}({what}, ts={self.ts!r}, stamped={self.stamped})"

    def build(self, next_seq: int, now: int, known: list[int], stamp: bool) -> pb.AppendRecord:
        if self.kind == "fence":
            record = fence_record(self.token)
        elif self.kind == "trim":
            record = trim_record(self.trim.resolve(next_seq))
        else:
            record = pb.AppendRecord(
                body=self.body, headers=[pb.Header(name=n, value=v) for n, v in self.headers]
            )
        if stamp:
            record.timestamp = self.ts.resolve(now, known)
        return record


@dataclass(frozen=True)
class BatchSpec:
    records: tuple[RecordSpec, ...]
    stamping: str
    """Which records carry a timestamp: "none", "all" (client-require needs that), "some"."""
    match: Pos | None
    current_token: bool
    """Carry the stream's current fencing token (else `token`, if not None)."""
    token: str | None


@dataclass(frozen=True)
class Bytes:
    """A bytes limit: `delta` from the metered size of the read's first `records` records
    (when it can start), else the absolute `delta`."""

    records: int | None
    delta: int


@dataclass(frozen=True)
class ReadSpec:
    """Every start is drawn; `start` says which one is used."""

    start: str  # "seq_num", "timestamp" or "tail_offset"
    seq: Pos
    ts: Ts
    tail_offset: int
    count: int | None
    bytes: Bytes | None
    until: Ts | None
    clamp: bool

    def __repr__(self) -> str:
        value = {"seq_num": self.seq, "timestamp": self.ts, "tail_offset": self.tail_offset}
        return (
            f"ReadSpec({self.start}={value[self.start]!r}, count={self.count}, "
            f"bytes={self.bytes}, until={self.until}, clamp={self.clamp})"
        )


timestamps = st.one_of(
    st.builds(Ts, st.just("now"), st.just(0), st.integers(-300, 300)),
    st.builds(Ts, st.just("record"), st.integers(0, 64), st.integers(-1, 1)),
    st.builds(Ts, st.just("abs"), st.sampled_from([0, 1, U64_MAX])),
)
trim_targets = st.one_of(
    st.builds(Pos, st.sampled_from(["head", "back"]), st.integers(0, 30)),
    st.builds(Pos, st.just("ahead"), st.integers(0, 3)),
    st.just(Pos("max")),
)
_plain_records = st.builds(
    RecordSpec,
    kind=st.just("plain"),
    body=st.binary(max_size=24),
    headers=st.lists(
        st.tuples(st.binary(min_size=1, max_size=3), st.binary(max_size=3)), max_size=2
    ).map(tuple),
    ts=timestamps,
    stamped=st.booleans(),
)
_command_records = st.one_of(
    st.builds(
        RecordSpec,
        kind=st.just("fence"),
        token=st.sampled_from(TOKENS),
        ts=timestamps,
        stamped=st.booleans(),
    ),
    st.builds(
        RecordSpec, kind=st.just("trim"), trim=trim_targets, ts=timestamps, stamped=st.booleans()
    ),
)
record_specs = st.one_of(_plain_records, _plain_records, _plain_records, _command_records)
matches = st.one_of(
    st.none(),
    st.none(),
    st.just(Pos("back", 0)),  # right
    st.builds(Pos, st.sampled_from(["back", "ahead"]), st.integers(1, 5)),  # wrong
    st.just(Pos("max")),
)
batches = st.builds(
    BatchSpec,
    records=st.lists(record_specs, min_size=1, max_size=20).map(tuple),
    stamping=st.sampled_from(["none", "all", "some"]),
    match=matches,
    current_token=st.booleans(),
    token=st.one_of(st.none(), st.none(), st.sampled_from(TOKENS)),
)
commands = st.builds(
    BatchSpec,
    records=st.tuples(_command_records),
    stamping=st.just("none"),
    match=st.none(),
    # A fence's batch is checked against the token it replaces (7.3).
    current_token=st.booleans(),
    token=st.none(),
)
reads = st.builds(
    ReadSpec,
    start=st.sampled_from(["seq_num", "timestamp", "tail_offset"]),
    seq=st.one_of(
        st.builds(Pos, st.sampled_from(["head", "back"]), st.integers(0, 40)),
        st.builds(Pos, st.just("ahead"), st.integers(0, 3)),
    ),
    ts=timestamps,
    tail_offset=st.integers(0, 40),
    count=st.one_of(st.none(), st.none(), st.integers(0, 5), st.integers(0, 40)),
    bytes=st.one_of(
        st.none(),
        st.none(),
        st.builds(Bytes, st.integers(0, 40), st.integers(-1, 1)),
        st.builds(Bytes, st.none(), st.integers(0, 600)),
    ),
    until=st.one_of(st.none(), st.none(), st.none(), timestamps),
    clamp=st.booleans(),
)


# --- the state machine -------------------------------------------------------------------------


class SequencerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        # The model checks semantics, not durability: tmpfs (if any) makes fsync free, which
        # makes examples, and above all shrinking a failure, several times faster.
        self.dir = tempfile.mkdtemp(
            prefix="s2s-model-", dir=RAM_DIR if os.path.isdir(RAM_DIR) else None
        )
        # On PostgreSQL, one database emptied per example: a database each costs more.
        self.storage = postgres_database("s2s_model") if postgres_mode() else LMDB
        if postgres_mode():
            empty_tables(self.storage)
        self.clock = ManualClock()
        self.store = self.run(self._open())
        self.run(self.store.create_basin(BASIN))
        self.models = {name: StreamModel() for name in STREAMS}

    @initialize(
        modes=st.lists(st.sampled_from(MODES), min_size=2, max_size=2),
        uncapped=st.lists(st.booleans(), min_size=2, max_size=2),
    )
    def create_streams(self, modes: list[str], uncapped: list[bool]) -> None:
        for name, mode, free in zip(STREAMS, modes, uncapped, strict=True):
            # Infinite retention: the model does not expire records as the clock moves.
            config = StreamConfig(
                retention="infinite", timestamping_mode=mode, timestamping_uncapped=free
            )
            self.run(self.store.create_stream(BASIN, name, config))
            self.models[name].mode, self.models[name].uncapped = mode, free

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    async def _open(self) -> StreamStore:
        return await StreamStore.open(
            self.dir, clock=self.clock, job_settings=MANUAL_JOBS, storage=self.storage
        )

    def teardown(self) -> None:
        try:
            self.run(self.store.close())
        finally:
            self.loop.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    def _append(
        self,
        stream: str,
        records: list[pb.AppendRecord],
        match_seq_num: int | None,
        fencing_token: str | None,
        quiet: bool = False,
    ) -> None:
        message = pb.AppendInput(records=records)
        if match_seq_num is not None:
            message.match_seq_num = match_seq_num
        if fencing_token is not None:
            message.fencing_token = fencing_token
        batch = validate_append_input(message)
        model = self.models[stream]
        expected = model.append(records, match_seq_num, fencing_token, self.clock.now)
        if not quiet:
            note(
                f"append {stream!r} at {self.clock.now} ({model.mode}, uncapped "
                f"{model.uncapped}): {describe(records)} match_seq_num={match_seq_num} "
                f"fencing_token={fencing_token!r} ⇒ expect {summary(expected)}"
            )
        try:
            ack = self.run(self.store.append(BASIN, stream, batch))
        except S2Error as error:
            assert failure_of(error) == expected
            return
        assert not isinstance(expected, Failure), f"expected {expected}, got ack {ack}"
        (first, first_ts), (end, end_ts) = expected
        # Sequential appends: the tail at ack time is the batch's end (docs/s2-compat.md §7.6).
        assert ack == AppendAck(
            StreamPosition(first, first_ts),
            StreamPosition(end, end_ts),
            StreamPosition(end, end_ts),
        )

    def _append_spec(self, stream: str, spec: BatchSpec) -> None:
        model = self.models[stream]
        known = [r.timestamp for r in model.records[-5:]]
        records = [
            r.build(
                model.next_seq,
                self.clock.now,
                known,
                spec.stamping == "all" or (spec.stamping == "some" and r.stamped),
            )
            for r in spec.records
        ]
        match = None if spec.match is None else spec.match.resolve(model.next_seq)
        token = model.fencing_token if spec.current_token else spec.token
        self._append(stream, records, match, token)

    # Several batches per step, so streams grow long enough for reads to be interesting.
    @rule(stream=st.sampled_from(STREAMS), specs=st.lists(batches, min_size=1, max_size=3))
    def append(self, stream: str, specs: list[BatchSpec]) -> None:
        for spec in specs:
            self._append_spec(stream, spec)

    @rule(stream=st.sampled_from(STREAMS), spec=commands)
    def command(self, stream: str, spec: BatchSpec) -> None:
        self._append_spec(stream, spec)

    @rule(ms=st.one_of(st.integers(0, 50), st.just(100_000)))
    def advance_clock(self, ms: int) -> None:
        note(f"clock +{ms} ms")
        self.clock.advance(ms)

    @rule(
        stream=st.sampled_from(STREAMS),
        mode=st.one_of(st.none(), st.sampled_from(MODES)),
        uncapped=st.one_of(st.none(), st.booleans()),
        keys=st.sampled_from(["mode", "uncapped", "both"]),
    )
    def reconfigure(self, stream: str, mode: str | None, uncapped: bool | None, keys: str) -> None:
        patch: dict[str, Any] = {}
        model = self.models[stream]
        # None clears the field: it falls back to the (empty) basin default, then the system's.
        if keys in ("mode", "both"):
            patch["timestamping_mode"] = mode
            model.mode = mode or "client-prefer"
        if keys in ("uncapped", "both"):
            patch["timestamping_uncapped"] = uncapped
            model.uncapped = bool(uncapped)
        note(f"reconfigure {stream!r} {patch}")
        record = self.run(self.store.reconfigure_stream(BASIN, stream, patch))
        assert (record.config.timestamping_mode, record.config.timestamping_uncapped) == (
            model.mode,
            model.uncapped,
        )

    def _read_args(self, stream: str, spec: ReadSpec) -> tuple[ReadStart, ReadLimits]:
        model = self.models[stream]
        known = [r.timestamp for r in model.records]
        if spec.start == "seq_num":
            start = ReadStart(seq_num=spec.seq.resolve(model.next_seq))
        elif spec.start == "timestamp":
            start = ReadStart(timestamp=spec.ts.resolve(self.clock.now, known))
        else:
            start = ReadStart(tail_offset=spec.tail_offset)
        size = None
        if spec.bytes is not None:
            size = spec.bytes.delta
            # Right at, just below or just above a record boundary of this very read.
            resolved = model.resolve_start(start, ReadLimits(clamp=spec.clamp), can_follow=True)
            if spec.bytes.records is not None and not isinstance(resolved, Failure):
                first = max(resolved, model.trim_point)
                readable = model.records[first : first + spec.bytes.records]
                size = max(0, sum(r.metered for r in readable) + spec.bytes.delta)
        until = None if spec.until is None else spec.until.resolve(self.clock.now, known)
        return start, ReadLimits(spec.count, size, until, spec.clamp)

    # A small wait makes the read able to follow (docs/s2-compat.md §8: "may follow" ⇔ wait > 0).
    @rule(
        stream=st.sampled_from(STREAMS),
        spec=reads,
        wait=st.sampled_from([None, None, None, 0.0, 0.005]),
    )
    def read(self, stream: str, spec: ReadSpec, wait: float | None) -> None:
        start, base = self._read_args(stream, spec)
        limits = replace(base, wait_secs=wait)
        model = self.models[stream]
        expected = model.read_unary(start, limits)
        note(f"read {stream!r} {start} {limits} ⇒ expect {summary(expected)}")
        try:
            output = self.run(self.store.read(BASIN, stream, start, limits))
        except S2Error as error:
            assert failure_of(error) == expected
            return
        assert not isinstance(expected, Failure), f"expected {expected}, read {output}"
        got = [] if output.records is None else as_tuples(decode(output.records.payload))
        assert got == expected
        if output.records is not None:
            assert output.records.count == len(expected)
            assert output.records.metered_bytes == sum(r.metered for r in expected)

    @rule(stream=st.sampled_from(STREAMS), spec=reads)
    def read_session(self, stream: str, spec: ReadSpec) -> None:
        start, limits = self._read_args(stream, spec)
        if not limits.bounded:
            # Unbounded sessions follow forever; a short wait ends them once idle.
            limits = replace(limits, wait_secs=0.005)
        model = self.models[stream]
        expected = model.read_session(start, limits)
        note(f"read_session {stream!r} {start} {limits} ⇒ expect {summary(expected)}")

        async def collect() -> list[Rec]:
            got: list[Rec] = []
            session = await self.store.read_session(BASIN, stream, start, limits)
            async for output in session:
                if output.records is not None:
                    got.extend(as_tuples(decode(output.records.payload)))
            return got

        try:
            got = self.run(collect())
        except S2Error as error:
            assert failure_of(error) == expected
            return
        assert not isinstance(expected, Failure), f"expected {expected}, read {got}"
        assert got == expected

    @rule()
    def run_background_jobs(self) -> None:
        note("run background jobs")
        # Physically deletes trimmed batches; reads must not change (they already hid them).
        self.run(self.store.jobs.run_once())

    @rule()
    def reopen(self) -> None:
        note("reopen")
        self.run(self.store.close())
        self.store = self.run(self._open())

    @invariant()
    def tail_and_token_match(self) -> None:
        for name, model in self.models.items():
            tail = self.run(self.store.check_tail(BASIN, name))
            assert (tail.seq_num, tail.timestamp) == model.tail
            # A token that cannot match: the error reveals the current token, changing nothing.
            wrong = model.fencing_token + "?"
            self._append(name, [pb.AppendRecord(body=b"never")], None, wrong, quiet=True)


SequencerMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=80,
    deadline=None,
    # One minimal example is what a reader of a failure needs; explaining it (which parts
    # could vary) and shrinking a second bug would add minutes.
    report_multiple_bugs=False,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# Passing runs take ~30 s; a failing one may shrink for up to Hypothesis's 5-minute limit, and
# should then report its minimal example instead of being killed by the 300 s default timeout.
TestSequencerModel = pytest.mark.timeout(900)(SequencerMachine.TestCase)


# --- discrepancies pinned by hand ----------------------------------------------------------


@pytest.mark.parametrize("clamp", [False, True])
async def test_timestamp_read_beyond_empty_stream_tail_is_416(
    store: StreamStore, clamp: bool
) -> None:
    """docs/s2-compat.md §8: `timestamp` > T.timestamp without clamp ⇒ 416; with clamp the
    start becomes T.seq_num and, for a read that cannot follow, that is 416 too. An empty
    stream's tail is {0, 0} (docs/s2-compat.md §2), so timestamp=1 is beyond it."""
    await store.create_stream(BASIN, "empty")
    with pytest.raises(ReadUnwritten) as raised:
        await store.read(BASIN, "empty", ReadStart(timestamp=1), ReadLimits(count=10, clamp=clamp))
    assert (raised.value.tail_seq_num, raised.value.tail_timestamp) == (0, 0)


async def test_timestamp_read_resolving_to_the_tail_is_empty_not_416(store: StreamStore) -> None:
    """docs/s2-compat.md §8: a start by `timestamp` that resolves to the tail of a read
    that cannot follow is a 200 with no records, unlike a start by seq_num or tail_offset."""
    await store.create_stream(BASIN, "empty")
    out = await store.read(BASIN, "empty", ReadStart(timestamp=0), ReadLimits(count=10))
    assert out.records is None
    with pytest.raises(ReadUnwritten):
        await store.read(BASIN, "empty", ReadStart(seq_num=0), ReadLimits(count=10))
    with pytest.raises(ReadUnwritten):
        await store.read(BASIN, "empty", ReadStart(tail_offset=0), ReadLimits(count=10))
