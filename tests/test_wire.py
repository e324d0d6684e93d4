"""The hand-assembled encodings of `s2s.wire` are byte-identical to protobuf's own.

Stored batches and client requests are built by concatenation; a difference from protobuf's
canonical form would still parse, so these tests compare bytes, which is stricter: field order,
zero values omitted (or kept, for fields with presence) and length prefixes all have to agree.
"""

from __future__ import annotations

import random

import pytest

from s2s.records import validate_append_input
from s2s.v1 import records_pb2 as pb
from s2s.v1 import services_pb2 as spb
from s2s.wire import (
    append_ack_bytes,
    append_input_bytes,
    append_response_bytes,
    plain_append_input_size,
    record_entries,
    request_input_size,
    varint,
    with_append_input,
)

BODIES = [b"", b"x", b"y" * 127, b"z" * 128, b"w" * 16_383, b"v" * 16_384, b"u" * 300_000]
HEADERS = [
    pb.Header(name=b"k", value=b"v"),
    pb.Header(name=b"", value=b"fence"),  # an empty name has no name field
    pb.Header(name=b"n", value=b""),  # an empty value has no value field
    pb.Header(),  # an empty header is still an (empty) entry
    pb.Header(name=b"x" * 130, value=b"y" * 16_400),  # two- and three-byte lengths
]


@pytest.mark.parametrize("value", [0, 1, 127, 128, 16_383, 16_384, 2**32, 2**64 - 1])
def test_varint_matches_protobuf(value: int) -> None:
    encoded = pb.StreamPosition(seq_num=value).SerializeToString()
    assert encoded == (b"\x08" + varint(value) if value else b"")


def _records() -> list[pb.AppendRecord]:
    records = [pb.AppendRecord(body=body) for body in BODIES]
    records.append(pb.AppendRecord(headers=HEADERS, body=b"with headers"))
    records.append(pb.AppendRecord(headers=HEADERS[:1]))
    records.append(pb.AppendRecord(timestamp=5, body=b"client timestamp"))
    return records


@pytest.mark.parametrize("first_seq", [0, 1, 200, 2**40])
@pytest.mark.parametrize("timestamp", [0, 1, 1_700_000_000_000])
def test_record_entries_match_a_serialized_read_batch(first_seq: int, timestamp: int) -> None:
    records = _records()
    timestamps = [timestamp] * (len(records) - 1) + [timestamp + 1]
    bodies = [record.body for record in records]
    headed = {
        index: [(h.name, h.value) for h in record.headers]
        for index, record in enumerate(records)
        if record.headers
    }
    chunks, lengths = record_entries(bodies, headed, first_seq, timestamps)
    expected_entries = []
    for index, (record, ts) in enumerate(zip(records, timestamps, strict=True)):
        entry = pb.SequencedRecord(
            seq_num=first_seq + index, timestamp=ts, headers=record.headers, body=record.body
        )
        expected_entries.append(pb.ReadBatch(records=[entry]).SerializeToString())
    assert b"".join(chunks) == b"".join(expected_entries)
    assert lengths == [len(entry) for entry in expected_entries]


@pytest.mark.parametrize("first_seq", [0, 1, 16_383, 16_384, 2**40])
@pytest.mark.parametrize("timestamp", [0, 1, 1_700_000_000_000])
def test_single_record_entries_match_a_serialized_read_batch(
    first_seq: int, timestamp: int
) -> None:
    for record in _records():
        headed = {0: [(h.name, h.value) for h in record.headers]} if record.headers else {}
        chunks, lengths = record_entries([record.body], headed, first_seq, [timestamp])
        entry = pb.SequencedRecord(
            seq_num=first_seq, timestamp=timestamp, headers=record.headers, body=record.body
        )
        expected = pb.ReadBatch(records=[entry]).SerializeToString()
        assert b"".join(chunks) == expected
        assert lengths == [len(expected)]


