"""The decoders' fuzz targets, shared by `make test` (`test_decoders_fuzz.py`), the real-server
leg (`test_decoders_server.py`) and the long runs (`bench/fuzz.py`).

A target takes the fuzzer's bytes, as atheris hands them to `TestOneInput`, and feeds them to
one decoder of client input (or of stored data) the way the server does. Its contract: the
decoder returns a value, or raises the one error its caller turns into a 4xx (`S2Error` of a
4xx code; `CorruptBatch` for stored batches). Anything else escapes the target and is a
finding: another exception, a hang (atheris' `-timeout`), memory blowing up (`-rss_limit_mb`),
or a broken invariant checked below (`AssertionError`).

An input's first byte picks the options the decoder is called with (format, path, content type,
chunk size), so that the fuzzer explores those too; the rest is the payload. `Target.seeds`
are valid inputs built in code, the starting corpus. The same bytes mean the same request on a
real server (`tests/fuzz/test_decoders_server.py`), except for `batch` (stored data only).
"""

from __future__ import annotations

import gzip
import json
import struct
import zlib
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass, fields
from typing import cast

import google_crc32c
import zstandard
from google.protobuf.message import DecodeError

from s2s.errors import S2Error
from s2s.records import ValidatedBatch, validate_append_input
from s2s.v1 import records_pb2 as pb
from s2s.v1 import services_pb2 as spb
from s2s.wire import append_input_bytes, split_entry
from server.grpc_frontend.errors import Undecodable
from server.grpc_frontend.stream import _SessionRequests, _with_input_size
from server.http_frontend.json_body import parse_json
from server.http_frontend.records import append_input_from_json, create_config
from server.http_frontend.s2s_frames import encode_frame, read_frames
from server.http_frontend.sessions import _frame_decoder
from server.lake.ingest import MAX_ROW_BYTES, IngestRequest, parse_ingest_request
from server.storage.layout import Batch, CorruptBatch, encode_batch, summarize_batch

BASIN = "fuzz-basin"
STREAM = "fuzz-stream"
TABLE = "bronze.fuzz_decoders"


def _refused(error: S2Error) -> None:
    """A refusal is fine if the client is to blame for it: a 4xx."""
    assert 400 <= error.kind.http_status < 500, (error.code, error.message)


def _split(data: bytes) -> tuple[int, bytes]:
    return (data[0], data[1:]) if data else (0, b"")


# --- S2S frames ----------------------------------------------------------------------------


def frames_chunk_bytes(options: int) -> int | None:
    """How the body is cut into chunks: 1 to 255 bytes each, or whole (options 255)."""
    return None if options == 255 else options + 1


async def _chunks(payload: bytes, size: int | None) -> AsyncIterator[bytes]:
    step = size or max(1, len(payload))
    for start in range(0, len(payload), step):
        yield payload[start : start + step]


def _drain(generator: AsyncIterator[bytes]) -> Iterator[bytes]:
    """The items of an async generator that never really suspends, without an event loop
    (`asyncio.run` per input would cost more than the decoding)."""
    while True:
        step = cast(Coroutine[None, None, bytes], generator.__anext__())
        try:
            step.send(None)
        except StopIteration as done:
            yield done.value
        except StopAsyncIteration:
            return
        else:  # pragma: no cover - read_frames awaits nothing but its chunks
            raise AssertionError("read_frames suspended on something other than its input")


def run_frames(data: bytes) -> None:
    """An S2S append session's request body, cut into chunks: `read_frames`, then each frame's
    `AppendInput` through the session's decoder."""
    options, payload = _split(data)
    decode = _frame_decoder(BASIN, STREAM)
    try:
        for body in _drain(read_frames(_chunks(payload, frames_chunk_bytes(options)))):
            try:
                decode(body)
            except S2Error as error:
                _refused(error)
    except S2Error as error:
        assert error.code == "bad_frame", error


# --- JSON appends --------------------------------------------------------------------------


def json_format(options: int) -> str:
    return "base64" if options & 1 else "raw"


def json_is_stream_config(options: int) -> bool:
    """Bit 1: the payload is an `s2-stream-config` header value rather than an append body."""
    return bool(options & 2)


