"""Stored batch values: both format versions decode, and damage to any byte is caught."""

from __future__ import annotations

import struct
import zlib

import google_crc32c
import pytest

from s2s.records import BATCH_RECORDS_MAX
from s2s.v1 import records_pb2 as pb
from server.storage.layout import (
    _BATCH_HEADER,
    BATCH_MAGIC,
    BATCH_SUMMARY_BYTES_MAX,
    Batch,
    CorruptBatch,
    encode_batch,
    summarize_batch,
)

BODIES = [b"first", b"", b"x" * 300]
TIMESTAMPS = [5, 5, 9]
METERED = [8 + len(body) for body in BODIES]


def encoded() -> bytes:
    headed = {1: [(b"h", b"v")]}
    return encode_batch(BODIES, headed, 40, TIMESTAMPS, METERED, 1234)


def records(batch: Batch) -> list[pb.SequencedRecord]:
    return list(pb.ReadBatch.FromString(bytes(batch.slice(0, batch.count))).records)


def test_a_batch_decodes_to_what_was_encoded() -> None:
    batch = Batch(encoded())
    assert (batch.first_seq, batch.count, batch.arrival_ms) == (40, 3, 1234)
    assert list(batch.timestamps) == TIMESTAMPS
    assert list(batch.metered) == METERED
    got = records(batch)
    assert [r.seq_num for r in got] == [40, 41, 42]
    assert [r.body for r in got] == BODIES
    assert [(h.name, h.value) for h in got[1].headers] == [(b"h", b"v")]
    summary = summarize_batch(memoryview(encoded()))
    assert (summary.last_seq, summary.last_timestamp, summary.arrival_ms) == (42, 9, 1234)
    assert (summary.first_seq, summary.metered_bytes) == (40, sum(METERED))


def test_a_summary_reads_no_further_than_its_bound() -> None:
    """Stores may send only `BATCH_SUMMARY_BYTES_MAX` bytes of a batch to be summarized: a
    batch of the most records, with bodies behind, summarizes the same from that head."""
    count = BATCH_RECORDS_MAX
    value = encode_batch(
        [b"x" * 100] * count, {}, 7, list(range(count)), [108] * count, arrival_ms=5
    )
    head = memoryview(value)[:BATCH_SUMMARY_BYTES_MAX]
    assert len(value) > BATCH_SUMMARY_BYTES_MAX
    assert summarize_batch(head) == summarize_batch(memoryview(value))
    assert summarize_batch(head).metered_bytes == 108 * count


@pytest.mark.parametrize("index", [0, 3, 30, 200, -5, -1])
def test_any_damaged_byte_fails_the_checksum(index: int) -> None:
    value = bytearray(encoded())
    value[index] ^= 0x01
    with pytest.raises(CorruptBatch):
        Batch(bytes(value))


def version_1(value: bytes) -> bytes:
    """The same batch as version 1 wrote it: no trailer, CRC-32 of the payload in the header."""
    fields = list(_BATCH_HEADER.unpack_from(value))
    count = fields[3]
    body = value[_BATCH_HEADER.size : -4]
    payload = body[4 * (count + 1) + 8 * count + 4 * count :]
    fields[1], fields[6] = 1, zlib.crc32(payload)
    return _BATCH_HEADER.pack(*fields) + body


def test_version_1_batches_are_still_read_and_checked() -> None:
    old = version_1(encoded())
    assert old[0] == BATCH_MAGIC
    assert [r.body for r in records(Batch(old))] == BODIES
    damaged = bytearray(old)
    damaged[-1] ^= 0x01
    with pytest.raises(CorruptBatch):
        Batch(bytes(damaged))


def test_an_unknown_version_is_refused() -> None:
    value = bytearray(encoded())
    struct.pack_into("<B", value, 1, 3)
    with pytest.raises(CorruptBatch, match="version"):
        Batch(bytes(value))


def _resealed(fields: list[int], rest: bytes) -> bytes:
    """A version 2 batch of this header and these bytes after it, with a valid checksum: what
    only a bug of ours (or someone else writing the file) could store."""
    fields[6] = 0
    value = _BATCH_HEADER.pack(*fields) + rest
    return value + struct.pack("<I", google_crc32c.value(value))


@pytest.mark.parametrize("count", [0, 4, 1000, 2**32 - 1])
def test_a_count_that_does_not_fit_the_arrays_is_corrupt_even_with_a_valid_checksum(
    count: int,
) -> None:
    """Found by the fuzzer (`bench/fuzz.py --target batch`): a count larger than the arrays
    raised ValueError from `array.frombytes`, and a count of 0 IndexError."""
    value = encoded()
    fields = list(_BATCH_HEADER.unpack_from(value))
    fields[3] = count
    with pytest.raises(CorruptBatch, match=f"too short for {count} records|do not span"):
        Batch(_resealed(fields, value[_BATCH_HEADER.size : -4]))
    v1_fields = list(_BATCH_HEADER.unpack_from(version_1(value)))
    v1_fields[3] = count
    with pytest.raises(CorruptBatch):
        Batch(_BATCH_HEADER.pack(*v1_fields) + version_1(value)[_BATCH_HEADER.size :])


def test_offsets_that_do_not_start_at_0_are_corrupt_even_with_a_valid_checksum() -> None:
    value = encoded()
    fields = list(_BATCH_HEADER.unpack_from(value))
    rest = bytearray(value[_BATCH_HEADER.size : -4])
    struct.pack_into("<I", rest, 0, 1)
    with pytest.raises(CorruptBatch, match="do not span"):
        Batch(_resealed(fields, bytes(rest)))
