"""Data plane, unary: check tail, append and read as protobuf or JSON
(docs/s2-compat.md §6, §7, §8).

The mode of a `/records` request is chosen by `content-type` and `accept`
(docs/s2-compat.md §6.1); sessions (S2S, SSE) live in their own modules and share the argument
parsing here.
"""

from __future__ import annotations

import base64
from typing import Any

from google.protobuf.message import DecodeError

from s2s.config import StreamConfig, stream_config_from_json
from s2s.errors import S2Error, invalid
from s2s.records import BATCH_RECORDS_MAX, validate_append_input
from s2s.v1 import records_pb2 as pb
from s2s.wire import U32_MAX, U64_MAX, read_batch_bytes
from server.http_frontend.exchange import Exchange, first_accept, media_type, parse_uint
from server.http_frontend.json_body import parse_json, unpaired_surrogate
from server.reader import ReadLimits, ReadOutput, ReadStart
from server.scoped_store import ScopedStore
from server.sequencer import AppendAck, StreamPosition

PROTOBUF_TYPES = ("application/protobuf", "application/x-protobuf")
PROTOBUF_RESPONSE_TYPE = "application/protobuf"
STREAM_CONFIG_HEADER = "s2-stream-config"
FORMAT_HEADER = "s2-format"


# --- arguments ---------------------------------------------------------------------------


def record_format(exchange: Exchange) -> str:
    """`raw` or `base64`, from `s2-format` (aliases `json` and `json-binsafe`)."""
    value = (exchange.header(FORMAT_HEADER) or "raw").strip()
    if value in ("raw", "json"):
        return "raw"
    if value in ("base64", "json-binsafe"):
        return "base64"
    raise S2Error("bad_header", f"s2-format must be raw or base64, not {value!r}")


def create_config(exchange: Exchange) -> StreamConfig | None:
    """The config to use only if this request auto-creates the stream (SDK >= 0.13)."""
    value = exchange.header(STREAM_CONFIG_HEADER)
    if value is None:
        return None
    try:
        # Header values are latin-1 text of the bytes sent, which are UTF-8 JSON.
        return stream_config_from_json(parse_json(value.encode("latin-1")))
    except S2Error as error:
        raise S2Error("bad_header", f"invalid s2-stream-config: {error.message}") from None


def _uint(query: dict[str, str], name: str, maximum: int = U64_MAX) -> int | None:
    if name not in query:
        return None
    value = parse_uint(query[name], maximum)
    if value is None:
        raise S2Error("bad_query", f"{name} must be an unsigned integer of at most {maximum}")
    return value


def read_arguments(exchange: Exchange) -> tuple[ReadStart, ReadLimits]:
    query = exchange.query()
    clamp_text = query.get("clamp", "false")
    if clamp_text not in ("true", "false"):
        raise S2Error("bad_query", "clamp must be true or false")
    wait = _uint(query, "wait", U32_MAX)
    start = ReadStart(
        seq_num=_uint(query, "seq_num"),
        timestamp=_uint(query, "timestamp"),
        tail_offset=_uint(query, "tail_offset"),
    )
    limits = ReadLimits(
        count=_uint(query, "count"),
        bytes=_uint(query, "bytes"),
        until=_uint(query, "until"),
        clamp=clamp_text == "true",
        wait_secs=None if wait is None else float(wait),
    )
    return start, limits


# --- JSON encodings ----------------------------------------------------------------------


def position_json(position: StreamPosition) -> dict[str, int]:
    return {"seq_num": position.seq_num, "timestamp": position.timestamp}


def ack_json(ack: AppendAck) -> dict[str, Any]:
    return {
        "start": position_json(ack.start),
        "end": position_json(ack.end),
        "tail": position_json(ack.tail),
    }


def _decode_text(value: Any, fmt: str, what: str) -> bytes:
    if not isinstance(value, str):
        raise S2Error("bad_json", f"{what} must be a string")
    if fmt == "raw":
        try:
            return value.encode()
        except UnicodeEncodeError:
            raise S2Error("bad_json", unpaired_surrogate(what)) from None
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:  # binascii.Error, or a character outside ASCII
        raise invalid(f"{what} is not valid base64") from None


def _encode_text(value: bytes, fmt: str) -> str:
    if fmt == "raw":
        return value.decode("utf-8", errors="replace")
    return base64.b64encode(value).decode()