class _Headers:
    """Just enough of `Exchange` for `create_config`: one header."""

    def __init__(self, value: str) -> None:
        self._value = value

    def header(self, name: str) -> str | None:
        return self._value if name == "s2-stream-config" else None


def run_append_json(data: bytes) -> None:
    """A JSON append body (`s2-format` raw or base64) as `RecordsApi.append` decodes it, or an
    `s2-stream-config` header."""
    options, payload = _split(data)
    try:
        if json_is_stream_config(options):
            create_config(_Headers(payload.decode("latin-1")))  # type: ignore[arg-type]
            return
        message = append_input_from_json(parse_json(payload, checked=False), json_format(options))
        validate_append_input(message)
    except S2Error as error:
        _refused(error)


# --- protobuf appends ----------------------------------------------------------------------

PROTO_PATHS = ("http", "s2s-frame", "grpc-append", "grpc-session")
"""Where an `AppendInput` arrives: an HTTP protobuf body, one S2S frame's body, or inside a gRPC
`AppendRequest` / `AppendSessionRequest` (whose input size comes from `wire.request_input_size`)."""


def proto_path(options: int) -> str:
    return PROTO_PATHS[options & 3]


def _same_validation(message: pb.AppendInput, encoded_size: int | None) -> None:
    """Validation that took the plain shortcut (`wire.plain_append_input_size`) must agree
    with validation that read every record."""
    try:
        fast: ValidatedBatch | S2Error = validate_append_input(message, encoded_size)
    except S2Error as error:
        _refused(error)
        fast = error
    try:
        slow: ValidatedBatch | S2Error = validate_append_input(message)
    except S2Error as error:
        slow = error
    if isinstance(fast, S2Error) or isinstance(slow, S2Error):
        assert isinstance(fast, S2Error) and isinstance(slow, S2Error), (fast, slow)
        assert (fast.code, fast.message) == (slow.code, slow.message)
        return
    for field in fields(ValidatedBatch):
        if field.name not in ("records", "bodies"):
            assert getattr(fast, field.name) == getattr(slow, field.name), field.name
    assert list(map(bytes, fast.bodies)) == list(map(bytes, slow.bodies))


def run_append_proto(data: bytes) -> None:
    options, payload = _split(data)
    path = proto_path(options)
    try:
        if path == "http":
            try:
                message = pb.AppendInput.FromString(payload)
            except DecodeError:
                return  # bad_proto
            _same_validation(message, len(payload))
        elif path == "s2s-frame":
            _frame_decoder(BASIN, STREAM)(payload)
        elif path == "grpc-append":
            append = _with_input_size(spb.AppendRequest)(payload)
            if isinstance(append, Undecodable):
                _refused(append.error())
                return
            _same_validation(append[0].input, append[1])
        else:
            session = _with_input_size(spb.AppendSessionRequest)(payload)
            if not isinstance(session, Undecodable):
                _same_validation(session[0].input, session[1])
            _SessionRequests()(session)
    except S2Error as error:
        _refused(error)


# --- stored batches ------------------------------------------------------------------------

_BATCH_HEADER = struct.Struct("<BBHIQQI")


def _with_checksum(value: bytes, version: int) -> bytes:
    """`value` made to pass the checksum of `version`, so that the checks after it are reached
    (damage the checksum catches is `test_layout.py`'s)."""
    if len(value) < _BATCH_HEADER.size:
        return value
    head = bytearray(value[: _BATCH_HEADER.size])
    head[0], head[1] = 0xB5, version
    count = struct.unpack_from("<I", head, 4)[0]
    if version == 2:
        head[24:28] = bytes(4)
        body = bytes(head) + value[_BATCH_HEADER.size :]
        return body + struct.pack("<I", google_crc32c.value(body))
    payload_at = _BATCH_HEADER.size + 16 * count + 4
    struct.pack_into("<I", head, 24, zlib.crc32(value[payload_at:]))
    return bytes(head) + value[_BATCH_HEADER.size :]


