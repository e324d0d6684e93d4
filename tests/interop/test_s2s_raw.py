"""S2S framing checked byte by byte over HTTP/2 (docs/s2-compat.md §9): terminal error frames,
acknowledgements before a failure, and the heartbeat that starts follow mode."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterator

import httpx
import pytest
import zstandard

from s2s.v1 import records_pb2 as pb
from tests.server_process import ServerProcess

S2S = {"content-type": "s2s/proto", "accept": "s2s/proto"}


@pytest.fixture
def h2(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.http_url, http1=False, http2=True, timeout=10) as client:
        yield client


def _frame(body: bytes, flags: int = 0) -> bytes:
    return (1 + len(body)).to_bytes(3, "big") + bytes([flags]) + body


def _frames(data: bytes) -> list[tuple[int, bytes]]:
    out = []
    while data:
        length = int.from_bytes(data[:3], "big")
        out.append((data[3], data[4 : 3 + length]))
        data = data[3 + length :]
    return out


def _terminal(flags_and_body: tuple[int, bytes]) -> tuple[int, dict[str, object]]:
    flags, body = flags_and_body
    assert flags == 0x80
    return int.from_bytes(body[:2], "big"), json.loads(body[2:])


def _stream(h2: httpx.Client, basin_name: str) -> dict[str, str]:
    assert h2.post("/v1/basins", json={"basin": basin_name}).status_code == 201
    headers = {"s2-basin": basin_name}
    assert h2.post("/v1/streams", json={"stream": "s"}, headers=headers).status_code == 201
    return headers


def _input(*bodies: bytes, match_seq_num: int | None = None) -> bytes:
    message = pb.AppendInput(records=[pb.AppendRecord(body=b) for b in bodies])
    if match_seq_num is not None:
        message.match_seq_num = match_seq_num
    return _frame(message.SerializeToString())


_INPUT = pb.AppendInput(records=[pb.AppendRecord(body=b"x")]).SerializeToString()
_FLAGS_NOT_FOR_CLIENTS = (0x10, 0x01, 0x02, 0x04, 0x08, 0x0F, 0x21, 0x41)
"""Reconnect-advised (the server's to send), each reserved bit, and reserved bits beside
compression (issue 12 item 8: accepted before)."""
_ZSTD_EMPTY = zstandard.compress(b"")


def _flagged(flags: int) -> bytes:
    """A frame of a valid input with these flags, compressed as their compression bits say."""
    compress: dict[int, Callable[[bytes], bytes]] = {
        0x20: zstandard.compress,
        0x40: gzip.compress,
    }
    body = compress[flags & 0x60](_INPUT) if flags & 0x60 in compress else _INPUT
    return _frame(body, flags=flags)


def test_acks_then_terminal_error_and_nothing_after(h2: httpx.Client, basin_name: str) -> None:
    headers = {**_stream(h2, basin_name), **S2S}
    body = _input(b"a", b"b") + _input(b"c", match_seq_num=0) + _input(b"never")
    response = h2.post("/v1/streams/s/records", content=body, headers=headers)
    assert response.status_code == 200
    frames = _frames(response.content)
    assert len(frames) == 2
    ack = pb.AppendAck.FromString(frames[0][1])
    assert (ack.start.seq_num, ack.end.seq_num) == (0, 2)
    assert _terminal(frames[1]) == (412, {"seq_num_mismatch": 2})
    tail = h2.get("/v1/streams/s/records/tail", headers={"s2-basin": basin_name})
    assert tail.json()["tail"]["seq_num"] == 2


@pytest.mark.parametrize(
    ("frame", "status", "code"),
    [
        (_frame(b"", flags=0x80), 400, "bad_frame"),  # clients may not send terminal frames
        (_frame(b"\xff\xff", flags=0), 400, "bad_frame"),  # not an AppendInput
        (_frame(b"", flags=0x60), 400, "bad_frame"),  # compression bits 11
        (_frame(pb.AppendInput().SerializeToString()), 422, "invalid"),  # empty batch
        *((_flagged(flags), 400, "bad_frame") for flags in _FLAGS_NOT_FOR_CLIENTS),
        (_frame(gzip.compress(_INPUT) + b"\x00", flags=0x40), 400, "bad_frame"),
        (_frame(zstandard.compress(_INPUT) + _ZSTD_EMPTY, flags=0x20), 400, "bad_frame"),
    ],
    ids=[
        "terminal-flag",
        "not-protobuf",
        "compression-bits-11",
        "empty-batch",
        *(f"flags-0x{flags:02x}" for flags in _FLAGS_NOT_FOR_CLIENTS),
        "byte-after-gzip-member",
        "frame-after-zstd-frame",
    ],
)
def test_bad_frames_end_with_terminal_error(
    h2: httpx.Client, basin_name: str, frame: bytes, status: int, code: str
) -> None:
    headers = {**_stream(h2, basin_name), **S2S}
    response = h2.post("/v1/streams/s/records", content=frame, headers=headers)
    assert response.status_code == 200
    (terminal,) = _frames(response.content)
    got_status, body = _terminal(terminal)
    assert (got_status, body["code"]) == (status, code)
    tail = h2.get("/v1/streams/s/records/tail", headers={"s2-basin": basin_name})
    assert tail.json()["tail"]["seq_num"] == 0


def test_append_session_to_missing_stream_is_plain_404(h2: httpx.Client, basin_name: str) -> None:
    assert h2.post("/v1/basins", json={"basin": basin_name}).status_code == 201
    response = h2.post(
        "/v1/streams/absent/records", content=_input(b"x"), headers={"s2-basin": basin_name, **S2S}
    )
    assert response.status_code == 404 and response.json()["code"] == "stream_not_found"


def test_read_session_sends_heartbeat_with_tail_at_once(h2: httpx.Client, basin_name: str) -> None:
    headers = {**_stream(h2, basin_name), "content-type": "s2s/proto"}
    with h2.stream("GET", "/v1/streams/s/records", headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "s2s/proto"
        buffer = b""
        for chunk in response.iter_raw():
            buffer += chunk
            if len(buffer) >= 4 and len(buffer) >= 3 + int.from_bytes(buffer[:3], "big"):
                break
    ((flags, body),) = _frames(buffer[: 3 + int.from_bytes(buffer[:3], "big")])
    heartbeat = pb.ReadBatch.FromString(body)
    assert flags == 0 and not heartbeat.records and heartbeat.HasField("tail")
    assert heartbeat.tail.seq_num == 0
