"""The decoders' fuzz inputs over real sockets: mutants of each target's seeds
(`tests/fuzz/targets.py`) sent to a real `s2s serve` as the requests they stand for (JSON and
protobuf appends and the `s2s-stream-config` header over HTTP, S2S append sessions, gRPC
`Append` and `AppendSession` with the damaged bytes as the message, `/v2/stream` bodies with
their content type and encoding). No answer is a 5xx (nor a terminal S2S frame of one, nor
`UNKNOWN`/`INTERNAL` over gRPC), the log has no traceback, and the server answers afterwards.

The in-process runs reach far more inputs (`test_decoders_fuzz.py`); this proves that what the
targets call is what the server does with a request, frontends and all. Appends over HTTP go to
a new stream each (created on append), so that one mutant's fence or trim does not decide the
next one's answer.
"""

from __future__ import annotations

import collections
import json
import random
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest

from server.http_frontend.s2s_frames import encode_frame
from tests.fuzz.targets import (
    BASIN,
    STREAM,
    TABLE,
    TARGETS,
    frames_chunk_bytes,
    ingest_options,
    json_format,
    json_is_stream_config,
    proto_path,
)
from tests.server_process import ServerProcess

pytestmark = pytest.mark.xdist_group("fuzz-decoders-server")

MUTANTS_PER_TARGET = 150
_TIMEOUT_S = 20.0
_HEADER_UNSAFE = bytes([*range(0x20), 0x7F])
"""Bytes no HTTP/1.1 header value may hold (h11 refuses to send them): left out."""
_statuses: collections.Counter[str] = collections.Counter()


_EDGE_VALUES: tuple[Any, ...] = (
    None, True, 0, -1, 1.5, 2**64 - 1, 2**64, 10**400, float("nan"), float("inf"), "", "\ud800",
    "x" * 70_000, "é" * 20, [], {}, [[]], {"": ""}, [[[[[[[[[[[[]]]]]]]]]]]], ["a", "b", "c"],
)  # fmt: skip
"""What replaces one value of a JSON seed: wrong types, limits and just past them, a lone
surrogate, NaN and infinity (which Python writes and JSON does not have), deep nesting."""


def _json_mutant(document: Any, rng: random.Random) -> Any:
    """`document` with one value (or the whole) replaced by an edge value, or one key dropped."""
    containers: list[Any] = []
    pending = [document]
    while pending:
        value = pending.pop()
        if isinstance(value, dict | list) and value:
            containers.append(value)
            pending.extend(value.values() if isinstance(value, dict) else value)
    if not containers:
        return rng.choice(_EDGE_VALUES)
    target = rng.choice(containers)
    key = rng.choice(list(target)) if isinstance(target, dict) else rng.randrange(len(target))
    if isinstance(target, dict) and rng.random() < 0.2:
        del target[key]
    else:
        target[key] = rng.choice(_EDGE_VALUES)
    return document


def mutants(seeds: list[bytes], count: int, rng: random.Random) -> Iterator[bytes]:
    """`count` inputs, each a seed with one to four damages: bit flips, bytes replaced by edge
    values, inserted, deleted or repeated, a cut, or a splice with another seed; or, for half
    of the seeds that are a JSON document, one value replaced (`_json_mutant`)."""
    for _ in range(count):
        data = bytearray(rng.choice(seeds))
        if rng.random() < 0.5:
            try:
                document = json.loads(data[1:])
            except ValueError:
                pass
            else:
                text = json.dumps(_json_mutant(document, rng), ensure_ascii=rng.random() < 0.5)
                yield bytes(data[:1]) + text.encode("utf-8", "surrogatepass")
                continue
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(data) + 1)
            kind = rng.randrange(7)
            if kind == 0 and at < len(data):
                data[at] ^= 1 << rng.randrange(8)
            elif kind == 1 and at < len(data):
                data[at] = rng.choice((0x00, 0x01, 0x7F, 0x80, 0xFF))
            elif kind == 2:
                data[at:at] = rng.randbytes(rng.randint(1, 8))
            elif kind == 3:
                del data[at : at + rng.randint(1, 16)]
            elif kind == 4:
                data[at:at] = data[at : at + rng.randint(1, 32)] * rng.randint(2, 8)
            elif kind == 5:
                del data[at:]
            else:
                other = rng.choice(seeds)
                data[at:] = other[rng.randrange(len(other) + 1) :]
        yield bytes(data)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(
        str(tmp_path_factory.mktemp("fuzz-decoders") / "data"),
        extra_args=["--lake-linger-ms", "50"],
    ).start()
    try:
        with httpx.Client(base_url=process.http_url, timeout=30) as http:
            created = http.post(
                "/v1/basins", json={"basin": BASIN, "config": {"create_stream_on_append": True}}
            )
            assert created.status_code == 201, created.text
            stream = http.post("/v1/streams", json={"stream": STREAM}, headers={"s2-basin": BASIN})
            assert stream.status_code == 201, stream.text
            declared = http.post(
                "/v1/lake/materializations",
                json={"name": "fuzz_decoders", "table": TABLE, "create_table": True},
            )
            assert declared.status_code == 201, declared.text
        yield process
    finally:
        process.stop()


