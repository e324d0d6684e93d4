"""The child process of the kill -9 tests: floods appends and prints each acknowledgement.

Run as `python -m tests.crash.appender DATA_DIR SEED [STORAGE]`. It opens a `StreamStore` on
DATA_DIR, its log in STORAGE (`--storage`'s form; LMDB in DATA_DIR by default), creating the
basin and streams if they are absent (so it can be re-run on a directory a previous run left
behind, however it died), then appends forever to `STREAMS` streams, mixing
batch sizes and record sizes, and both durable `append` calls and pipelined `submit`s with
several batches in flight. Once the engine confirms a batch it prints one line and flushes:

    ACK <stream> <seed> <batch_id> <start_seq> <end_seq> <n_records>

A line is written only after the ack, so every printed line is a promise the store must keep
after any crash. What is appended depends only on (stream, seed) (`plan`), never on timing, so
a verifier regenerates every byte that was sent. Each record body also starts with a header
naming its stream, run, batch, index and the batch's size (`parse_body`), so a verifier can
tell which batch any stored record belongs to, and a whole batch from part of one.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import itertools
import random
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from s2s.records import BATCH_RECORDS_MAX, ValidatedBatch, validate_append_input
from s2s.v1 import records_pb2 as pb
from server.sequencer import AppendAck
from server.storage.choice import LMDB
from server.streamstore import StreamStore

BASIN = "crash-test"
STREAMS = [f"stream-{i}" for i in range(4)]

_MAGIC = b"CRSH"
# magic, stream index, seed, batch id, record index, records in batch, body length
_HEADER = struct.Struct(">4sHIIHHI")
HEADER_BYTES = _HEADER.size
BODY_BYTES_MAX = 4096
BATCH_BYTES_TARGET = 900 * 1024
"""Below the 1 MiB batch limit, leaving room for per-record metering overhead."""


def make_body(stream: int, seed: int, batch_id: int, index: int, count: int, length: int) -> bytes:
    """A record body: a header saying what it is, then filler derived from the header."""
    header = _HEADER.pack(_MAGIC, stream, seed, batch_id, index, count, length)
    filler_len = length - HEADER_BYTES
    digest = hashlib.blake2b(header, digest_size=32).digest()
    filler = (digest * (filler_len // len(digest) + 1))[:filler_len]
    return header + filler


@dataclass(frozen=True)
class BodyHeader:
    stream: int
    seed: int
    batch_id: int
    index: int
    count: int


def parse_body(body: bytes) -> BodyHeader:
    """What a body claims to be; the verifier then compares it with the planned bytes."""
    if len(body) < HEADER_BYTES:
        raise ValueError(f"body of {len(body)} bytes is shorter than its header")
    magic, stream, seed, batch_id, index, count, _ = _HEADER.unpack_from(body)
    if magic != _MAGIC:
        raise ValueError(f"bad magic {magic!r} in body {body[:HEADER_BYTES]!r}")
    return BodyHeader(stream, seed, batch_id, index, count)


@dataclass(frozen=True)
class PlannedBatch:
    batch_id: int
    bodies: list[bytes]
    durable_append: bool
    """True: `append` (wait for the ack); False: `submit` and keep it in flight."""
    window: int
    """After a `submit`, wait for the oldest acks until at most this many are in flight."""


def plan(stream: int, seed: int) -> Iterator[PlannedBatch]:
    """The batches a run appends to a stream, in order: the same for the same arguments.

    Timing never changes the plan, so a verifier regenerates it to know every byte sent.
    """
    rng = random.Random(seed * 1000 + stream)
    for batch_id in itertools.count(1):
        roll = rng.random()
        # Mostly small batches of small records, as in real use, with a tail of large ones.
        count = (
            rng.randint(1, 10)
            if roll < 0.5
            else rng.randint(11, 100)
            if roll < 0.8
            else rng.randint(101, BATCH_RECORDS_MAX)
        )
        cap = max(HEADER_BYTES, min(BODY_BYTES_MAX, BATCH_BYTES_TARGET // count))
        bodies = []
        for index in range(count):
            roll = rng.random()
            upper = 64 if roll < 0.5 else 512 if roll < 0.9 else BODY_BYTES_MAX
            length = rng.randint(HEADER_BYTES, max(HEADER_BYTES, min(upper, cap)))
            bodies.append(make_body(stream, seed, batch_id, index, count, length))
        yield PlannedBatch(batch_id, bodies, rng.random() < 0.25, rng.randint(1, 8))


def to_batch(bodies: list[bytes]) -> ValidatedBatch:
    return validate_append_input(pb.AppendInput(records=[pb.AppendRecord(body=b) for b in bodies]))


def emit(line: str) -> None:
    # One write per line, flushed at once: a line in the pipe survives the kill.
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def emit_ack(stream: int, seed: int, batch_id: int, count: int, ack: AppendAck) -> None:
    emit(f"ACK {STREAMS[stream]} {seed} {batch_id} {ack.start.seq_num} {ack.end.seq_num} {count}")


async def flood(store: StreamStore, stream: int, seed: int) -> None:
    name = STREAMS[stream]
    window: collections.deque[asyncio.Future[AppendAck]] = collections.deque()
    for planned in plan(stream, seed):
        batch = to_batch(planned.bodies)
        if planned.durable_append:
            ack = await store.append(BASIN, name, batch)
            emit_ack(stream, seed, planned.batch_id, batch.count, ack)
            continue
        future = await store.submit(BASIN, name, batch)

        def on_ack(
            done: asyncio.Future[AppendAck], batch_id: int = planned.batch_id, n: int = batch.count
        ) -> None:
            error = done.exception()
            if error is not None:
                emit(f"ERR {name} {seed} {batch_id} {error!r}")
            else:
                emit_ack(stream, seed, batch_id, n, done.result())

        # Printed from the done callback: as soon as the engine confirms, not when we look.
        future.add_done_callback(on_ack)
        window.append(future)
        while len(window) > planned.window:
            await window.popleft()


async def main(data_dir: str, seed: int, storage: str = LMDB) -> None:
    store = await StreamStore.open(data_dir, storage=storage)
    await store.ensure_basin(BASIN)
    for name in STREAMS:
        await store.ensure_stream(BASIN, name)
    emit("READY")
    try:
        await asyncio.gather(*(flood(store, i, seed) for i in range(len(STREAMS))))
    except BaseException as exc:
        emit(f"ERR {exc!r}")
        raise


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), *sys.argv[3:4]))