def _optional_uint(value: Any, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= U64_MAX:
        raise S2Error("bad_json", f"{what} must be an unsigned integer")
    return value


def append_input_from_json(value: Any, fmt: str) -> pb.AppendInput:
    if not isinstance(value, dict):
        raise S2Error("bad_json", "append input must be a JSON object")
    records = value.get("records")
    if not isinstance(records, list):
        raise S2Error("bad_json", "`records` must be a list")
    # Before converting: a body of 8 MiB holds millions of `{}`, each a protobuf record.
    if len(records) > BATCH_RECORDS_MAX:
        raise invalid(f"append batch must not exceed {BATCH_RECORDS_MAX} records")
    message = pb.AppendInput()
    for index, item in enumerate(records):
        if not isinstance(item, dict):
            raise S2Error("bad_json", f"record {index} must be a JSON object")
        record = message.records.add()
        timestamp = _optional_uint(item.get("timestamp"), f"record {index} timestamp")
        if timestamp is not None:
            record.timestamp = timestamp
        headers = item.get("headers") or []
        if not isinstance(headers, list):
            raise S2Error("bad_json", f"record {index} headers must be a list")
        for header in headers:
            if not isinstance(header, list) or len(header) != 2:
                raise S2Error("bad_json", f"record {index}: a header is a [name, value] pair")
            record.headers.add(
                name=_decode_text(header[0], fmt, "header name"),
                value=_decode_text(header[1], fmt, "header value"),
            )
        record.body = _decode_text(item.get("body", ""), fmt, f"record {index} body")
    match_seq_num = _optional_uint(value.get("match_seq_num"), "match_seq_num")
    if match_seq_num is not None:
        message.match_seq_num = match_seq_num
    fencing_token = value.get("fencing_token")
    if fencing_token is not None:
        if not isinstance(fencing_token, str):
            raise S2Error("bad_json", "fencing_token must be a string")
        try:
            message.fencing_token = fencing_token
        except ValueError:  # protobuf refuses text that is not valid Unicode
            raise S2Error("bad_json", unpaired_surrogate("fencing_token")) from None
    return message


def read_batch_json(output: ReadOutput, fmt: str) -> dict[str, Any]:
    batch = pb.ReadBatch.FromString(output.records.payload) if output.records else pb.ReadBatch()
    records = []
    for record in batch.records:
        item: dict[str, Any] = {"seq_num": record.seq_num, "timestamp": record.timestamp}
        if record.headers:
            item["headers"] = [
                [_encode_text(h.name, fmt), _encode_text(h.value, fmt)] for h in record.headers
            ]
        if record.body:
            item["body"] = _encode_text(record.body, fmt)
        records.append(item)
    out: dict[str, Any] = {"records": records}
    if output.tail is not None:
        out["tail"] = position_json(output.tail)
    return out


def read_batch_proto(output: ReadOutput) -> bytes:
    tail = None if output.tail is None else (output.tail.seq_num, output.tail.timestamp)
    records = b"" if output.records is None else output.records.payload
    return read_batch_bytes(records, tail)


# --- handlers ----------------------------------------------------------------------------


class RecordsApi:
    def __init__(self, store: ScopedStore) -> None:
        self._store = store

    async def check_tail(self, exchange: Exchange, basin: str, stream: str) -> None:
        tail = await self._store.check_tail(basin, stream)
        await exchange.respond_json(200, {"tail": position_json(tail)})

    async def append(self, exchange: Exchange, basin: str, stream: str) -> None:
        protobuf = media_type(exchange.header("content-type")) in PROTOBUF_TYPES
        encoded_size = None
        if protobuf:
            encoded = await exchange.body()
            encoded_size = len(encoded)
            try:
                message = pb.AppendInput.FromString(encoded)
            except DecodeError as error:
                raise S2Error("bad_proto", f"cannot decode AppendInput: {error}") from None
        else:
            fmt = record_format(exchange)
            # Unchecked: the converter checks every value's type and encodes every string.
            message = append_input_from_json(await exchange.json_body(checked=False), fmt)
        batch = validate_append_input(message, encoded_size)
        ack = await self._store.append(basin, stream, batch, create_config(exchange))
        if first_accept(exchange.header("accept")) in PROTOBUF_TYPES:
            body = ack.encode()
            await exchange.respond(200, body, PROTOBUF_RESPONSE_TYPE)
        else:
            await exchange.respond_json(200, ack_json(ack))

    async def read(self, exchange: Exchange, basin: str, stream: str) -> None:
        protobuf = first_accept(exchange.header("accept")) in PROTOBUF_TYPES
        fmt = "raw" if protobuf else record_format(exchange)
        start, limits = read_arguments(exchange)
        output = await self._store.read(basin, stream, start, limits, create_config(exchange))
        if protobuf:
            await exchange.respond(200, read_batch_proto(output), PROTOBUF_RESPONSE_TYPE)
        else:
            await exchange.respond_json(200, read_batch_json(output, fmt))