def run_batch(data: bytes) -> None:
    """A stored batch value: `Batch` raises `CorruptBatch` or gives a batch whose arrays hold
    one entry per record and whose offsets span its payload (not checked record by record:
    see `Batch`). Options bit 0: fix the checksum first (bit 1: as version 1); bit 2:
    walk the payload's entries as the decryption of a read does (`wire.split_entry`)."""
    options, payload = _split(data)
    if options & 4:
        position = 0
        while position < len(payload):
            try:
                *_, end = split_entry(payload, position)
            except ValueError:
                return  # `storage`, from encryption.open_entries
            assert end > position
            position = end
        return
    if options & 1:
        payload = _with_checksum(payload, 1 if options & 2 else 2)
    try:
        batch = Batch(payload)
    except CorruptBatch:
        return
    assert batch.count >= 1
    summary = summarize_batch(memoryview(payload))
    assert (summary.first_seq, summary.last_seq) == (batch.first_seq, batch.last_seq)
    assert summary.metered_bytes == batch.metered_between(0, batch.count)
    assert len(batch.offsets) == batch.count + 1 and batch.offsets[0] == 0
    assert batch.offsets[-1] == len(batch.slice(0, batch.count)) == len(batch.payload)
    assert len(batch.timestamps) == len(batch.metered) == batch.count
    assert 0 <= batch.index_of_timestamp(batch.timestamps[-1]) <= batch.count


# --- /v2/stream ----------------------------------------------------------------------------

INGEST_CONTENT_TYPES = ("application/json", "application/x-ndjson", "application/jsonl", "text/csv")
INGEST_ENCODINGS = (None, "gzip", "zstd", "br")
INGEST_QUERIES: tuple[dict[str, str], ...] = (
    {"table": TABLE},
    {"table": TABLE, "mode": "merge", "primary_key": "id", "wait": "true"},
    {"table": "s2s.checkpoints"},
    {"table": TABLE, "wait": "maybe", "mode": "upsert"},
)


def ingest_options(options: int) -> tuple[str, str | None, dict[str, str]]:
    """Content type, content encoding and query string (NDJSON's config) of an ingest."""
    return (
        INGEST_CONTENT_TYPES[options & 3],
        INGEST_ENCODINGS[(options >> 2) & 3],
        INGEST_QUERIES[(options >> 4) & 3],
    )


_ROW_DECODER = json.JSONDecoder()
_ROW_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _check_ingest(request: IngestRequest) -> None:
    """Every accepted row is a JSON object of at most `MAX_ROW_BYTES` that the materializer
    can read and write back (no NaN or infinity, valid UTF-8), and no row is both accepted
    and rejected."""
    for row in request.rows:
        assert len(row) <= MAX_ROW_BYTES
        value = _ROW_DECODER.decode(row.decode("utf-8"))
        assert type(value) is dict
        _ROW_ENCODER.encode(value)
    rejected = {rejection.index for rejection in request.rejected}
    assert rejected.isdisjoint(request.row_indexes)


def run_ingest(data: bytes) -> None:
    options, payload = _split(data)
    content_type, encoding, query = ingest_options(options)
    try:
        request = parse_ingest_request(
            payload, content_type=content_type, content_encoding=encoding, query=query
        )
    except S2Error as error:
        _refused(error)
        return
    _check_ingest(request)


# --- seeds ---------------------------------------------------------------------------------


def _record(
    body: bytes, headers: tuple[tuple[bytes, bytes], ...] = (), timestamp: int | None = None
) -> pb.AppendRecord:
    record = pb.AppendRecord(body=body, headers=[pb.Header(name=n, value=v) for n, v in headers])
    if timestamp is not None:
        record.timestamp = timestamp
    return record


def _append_inputs() -> list[bytes]:
    plain = append_input_bytes([b"one", b"", b"x" * 200], None, None)
    full = pb.AppendInput(
        records=[
            _record(b"hello", ((b"k", b"v"),), 5),
            _record(b"token-1", ((b"", b"fence"),)),
            _record((7).to_bytes(8, "big"), ((b"", b"trim"),)),
        ],
        match_seq_num=3,
        fencing_token="token-1",
    ).SerializeToString()
    fenced = append_input_bytes([b"a" * 20, b"b"], 2**40, "f")
    # An idempotent producer's batch: the header on the first record only, the rest plain.
    producer = append_input_bytes(
        [_record(b"first", ((b"s2s-producer", b"p-1 7"), (b"k", b"v"))), b"second", b""],
        1,
        None,
    )
    return [plain, full, fenced, producer, pb.AppendInput().SerializeToString()]