@pytest.mark.parametrize(
    "positions",
    [
        ((0, 0), (0, 0), (0, 0)),  # every field a zero value: three empty positions
        ((0, 5), (1, 5), (1, 5)),
        ((127, 1_700_000_000_000), (16_384, 1_700_000_000_001), (2**63, 2**64 - 1)),
    ],
)
def test_acks_match_protobuf(positions: tuple[tuple[int, int], ...]) -> None:
    start, end, tail = (pb.StreamPosition(seq_num=s, timestamp=t) for s, t in positions)
    ack = pb.AppendAck(start=start, end=end, tail=tail)
    encoded = append_ack_bytes(*positions)
    assert encoded == ack.SerializeToString()
    assert append_response_bytes(encoded) == spb.AppendResponse(ack=ack).SerializeToString()
    assert append_response_bytes(encoded) == spb.AppendSessionResponse(ack=ack).SerializeToString()


@pytest.mark.parametrize(
    "bodies",
    [
        [b"x", b"y" * 127, b"z" * 128, b"w" * 16_383],  # lengths across a varint boundary
        [b"x", b""],  # an empty body has no body field at all
        [b"x", b"v" * 16_384],  # a body length past the cached varints
    ],
)
@pytest.mark.parametrize("timestamp", [0, 1_700_000_000_000])
def test_plain_batches_match_a_serialized_read_batch(bodies: list[bytes], timestamp: int) -> None:
    chunks, lengths = record_entries(bodies, {}, 16_380, [timestamp] * len(bodies))
    entries = [
        pb.ReadBatch(
            records=[pb.SequencedRecord(seq_num=16_380 + index, timestamp=timestamp, body=body)]
        ).SerializeToString()
        for index, body in enumerate(bodies)
    ]
    assert b"".join(chunks) == b"".join(entries)
    assert lengths == [len(entry) for entry in entries]


@pytest.mark.parametrize("first_seq", [0, 100, 16_300, 2**21 - 500, 2**63 - 1000])
def test_sequence_numbers_are_encoded_across_varint_boundaries(first_seq: int) -> None:
    """A thousand numbers cross several 128-number runs (which share their high bits in
    `record_entries`) and, from some starts, a change in the varint's length."""
    bodies = [b"b"] * 1000
    chunks, _ = record_entries(bodies, {}, first_seq, [7] * 1000)
    expected = pb.ReadBatch(
        records=[
            pb.SequencedRecord(seq_num=first_seq + index, timestamp=7, body=body)
            for index, body in enumerate(bodies)
        ]
    )
    assert b"".join(chunks) == expected.SerializeToString()


@pytest.mark.parametrize("match_seq_num", [None, 0, 42])
@pytest.mark.parametrize("fencing_token", [None, "", "token-1"])
def test_append_input_bytes_match_protobuf(
    match_seq_num: int | None, fencing_token: str | None
) -> None:
    records = _records()
    mixed: list[pb.AppendRecord | bytes] = [*records, b"plain body", b""]
    expected = pb.AppendInput(
        records=[*records, pb.AppendRecord(body=b"plain body"), pb.AppendRecord()],
        match_seq_num=match_seq_num,
        fencing_token=fencing_token,
    )
    encoded = append_input_bytes(mixed, match_seq_num, fencing_token)
    assert encoded == expected.SerializeToString()


def test_requests_wrap_an_encoded_input() -> None:
    append_input = pb.AppendInput(records=[pb.AppendRecord(body=b"b")], match_seq_num=3)
    header = spb.AppendSessionRequest(basin="basin", stream="stream").SerializeToString()
    wrapped = with_append_input(header, append_input.SerializeToString())
    expected = spb.AppendSessionRequest(basin="basin", stream="stream", input=append_input)
    assert wrapped == expected.SerializeToString()
    unary = spb.AppendRequest.FromString(with_append_input(b"", append_input.SerializeToString()))
    assert unary.input == append_input


@pytest.mark.parametrize("match_seq_num", [None, 0, 300])
@pytest.mark.parametrize("fencing_token", [None, "", "token-1"])
def test_plain_size_is_the_size_of_records_with_bodies_only(
    match_seq_num: int | None, fencing_token: str | None
) -> None:
    message = pb.AppendInput(
        records=[pb.AppendRecord(body=body) for body in BODIES],
        match_seq_num=match_seq_num,
        fencing_token=fencing_token,
    )
    lengths = [len(body) for body in BODIES]
    size = plain_append_input_size(lengths, match_seq_num, fencing_token)
    assert size == len(message.SerializeToString())