def _terminal_statuses(body: bytes) -> list[int]:
    """The HTTP statuses in the terminal frames of an S2S session's answer."""
    statuses = []
    position = 0
    while position + 4 <= len(body):
        length = int.from_bytes(body[position : position + 3], "big")
        if body[position + 3] & 0x80:
            statuses.append(int.from_bytes(body[position + 4 : position + 6], "big"))
        position += 3 + length
    return statuses


class _Sender:
    def __init__(self, server: ServerProcess) -> None:
        self.http = httpx.Client(base_url=server.http_url, timeout=_TIMEOUT_S)
        self.channel = grpc.insecure_channel(server.target)
        self.streams = 0

    def close(self) -> None:
        self.http.close()
        self.channel.close()

    def _fresh_records_path(self) -> str:
        self.streams += 1
        return f"/v1/streams/fuzz-{self.streams}/records"

    def _http(self, what: str, request: httpx.Request) -> None:
        response = self.http.send(request)
        _statuses[f"{what} {response.status_code}"] += 1
        assert response.status_code < 500, (what, response.status_code, response.text[:500])
        if response.headers.get("content-type") == "s2s/proto":
            for status in _terminal_statuses(response.content):
                _statuses[f"{what} terminal {status}"] += 1
                assert status < 500, (what, response.content[-500:])

    def _s2s_session(self, what: str, body: bytes) -> None:
        headers = {"s2-basin": BASIN, "content-type": "s2s/proto"}
        path = self._fresh_records_path()
        self._http(what, self.http.build_request("POST", path, content=body, headers=headers))

    def frames(self, data: bytes) -> None:
        if frames_chunk_bytes(data[0] if data else 0) is not None or not data:
            data = bytes([255]) + data  # the server's chunking is its own; the bytes are these
        self._s2s_session("frames", data[1:])

    def append_json(self, data: bytes) -> None:
        options, payload = (data[0], data[1:]) if data else (0, b"")
        # Bytes: a header is sent as it is, and read by the server as latin-1 text.
        headers = {b"s2-basin": BASIN.encode(), b"content-type": b"application/json"}
        if json_is_stream_config(options):
            headers[b"s2-stream-config"] = payload.translate(None, _HEADER_UNSAFE).strip()
            body = b'{"records": [{"body": "x"}]}'
        else:
            headers[b"s2-format"] = json_format(options).encode()
            body = payload
        request = self.http.build_request(
            "POST", self._fresh_records_path(), content=body, headers=headers
        )
        self._http("append_json", request)

    def append_proto(self, data: bytes) -> None:
        options, payload = (data[0], data[1:]) if data else (0, b"")
        path = proto_path(options)
        if path == "http":
            headers = {"s2-basin": BASIN, "content-type": "application/protobuf"}
            request = self.http.build_request(
                "POST", self._fresh_records_path(), content=payload, headers=headers
            )
            self._http("append_proto http", request)
        elif path == "s2s-frame":
            self._s2s_session("append_proto s2s", encode_frame(payload, None))
        else:
            self._grpc(path, payload)

    def _grpc(self, path: str, payload: bytes) -> None:
        try:
            if path == "grpc-append":
                self.channel.unary_unary("/s2s.v1.StreamService/Append")(
                    payload, timeout=_TIMEOUT_S
                )
            else:
                call = self.channel.stream_stream("/s2s.v1.StreamService/AppendSession")
                for _ in call(iter([payload]), timeout=_TIMEOUT_S):
                    pass
            code = grpc.StatusCode.OK
        except grpc.RpcError as error:
            code = error.code()
        _statuses[f"{path} {code.name}"] += 1
        assert code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), (path, payload)

    def ingest(self, data: bytes) -> None:
        options, payload = (data[0], data[1:]) if data else (0, b"")
        content_type, encoding, query = ingest_options(options)
        headers = {"content-type": content_type}
        if encoding is not None:
            headers["content-encoding"] = encoding
        request = self.http.build_request(
            "POST", "/v2/stream", params=query, content=payload, headers=headers
        )
        self._http("ingest", request)


def test_mutated_inputs_get_no_5xx_over_real_sockets(server: ServerProcess) -> None:
    sender = _Sender(server)
    rng = random.Random(16)
    try:
        for name in ("frames", "append_json", "append_proto", "ingest"):
            send = getattr(sender, name)
            for data in mutants(TARGETS[name].seeds(), MUTANTS_PER_TARGET, rng):
                send(data)
    finally:
        sender.close()
    assert server.process is not None and server.process.poll() is None
    with httpx.Client(base_url=server.http_url, timeout=10) as http:
        assert http.get("/health").status_code == 200
        appended = http.post(
            f"/v1/streams/{STREAM}-after/records",
            json={"records": [{"body": "after"}]},
            headers={"s2-basin": BASIN},
        )
        assert appended.status_code == 200, appended.text
    log = "".join(server.log)
    assert "Traceback" not in log, log[-5000:]
    print(f"fuzz over sockets: {sorted(_statuses.items())}")