def _frames_seeds() -> list[bytes]:
    inputs = _append_inputs()
    whole = b"".join(encode_frame(message, None) for message in inputs)
    big = append_input_bytes([b"compressible " * 100] * 3, None, None)
    compressed = encode_frame(big, "zstd") + encode_frame(big, "gzip")
    return [bytes([255]) + whole, bytes([6]) + whole, bytes([0]) + compressed, bytes([255])]


def _json_seeds() -> list[bytes]:
    raw = {
        "records": [
            {"body": "hello", "headers": [["k", "v"]], "timestamp": 12},
            {"body": "token", "headers": [["", "fence"]]},
            {},
        ],
        "match_seq_num": 0,
        "fencing_token": "token",
    }
    b64 = {"records": [{"body": "aGVsbG8=", "headers": [["aw==", "dg=="]]}]}
    idempotent = {"records": [{"body": "a", "headers": [["s2s-producer", "p 0"]]}, {}]}
    config = {
        "storage_class": "express",
        "retention_policy": {"age": 3600},
        "timestamping": {"mode": "client-prefer", "uncapped": False},
        "delete_on_empty": {"min_age_secs": 60},
    }
    return [
        bytes([0]) + json.dumps(raw).encode(),
        bytes([1]) + json.dumps(b64).encode(),
        bytes([2]) + json.dumps(config).encode(),
        bytes([0]) + json.dumps(idempotent).encode(),
    ]


def _proto_seeds() -> list[bytes]:
    seeds = []
    for message in _append_inputs():
        seeds.append(bytes([0]) + message)
        seeds.append(bytes([1]) + message)
        for options, request_class in ((2, spb.AppendRequest), (3, spb.AppendSessionRequest)):
            request = request_class(basin=BASIN, stream=STREAM)
            request.input.ParseFromString(message)
            seeds.append(bytes([options]) + request.SerializeToString())
    return seeds


def _batch_seeds() -> list[bytes]:
    one = encode_batch([b"body"], {}, 0, [10], [12], 1000)
    many = encode_batch(
        [b"a", b"", b"c" * 300, b"fence"],
        {1: [(b"k", b"v")], 3: [(b"", b"fence")]},
        2**33,
        [5, 5, 6, 2**40],
        [9, 11, 308, 14],
        2**41,
    )
    entries = Batch(many).payload.tobytes()
    return [bytes([0]) + one, bytes([1]) + many[:-4], bytes([3]) + many[:-4], bytes([4]) + entries]


def _ingest_seeds() -> list[bytes]:
    rows = [
        {"id": 1, "name": "a", "tags": ["x"]},
        {"id": "2", "nested": {"deep": [1, 2.5e300, -0.0]}, "none": None, "yes": True},
    ]
    document = json.dumps({"data": rows, "config": {"table": TABLE, "tags": {"k": 1}}}).encode()
    merge = json.dumps(
        {"data": rows[0], "config": {"table": TABLE, "mode": "merge", "primary_key": "id"}}
    ).encode()
    ndjson = b"\n".join(json.dumps(row).encode() for row in rows) + b"\n[1]\n{bad\n"
    return [
        bytes([0]) + document,
        bytes([0]) + merge,
        bytes([1]) + ndjson,
        bytes([0x11]) + ndjson,
        bytes([0 | 1 << 2]) + gzip.compress(document),
        bytes([1 | 2 << 2]) + zstandard.ZstdCompressor().compress(ndjson),
    ]


@dataclass(frozen=True)
class Target:
    name: str
    run: Callable[[bytes], None]
    seeds: Callable[[], list[bytes]]
    doc: str


TARGETS: dict[str, Target] = {
    target.name: target
    for target in (
        Target("frames", run_frames, _frames_seeds, "S2S frame reader and session decoder"),
        Target("append_json", run_append_json, _json_seeds, "JSON append bodies, config header"),
        Target("append_proto", run_append_proto, _proto_seeds, "AppendInput: HTTP, S2S, gRPC"),
        Target("batch", run_batch, _batch_seeds, "stored batches and their entries"),
        Target("ingest", run_ingest, _ingest_seeds, "/v2/stream JSON and NDJSON bodies"),
    )
}
