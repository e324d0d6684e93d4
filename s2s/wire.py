"""Hand-assembled protobuf encodings for the read hot path.

Stored batches already hold the encoded `ReadBatch.records` entries; these helpers add the
optional `tail` field and the one-field envelope of read responses, so a response is built by
one concatenation instead of decoding and re-encoding every record.
"""

from __future__ import annotations

from s2s.v1 import records_pb2 as pb

_READ_BATCH_TAIL_TAG = b"\x12"  # ReadBatch.tail: field 2, length-delimited
_ENVELOPE_BATCH_TAG = b"\x0a"  # {Read,ReadSession}Response.batch: field 1, length-delimited


def varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _tail_field(tail: tuple[int, int] | None) -> bytes:
    if tail is None:
        return b""
    position = pb.StreamPosition(seq_num=tail[0], timestamp=tail[1]).SerializeToString()
    return _READ_BATCH_TAIL_TAG + varint(len(position)) + position


def read_batch_bytes(records: bytes, tail: tuple[int, int] | None) -> bytes:
    """Encoded `ReadBatch` from encoded record entries and an optional (seq_num, timestamp)."""
    return records + _tail_field(tail) if tail is not None else records


def read_response_bytes(records: bytes, tail: tuple[int, int] | None) -> bytes:
    """Encoded `ReadResponse`/`ReadSessionResponse` holding that `ReadBatch`."""
    tail_field = _tail_field(tail)
    size = len(records) + len(tail_field)
    return b"".join((_ENVELOPE_BATCH_TAG, varint(size), records, tail_field))