@pytest.mark.parametrize(
    "odd_one",
    [
        pb.AppendRecord(headers=[pb.Header(name=b"k")], body=b"x"),  # adds 5 bytes
        pb.AppendRecord(headers=[pb.Header(name=b"", value=b"fence")]),
        pb.AppendRecord(timestamp=0, body=b"x"),  # present, though zero
        pb.AppendRecord(timestamp=1_700_000_000_000),
    ],
)
def test_one_record_with_headers_or_a_timestamp_is_never_taken_for_plain(
    odd_one: pb.AppendRecord,
) -> None:
    """`validate_append_input` trusts the size only when it proves there is nothing to find:
    given the real size, it finds exactly what it finds without one."""
    message = pb.AppendInput(records=[pb.AppendRecord(body=b"a" * 200), odd_one])
    encoded = message.SerializeToString()
    lengths = [len(record.body) for record in message.records]
    assert plain_append_input_size(lengths, None, None) < len(encoded)
    sized = validate_append_input(pb.AppendInput.FromString(encoded), len(encoded))
    unsized = validate_append_input(pb.AppendInput.FromString(encoded))
    assert list(sized.headed) == list(unsized.headed) == ([1] if odd_one.headers else [])
    assert sized.has_client_timestamps == unsized.has_client_timestamps
    assert sized.has_client_timestamps == odd_one.HasField("timestamp")
    assert sized.metered_sizes == unsized.metered_sizes
    assert len(sized.commands) == len(unsized.commands)


def test_request_input_size_is_the_inputs_encoded_size() -> None:
    append_input = pb.AppendInput(records=[pb.AppendRecord(body=b"x" * 300)], match_seq_num=7)
    encoded_input = append_input.SerializeToString()
    for request in (
        spb.AppendRequest(basin="b", stream="s", input=append_input),
        spb.AppendSessionRequest(input=append_input),
    ):
        assert request_input_size(request.SerializeToString()) == len(encoded_input)


@pytest.mark.parametrize(
    "request_bytes",
    [
        spb.AppendSessionRequest(basin="b", stream="s").SerializeToString(),  # no input
        b"\x1a\x03\x0a\x01\x1a" + b"\x1a\x00",  # input twice: the parser merges them
        b"\x1a\x05\x0a\x03\x1a\x01",  # cut short
        b"\x1a\x00\x20\x01",  # an unknown field
    ],
)
def test_request_input_size_is_none_when_it_proves_nothing(request_bytes: bytes) -> None:
    assert request_input_size(request_bytes) is None


def test_validation_with_the_size_finds_what_it_finds_without() -> None:
    """500 random batches: bodies of random lengths (0 to 20,000 bytes, straddling the varint
    boundaries), some records with headers or timestamps, sometimes conditions. Given the
    encoded size, validation must reach exactly the result it reaches without it."""
    rng = random.Random(20261122)
    for _ in range(500):
        records = []
        for _ in range(rng.randint(1, 20)):
            body = b"b" * rng.choice([0, 1, 126, 127, 128, 16_383, 16_384, rng.randint(0, 20_000)])
            record = pb.AppendRecord(body=body)
            if rng.random() < 0.1:
                record.headers.append(pb.Header(name=b"k" * rng.randint(1, 3), value=b"v"))
            if rng.random() < 0.1:
                record.timestamp = rng.choice([0, 1, 2**40])
            records.append(record)
        message = pb.AppendInput(records=records)
        if rng.random() < 0.3:
            message.match_seq_num = rng.choice([0, 5, 2**33])
        if rng.random() < 0.3:
            message.fencing_token = rng.choice(["", "t", "token-" * 5])
        encoded = message.SerializeToString()
        sized = validate_append_input(pb.AppendInput.FromString(encoded), len(encoded))
        unsized = validate_append_input(pb.AppendInput.FromString(encoded))
        assert sized.bodies == unsized.bodies
        assert list(sized.headed) == list(unsized.headed)
        assert sized.has_client_timestamps == unsized.has_client_timestamps
        assert sized.metered_sizes == unsized.metered_sizes
        assert (sized.match_seq_num, sized.fencing_token) == (
            unsized.match_seq_num,
            unsized.fencing_token,
        )
