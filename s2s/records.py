"""Validation and metering of append batches, the command records `fence` and `trim`, and the
`s2s-producer` header of idempotent appends.

Every frontend turns its input into an `AppendInput` protobuf message and calls
`validate_append_input`, so one set of rules (docs/s2-compat.md §6.4, §6.5) applies everywhere.
The loop over records here is the only per-record work an append does before sequencing.

An idempotent append carries its producer's id and the batch's sequence number in one header of
its first record (`PRODUCER_HEADER`, docs/adr/0016-idempotent-appends.md). Validation parses it
into `ValidatedBatch.producer` and takes it off the record: what is stored, metered and read
back is exactly what the producer appended. Every transport carries record headers, so every
client (the official SDKs too) can send it without a protocol change.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from s2s.errors import invalid
from s2s.v1 import records_pb2 as pb
from s2s.wire import U64_MAX, Headers, field_size, plain_append_input_size, plain_record_size

BATCH_RECORDS_MAX = 1000
BATCH_METERED_BYTES_MAX = 1024 * 1024
RECORD_METERED_BYTES_MAX = BATCH_METERED_BYTES_MAX
FENCING_TOKEN_BYTES_MAX = 36
HEADERS_PER_RECORD_MAX = 16_777_215
RECORD_METERED_OVERHEAD_BYTES = 8

COMMAND_FENCE = b"fence"
COMMAND_TRIM = b"trim"

PRODUCER_HEADER = b"s2s-producer"
"""The header name of an idempotent append, on its first record: `<producer id> <batch seq>`."""
PRODUCER_ID_BYTES_MAX = 64
PRODUCER_WINDOW_BATCHES = 16
"""How many of a producer's most recent batches per stream the server remembers the acks of:
a retry of one of them gets its original ack. A producer must not have more batches than this
unacknowledged at once (the Python client's `Producer` refuses a larger in-flight bound)."""
_PRODUCER_VALUE = re.compile(rb"([\x21-\x7e]{1,%d}) (0|[1-9][0-9]{0,19})" % PRODUCER_ID_BYTES_MAX)
PRODUCER_VALUE_RULE = (
    "'<producer id> <batch sequence number>': an id of 1-64 printable ASCII characters "
    f"without spaces, one space, and a decimal number from 0 to {U64_MAX} without leading zeros"
)


@dataclass(frozen=True)
class Fence:
    """A `fence` command: batches after this one must carry `token`."""

    index: int
    token: str


@dataclass(frozen=True)
class Trim:
    """A `trim` command: records before `first_seq_num` may be deleted."""

    index: int
    first_seq_num: int


class ProducerBatch(NamedTuple):
    """Who sent an idempotent batch, and its place in that producer's batches to the stream."""

    id: str
    seq: int


def producer_header_value(producer_id: str, batch_seq: int) -> bytes:
    """The `s2s-producer` header value a client sends (the grammar is `PRODUCER_VALUE_RULE`)."""
    return f"{producer_id} {batch_seq}".encode()


def parse_producer_header(value: bytes) -> ProducerBatch:
    """The producer and batch sequence number of an `s2s-producer` header value; `invalid`
    naming the grammar if it does not follow it."""
    match = _PRODUCER_VALUE.fullmatch(value)
    if match is None or int(match[2]) > U64_MAX:
        shown = value if len(value) <= 100 else value[:100] + b"..."
        raise invalid(
            f"record 0: the s2s-producer header must be {PRODUCER_VALUE_RULE}, not {shown!r}"
        )
    return ProducerBatch(match[1].decode(), int(match[2]))


@dataclass(frozen=True)
class ValidatedBatch:
    """An append batch that passed every stateless check."""

    records: Sequence[pb.AppendRecord]
    """The message's own repeated field: read again only for what the batch has (headers,
    client timestamps)."""
    # Read once here and reused by the encoder: each access to a protobuf field builds a new
    # Python object, and per-record work is most of an append's CPU cost.
    bodies: Sequence[bytes | memoryview]
    headed: dict[int, Headers]
    """The headers of the records that carry any, by index (usually none)."""
    metered_sizes: list[int]
    has_client_timestamps: bool
    metered_bytes: int
    commands: list[Fence | Trim]
    match_seq_num: int | None
    fencing_token: str | None
    producer: ProducerBatch | None = None
    """Set for an idempotent append (its `s2s-producer` header, which no record keeps)."""

    @property
    def count(self) -> int:
        return len(self.records)


def metered_size(record: pb.AppendRecord | pb.SequencedRecord) -> int:
    """S2's metered size: 8 + 2 per header + header names and values + body."""
    return _metered_size([(h.name, h.value) for h in record.headers], len(record.body))


def _metered_size(headers: Headers, body_length: int) -> int:
    size = RECORD_METERED_OVERHEAD_BYTES + body_length + 2 * len(headers)
    for name, value in headers:
        size += len(name) + len(value)
    return size


def validate_fencing_token(token: str, what: str = "fencing token") -> None:
    if len(token.encode()) > FENCING_TOKEN_BYTES_MAX:
        raise invalid(f"{what} must be at most {FENCING_TOKEN_BYTES_MAX} bytes")


def validate_append_input(
    message: pb.AppendInput, encoded_size: int | None = None
) -> ValidatedBatch:
    """Check count, size, headers, command records and the producer header; raise `invalid`
    naming the problem.

    `encoded_size`, when the caller received the message's bytes: if it is exactly what the
    bodies alone take (`wire.plain_append_input_size`), no record has headers or a timestamp,
    and looking for them in each record (a third of this function's time) is skipped. If it is
    exactly that with the first record as it is instead, only the first record has any: an
    idempotent producer's batch (its header on the first record) costs one record's look more.
    """
    # With the size, plain batches read each record once (its body), and listing the records
    # first took a fifth of the time; without it they are read three times, and a list keeps
    # their Python wrappers for each pass.
    records: Sequence[pb.AppendRecord] = (
        message.records if encoded_size is not None else list(message.records)
    )
    if not records:
        raise invalid("append batch must not be empty")
    if len(records) > BATCH_RECORDS_MAX:
        raise invalid(f"append batch must not exceed {BATCH_RECORDS_MAX} records")
    fencing_token = message.fencing_token if message.HasField("fencing_token") else None
    if fencing_token is not None:
        validate_fencing_token(fencing_token)
    # Whole-batch passes (comprehensions) rather than one loop doing everything: per-record
    # work dominates an append's CPU cost and this form does the least of it.
    bodies = [record.body for record in records]
    lengths = list(map(len, bodies))
    sizes = [RECORD_METERED_OVERHEAD_BYTES + length for length in lengths]
    match_seq_num = message.match_seq_num if message.HasField("match_seq_num") else None
    plain_size = (
        None
        if encoded_size is None
        else plain_append_input_size(lengths, match_seq_num, fencing_token)
    )
    plain = plain_size is not None and encoded_size == plain_size
    # Each header is read out of protobuf once, here, and the encoder uses these pairs.
    headed: dict[int, Headers] = {}
    has_timestamps = False
    if not plain:
        records_dressed: Sequence[pb.AppendRecord] = records
        if (
            plain_size is not None
            and len(records) > 1
            and encoded_size
            == plain_size - plain_record_size(lengths[0]) + field_size(records[0].ByteSize())
        ):
            records_dressed = records[:1]
        for index, record in enumerate(records_dressed):
            if record_headers := record.headers:
                headed[index] = [(header.name, header.value) for header in record_headers]
            has_timestamps = has_timestamps or record.HasField("timestamp")
    producer = _take_producer(headed) if headed else None
    commands: list[Fence | Trim] = []
    for index, headers in headed.items():
        sizes[index] = _metered_size(headers, lengths[index])
        command = _command(index, headers, bodies[index])
        if command is not None:
            commands.append(command)
    if max(sizes) > RECORD_METERED_BYTES_MAX:
        index, size = next((i, n) for i, n in enumerate(sizes) if n > RECORD_METERED_BYTES_MAX)
        raise invalid(
            f"record {index} is {size} metered bytes; the limit is {RECORD_METERED_BYTES_MAX}"
        )
    total = sum(sizes)
    if total > BATCH_METERED_BYTES_MAX:
        raise invalid(
            f"append batch is {total} metered bytes; the limit is {BATCH_METERED_BYTES_MAX}"
        )
    return ValidatedBatch(
        records=records,
        bodies=bodies,
        headed=headed,
        metered_sizes=sizes,
        has_client_timestamps=has_timestamps,
        metered_bytes=total,
        commands=commands,
        match_seq_num=match_seq_num,
        fencing_token=fencing_token,
        producer=producer,
    )


def _take_producer(headed: dict[int, Headers]) -> ProducerBatch | None:
    """Parse the first record's `s2s-producer` header, if any, and take it off the record
    (removing the record from `headed` if it had no other header); `invalid` if another record
    carries one, or the first carries two."""
    found: ProducerBatch | None = None
    # Plain loops: this looks at every header of every record that has any, and a list or a
    # generator per record took three times as long (100 us for 1000 headed records here).
    for index, headers in headed.items():
        for name, value in headers:
            if name != PRODUCER_HEADER:
                continue
            if index:
                raise invalid(
                    f"record {index}: the s2s-producer header goes on a batch's first record only"
                )
            if found is not None:
                raise invalid("record 0 has more than one s2s-producer header; a batch has one")
            found = parse_producer_header(value)
    if found is not None:
        rest = [header for header in headed[0] if header[0] != PRODUCER_HEADER]
        if rest:
            headed[0] = rest
        else:
            del headed[0]
    return found


def _command(index: int, headers: Headers, body: bytes) -> Fence | Trim | None:
    if len(headers) > HEADERS_PER_RECORD_MAX:
        raise invalid(f"record {index} has more than {HEADERS_PER_RECORD_MAX} headers")
    if all(name for name, _ in headers):
        return None
    if len(headers) > 1:
        raise invalid(f"record {index}: header name must not be empty (empty name)")
    op = headers[0][1]
    if op == COMMAND_FENCE:
        try:
            token = body.decode()
        except UnicodeDecodeError:
            raise invalid(f"record {index}: fence token must be valid UTF-8") from None
        validate_fencing_token(token, f"record {index}: fence token")
        return Fence(index, token)
    if op == COMMAND_TRIM:
        if len(body) != 8:
            raise invalid(f"record {index}: trim body must be exactly 8 bytes (big-endian u64)")
        return Trim(index, int.from_bytes(body, "big"))
    raise invalid(f"record {index}: unknown command {op!r}")


def is_command_record(record: pb.SequencedRecord) -> bool:
    """Whether a stored record is a command (`fence`, `trim`) rather than data: its one header
    has an empty name. `_command` lets an empty name stand only alone, so a stored record
    with an empty header name and others beside it does not exist."""
    headers = record.headers
    return len(headers) == 1 and not headers[0].name


def fence_record(token: str) -> pb.AppendRecord:
    """A command record that sets the stream's fencing token (empty string clears it)."""
    return pb.AppendRecord(headers=[pb.Header(name=b"", value=COMMAND_FENCE)], body=token.encode())


def trim_record(first_seq_num: int) -> pb.AppendRecord:
    """A command record that trims the stream before `first_seq_num`."""
    return pb.AppendRecord(
        headers=[pb.Header(name=b"", value=COMMAND_TRIM)], body=first_seq_num.to_bytes(8, "big")
    )
