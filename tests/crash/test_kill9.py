"""Crash tests: kill -9 a real process flooding appends, then prove nothing acknowledged was lost.

Each run starts `tests.crash.appender` as a child process, reads the acknowledgements it prints,
kills it with SIGKILL at a chosen moment, reads what it had already printed, and reopens the
data directory in this process. The store must then hold, for every stream:

- every acknowledged batch, byte-identical, at exactly the sequence numbers its ack gave;
- sequence numbers dense from 0 to the tail, each record's timestamp at or after the previous;
- only whole batches: every visible batch is one planned batch with all of its records, in
  order; none is visible twice (a sequence number reused for another batch would show here);
- a tail equal to the last visible record + 1, on the read path and in the raw layout
  (`BATCHES` contiguous, one per append, `TAILS` agreeing, one `TIMESTAMPS` key per batch);
- and the next append starting exactly at that tail.

Kill points are spread from the first acknowledgement to ~1.5 s into the flood; some runs kill
the same directory again and again, including during start-up (creating the basin and streams),
and check every acknowledgement of every earlier run too.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from server.jobs import JobSettings
from server.reader import ReadLimits, ReadStart
from server.storage.kv import Table
from server.storage.layout import (
    Batch,
    TailRow,
    batch_key,
    batch_key_last_seq,
    sid_key,
    timestamp_key,
    timestamp_key_last_seq,
)
from server.streamstore import StreamStore
from tests.conftest import decode
from tests.crash import appender
from tests.crash.appender import (
    BASIN,
    STREAMS,
    PlannedBatch,
    make_body,
    parse_body,
    plan,
    to_batch,
)
from tests.crash.child import run_and_kill
from tests.storage_mode import storage_for

FIRST_ACK_TIMEOUT_S = 60.0
PROBE_SEED = 0
"""Seed of the one batch the verifier appends per stream; children use seeds >= 1."""


@dataclass(frozen=True)
class Ack:
    stream: str
    seed: int
    batch_id: int
    start: int
    end: int
    count: int


def run_child(
    data_dir: Path,
    seed: int,
    kill_after_s: float,
    after_first_ack: bool,
    module: str = "tests.crash.appender",
) -> list[Ack]:
    """Run the appender, SIGKILL it `kill_after_s` after its first ack (or after spawning)."""
    killed = run_and_kill(
        module,
        [str(data_dir), str(seed), storage_for(data_dir)],
        data_dir.parent / f"{data_dir.name}-{seed}.stderr",
        kill_after_s,
        "ACK" if after_first_ack else None,
        FIRST_ACK_TIMEOUT_S,
    )
    lines, stderr_text = killed.lines, killed.stderr
    errors = [line for line in lines if line.startswith("ERR")]
    assert not errors, f"the appender saw failures: {errors[:5]}\n{stderr_text}"
    if after_first_ack:
        assert any(line.startswith("ACK") for line in lines), stderr_text
    acks = []
    for line in lines:
        if line.startswith("ACK"):
            _, stream, seed_s, batch_id, start, end, count = line.split()
            acks.append(Ack(stream, int(seed_s), int(batch_id), int(start), int(end), int(count)))
    return acks


class Plans:
    """Every batch the children (and the verifier's probes) sent, regenerated on demand."""

    def __init__(self) -> None:
        self._batches: dict[tuple[int, int], list[list[bytes]]] = {}
        self._iters: dict[tuple[int, int], Iterator[PlannedBatch]] = {}

    def bodies(self, stream: int, seed: int, batch_id: int) -> list[bytes]:
        if seed == PROBE_SEED:
            return probe_bodies(stream, batch_id)
        key = (stream, seed)
        if key not in self._batches:
            self._batches[key] = []
            self._iters[key] = plan(stream, seed)
        batches = self._batches[key]
        while len(batches) < batch_id:
            batches.append(next(self._iters[key]).bodies)
        return batches[batch_id - 1]


def probe_bodies(stream: int, probe_id: int) -> list[bytes]:
    return [make_body(stream, PROBE_SEED, probe_id, i, 3, 40 + 10 * i) for i in range(3)]


async def read_all(store: StreamStore, stream: str, tail: int) -> list[tuple[int, int, bytes]]:
    """(seq_num, timestamp, body) of every record from 0 to `tail`, through the read path."""
    records: list[tuple[int, int, bytes]] = []
    while len(records) < tail:
        out = await store.read(
            BASIN, stream, ReadStart(seq_num=len(records)), ReadLimits(count=1000)
        )
        assert out.records is not None, f"{stream}: nothing readable at {len(records)} < {tail}"
        for record in decode(out.records.payload):
            assert record.seq_num == len(records), f"{stream}: gap before {record.seq_num}"
            records.append((record.seq_num, record.timestamp, record.body))
    return records


def check_layout(store: StreamStore, stream: str, visible: list[tuple[int, int]]) -> None:
    """The raw rows agree: one contiguous `BATCHES` row per visible batch, and the tail row."""
    sid = store.get_stream(BASIN, stream).sid
    rows = store.kv.scan(Table.BATCHES, batch_key(sid, 0), batch_key(sid + 1, 0), 1 << 30)
    stored = []
    for key, value in rows:
        batch = Batch(value)
        assert batch.last_seq == batch_key_last_seq(key)
        stored.append((batch.first_seq, batch.last_seq + 1))
    assert stored == visible, f"{stream}: stored batches differ from the appended batches"
    tail_row = store.kv.get(Table.TAILS, sid_key(sid))
    next_seq = 0 if tail_row is None else TailRow.decode(tail_row).next_seq
    assert next_seq == (visible[-1][1] if visible else 0)
    stamps = store.kv.scan(
        Table.TIMESTAMPS, timestamp_key(sid, 0, 0), timestamp_key(sid + 1, 0, 0), 1 << 30
    )
    assert sorted(timestamp_key_last_seq(key) for key, _ in stamps) == [
        end - 1 for _, end in visible
    ]


async def verify(data_dir: Path, acks: list[Ack], plans: Plans, probe_id: int) -> dict[str, int]:
    """Check the reopened store against every ack so far; append a probe; return the tails."""
    store = await StreamStore.open(
        str(data_dir), job_settings=JobSettings(interval_s=3600), storage=storage_for(data_dir)
    )
    tails = {}
    try:
        streams = {record.name for record in store.list_streams(BASIN)[0]}
        for index, stream in enumerate(STREAMS):
            stream_acks = [a for a in acks if a.stream == stream]
            if stream not in streams:
                # Killed while creating it: then nothing can have been acknowledged.
                assert not stream_acks
                continue
            tail = (await store.check_tail(BASIN, stream)).seq_num
            records = await read_all(store, stream, tail)
            visible = check_batches(stream, index, records, plans)
            for ack in stream_acks:
                assert visible.get((ack.seed, ack.batch_id)) == (ack.start, ack.end), (
                    f"{stream}: acknowledged batch {ack} is not where its ack said"
                )
                assert ack.end - ack.start == ack.count
            check_layout(store, stream, sorted(visible.values()))
            probe = await store.append(BASIN, stream, to_batch(probe_bodies(index, probe_id)))
            assert probe.start.seq_num == tail, f"{stream}: sequence numbers reused after reopen"
            assert probe.end.seq_num == tail + 3
            acks.append(Ack(stream, PROBE_SEED, probe_id, tail, tail + 3, 3))
            tails[stream] = tail + 3
    finally:
        await store.close()
    return tails


def check_batches(
    stream: str, index: int, records: list[tuple[int, int, bytes]], plans: Plans
) -> dict[tuple[int, int], tuple[int, int]]:
    """Split the records into batches; each must be one whole planned batch, seen once.

    Returns (seed, batch_id) -> (start_seq, end_seq) of every visible batch.
    """
    visible: dict[tuple[int, int], tuple[int, int]] = {}
    position = 0
    last_timestamp = 0
    while position < len(records):
        header = parse_body(records[position][2])
        assert header.stream == index, f"{stream}: record {position} is from another stream"
        assert header.index == 0, f"{stream}: batch starting at {position} lacks its head"
        batch = (header.seed, header.batch_id)
        assert batch not in visible, f"{stream}: batch {batch} is visible twice"
        expected = plans.bodies(index, header.seed, header.batch_id)
        end = position + len(expected)
        assert end <= len(records), f"{stream}: batch {batch} at {position} is cut off"
        for offset, body in enumerate(expected):
            seq, timestamp, actual = records[position + offset]
            assert actual == body, f"{stream}: record {seq} differs from batch {batch}[{offset}]"
            assert timestamp >= last_timestamp, f"{stream}: timestamp went back at {seq}"
            last_timestamp = timestamp
        visible[batch] = (position, end)
        position = end
    return visible


def run_and_verify(
    data_dir: Path,
    kills: list[tuple[int, float, bool]],
) -> None:
    """Kill a child per (seed, delay, after_first_ack) on one directory, verifying after each."""
    plans = Plans()
    acks: list[Ack] = []
    tails: dict[str, int] = {}
    for probe_id, (seed, delay, after_first_ack) in enumerate(kills, start=1):
        run = run_child(data_dir, seed, delay, after_first_ack)
        for stream in STREAMS:
            firsts = [a.start for a in run if a.stream == stream]
            if firsts:
                assert min(firsts) >= tails.get(stream, 0), f"{stream}: seq reused on restart"
        acks.extend(run)
        tails = asyncio.run(verify(data_dir, acks, plans, probe_id))
        if after_first_ack:
            assert set(tails) == set(STREAMS), "acks were printed, so every stream was created"


SINGLE_KILL_DELAYS = [0.0, *[random.Random(i).uniform(0.05, 1.5) for i in range(1, 14)]]


@pytest.mark.parametrize("delay", SINGLE_KILL_DELAYS, ids=lambda d: f"{d:.2f}s")
def test_kill9_during_flood_loses_no_acknowledged_record(tmp_path: Path, delay: float) -> None:
    run_and_verify(tmp_path / "data", [(1, delay, True)])


@pytest.mark.parametrize("case", range(3))
def test_repeated_kill9_on_the_same_directory(tmp_path: Path, case: int) -> None:
    rng = random.Random(100 + case)
    kills = [
        # Killed during start-up: creating the basin and streams must be crash-safe too.
        (1, rng.uniform(0.0, 0.4), False),
        (2, rng.uniform(0.05, 1.0), True),
        (3, rng.uniform(0.0, 0.3), True),
        (4, rng.uniform(0.05, 1.0), True),
    ]
    run_and_verify(tmp_path / "data", kills)


def test_appender_plan_is_deterministic() -> None:
    # The verifier's byte-for-byte checks rest on regenerating exactly what the child sent.
    first = [p.bodies for _, p in zip(range(20), plan(2, 7), strict=False)]
    again = [p.bodies for _, p in zip(range(20), plan(2, 7), strict=False)]
    other = [p.bodies for _, p in zip(range(20), plan(2, 8), strict=False)]
    assert first == again
    assert first != other
    assert all(parse_body(b).batch_id == i + 1 for i, batch in enumerate(first) for b in batch)
    assert min(len(b) for batch in first for b in batch) >= appender.HEADER_BYTES
