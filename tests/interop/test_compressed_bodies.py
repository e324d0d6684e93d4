"""Compressed bodies cut at every byte (issue 12 item 3) over the real port: unary JSON and
protobuf appends, S2S append frames and `/v2/stream`, gzip and zstd. Each cut is refused
with a 400 and appends nothing; the whole body is then accepted, once."""

from __future__ import annotations

import gzip
import itertools
import json
from collections.abc import Callable, Iterator

import httpx
import pytest
import zstandard

from s2s.v1 import records_pb2 as pb
from tests.server_process import ServerProcess

RECORDS = 200
BODIES = [b"record %04d" % i for i in range(RECORDS)]
COMPRESS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "zstd": zstandard.ZstdCompressor().compress,
}
S2S_FLAGS = {"gzip": 0x40, "zstd": 0x20}
INGEST_BASIN = "lake-ingest"
_tables = itertools.count()


@pytest.fixture
def h2(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.http_url, http1=False, http2=True, timeout=30) as client:
        yield client


def _tail(h2: httpx.Client, basin: str, stream: str) -> int:
    response = h2.get(f"/v1/streams/{stream}/records/tail", headers={"s2-basin": basin})
    assert response.status_code == 200, response.text
    seq_num: int = response.json()["tail"]["seq_num"]
    return seq_num


def _stream(h2: httpx.Client, basin: str) -> str:
    assert h2.post("/v1/basins", json={"basin": basin}).status_code == 201
    headers = {"s2-basin": basin}
    assert h2.post("/v1/streams", json={"stream": "s"}, headers=headers).status_code == 201
    return "s"


def _frame(body: bytes, flags: int) -> bytes:
    return (1 + len(body)).to_bytes(3, "big") + bytes([flags]) + body


def _s2s_outcome(response: httpx.Response) -> tuple[int, str]:
    """(status, code) of a session's terminal frame, or (200, "") for acks only."""
    assert response.status_code == 200, response.text
    content = response.content
    while content:
        length = int.from_bytes(content[:3], "big")
        flags, body = content[3], content[4 : 3 + length]
        if flags == 0x80:
            return int.from_bytes(body[:2], "big"), json.loads(body[2:])["code"]
        content = content[3 + length :]
    return 200, ""


def _every_cut_is_refused(
    whole: bytes, send: Callable[[bytes], tuple[int, str]], expected: tuple[int, str]
) -> None:
    refused = [send(whole[:cut]) for cut in range(len(whole))]
    wrong = [(cut, outcome) for cut, outcome in enumerate(refused) if outcome != expected]
    assert not wrong, f"{len(wrong)} of {len(whole)} cut points were not {expected}: {wrong[:5]}"


@pytest.mark.parametrize("encoding", ["gzip", "zstd"])
@pytest.mark.parametrize("content_type", ["application/json", "application/protobuf"])
def test_unary_append(h2: httpx.Client, basin_name: str, encoding: str, content_type: str) -> None:
    stream = _stream(h2, basin_name)
    if content_type == "application/json":
        records = [{"body": body.decode()} for body in BODIES]
        raw = json.dumps({"records": records}).encode()
    else:
        raw = pb.AppendInput(records=[pb.AppendRecord(body=b) for b in BODIES]).SerializeToString()
    headers = {"s2-basin": basin_name, "content-type": content_type, "content-encoding": encoding}

    def send(body: bytes) -> tuple[int, str]:
        response = h2.post(f"/v1/streams/{stream}/records", content=body, headers=headers)
        return response.status_code, response.json().get("code", "")

    whole = COMPRESS[encoding](raw)
    _every_cut_is_refused(whole, send, (400, "bad_header"))
    assert _tail(h2, basin_name, stream) == 0
    assert send(whole) == (200, "")
    assert _tail(h2, basin_name, stream) == RECORDS


@pytest.mark.parametrize("encoding", ["gzip", "zstd"])
def test_s2s_append_frame(h2: httpx.Client, basin_name: str, encoding: str) -> None:
    stream = _stream(h2, basin_name)
    raw = pb.AppendInput(records=[pb.AppendRecord(body=b) for b in BODIES]).SerializeToString()
    headers = {"s2-basin": basin_name, "content-type": "s2s/proto", "accept": "s2s/proto"}

    def send(body: bytes) -> tuple[int, str]:
        frame = _frame(body, S2S_FLAGS[encoding])
        response = h2.post(f"/v1/streams/{stream}/records", content=frame, headers=headers)
        return _s2s_outcome(response)

    whole = COMPRESS[encoding](raw)
    _every_cut_is_refused(whole, send, (400, "bad_frame"))
    assert _tail(h2, basin_name, stream) == 0
    assert send(whole) == (200, "")
    assert _tail(h2, basin_name, stream) == RECORDS


@pytest.mark.parametrize("encoding", ["gzip", "zstd"])
def test_lake_ingest(h2: httpx.Client, encoding: str) -> None:
    table = f"bronze.cut{next(_tables)}"
    declared = h2.post(
        "/v1/lake/materializations", json={"name": table, "table": table, "create_table": True}
    )
    assert declared.status_code == 201, declared.text
    raw = "".join(json.dumps({"id": i, "v": body.decode()}) + "\n" for i, body in enumerate(BODIES))
    headers = {"content-type": "application/x-ndjson", "content-encoding": encoding}

    def send(body: bytes) -> tuple[int, str]:
        response = h2.post("/v2/stream", params={"table": table}, content=body, headers=headers)
        errors = response.json()["errors"]
        return response.status_code, errors[0]["code"] if errors else ""

    whole = COMPRESS[encoding](raw.encode())
    assert send(COMPRESS[encoding](b'{"id": -1}\n')) == (200, "")
    _every_cut_is_refused(whole, send, (400, "invalid_encoding"))
    assert _tail(h2, INGEST_BASIN, table) == 1
    assert send(whole) == (200, "")
    assert _tail(h2, INGEST_BASIN, table) == 1 + RECORDS
