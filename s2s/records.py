"""Validation and metering of append batches, and the command records `fence` and `trim`.

Every frontend turns its input into an `AppendInput` protobuf message and calls
`validate_append_input`, so one set of rules (docs/s2-compat.md §6.4, §6.5) applies everywhere.
The loop over records here is the only per-record work an append does before sequencing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from s2s.errors import invalid
from s2s.v1 import records_pb2 as pb
from s2s.wire import Headers, plain_append_input_size

BATCH_RECORDS_MAX = 1000
BATCH_METERED_BYTES_MAX = 1024 * 1024
RECORD_METERED_BYTES_MAX = BATCH_METERED_BYTES_MAX
FENCING_TOKEN_BYTES_MAX = 36
HEADERS_PER_RECORD_MAX = 16_777_215
RECORD_METERED_OVERHEAD_BYTES = 8

COMMAND_FENCE = b"fence"
COMMAND_TRIM = b"trim"


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

    @property
    def count(self) -> int:
        return len(self.records)


def metered_size(record: pb.AppendRecord) -> int:
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
    """Check count, size, headers and command records; raise `invalid` naming the problem.

    `encoded_size`, when the caller received the message's bytes: if it is exactly what the
    bodies alone take (`wire.plain_append_input_size`), no record has headers or a timestamp,
    and looking for them in each record (a third of this function's time) is skipped.
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
    plain = encoded_size is not None and encoded_size == plain_append_input_size(
        lengths, match_seq_num, fencing_token
    )
    # Each header is read out of protobuf once, here, and the encoder uses these pairs.
    headed: dict[int, Headers] = {}
    has_timestamps = False
    if not plain:
        for index, record in enumerate(records):
            if record_headers := record.headers:
                headed[index] = [(header.name, header.value) for header in record_headers]
            has_timestamps = has_timestamps or record.HasField("timestamp")
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
    )


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
