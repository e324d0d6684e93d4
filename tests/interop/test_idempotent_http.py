"""Idempotent appends over HTTP (ADR 0016): the `s2s-producer` header in JSON (raw and base64)
and protobuf unary appends and in the official SDK's unary appends and S2S append sessions. A
batch sent again gets its first ack and is not written again; a bad header, a batch out of
order and one too old to answer are refused with their S2 codes."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from s2_sdk import S2, AppendInput, Endpoints, Record, Retry, SeqNum

from s2s.records import PRODUCER_WINDOW_BATCHES
from s2s.v1 import records_pb2 as pb
from tests.interop.test_sdk_data_plane import _stream
from tests.lossy_proxy import LossyProxy
from tests.server_process import ServerProcess

PROTOBUF = "application/protobuf"


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.http_url, timeout=10) as client:
        yield client


def _create(http: httpx.Client, basin_name: str) -> dict[str, str]:
    assert http.post("/v1/basins", json={"basin": basin_name}).status_code == 201
    headers = {"s2-basin": basin_name}
    assert http.post("/v1/streams", json={"stream": "s"}, headers=headers).status_code == 201
    return headers


def _append(http: httpx.Client, headers: dict[str, str], producer: str, *bodies: str) -> Any:
    records: list[dict[str, Any]] = [{"body": body} for body in bodies]
    records[0]["headers"] = [["s2s-producer", producer]]
    return http.post("/v1/streams/s/records", json={"records": records}, headers=headers)


def _range(ack: dict[str, Any]) -> tuple[int, int, int]:
    return ack["start"]["seq_num"], ack["start"]["timestamp"], ack["end"]["seq_num"]


def test_a_json_append_sent_again_gets_its_first_ack(http: httpx.Client, basin_name: str) -> None:
    headers = _create(http, basin_name)
    first = _append(http, headers, "http-1 0", "a", "b")
    assert first.status_code == 200, first.text
    assert _append(http, headers, "http-1 1", "c").status_code == 200
    again = _append(http, headers, "http-1 0", "a", "b")
    assert again.status_code == 200, again.text
    assert _range(again.json()) == _range(first.json())
    assert again.json()["tail"]["seq_num"] == 3
    # The same batch in base64 format, and as protobuf: the same ack.
    encoded = {
        "records": [
            {
                "body": base64.b64encode(b"a").decode(),
                "headers": [
                    [
                        base64.b64encode(b"s2s-producer").decode(),
                        base64.b64encode(b"http-1 0").decode(),
                    ]
                ],
            },
            {"body": base64.b64encode(b"b").decode()},
        ]
    }
    as_base64 = http.post(
        "/v1/streams/s/records", json=encoded, headers={**headers, "s2-format": "base64"}
    )
    assert _range(as_base64.json()) == _range(first.json())
    message = pb.AppendInput(
        records=[
            pb.AppendRecord(
                body=b"a", headers=[pb.Header(name=b"s2s-producer", value=b"http-1 0")]
            ),
            pb.AppendRecord(body=b"b"),
        ]
    )
    as_protobuf = http.post(
        "/v1/streams/s/records",
        content=message.SerializeToString(),
        headers={**headers, "content-type": PROTOBUF, "accept": PROTOBUF},
    )
    assert as_protobuf.status_code == 200, as_protobuf.text
    ack = pb.AppendAck.FromString(as_protobuf.content)
    assert (ack.start.seq_num, ack.start.timestamp, ack.end.seq_num) == _range(first.json())
    read = http.get("/v1/streams/s/records", params={"seq_num": 0}, headers=headers).json()
    assert [r["body"] for r in read["records"]] == ["a", "b", "c"]
    assert all("headers" not in r for r in read["records"]), "the header is not stored"


def test_refusals_have_their_codes(http: httpx.Client, basin_name: str) -> None:
    headers = _create(http, basin_name)
    malformed = _append(http, headers, "no number", "x")
    assert malformed.status_code == 422 and malformed.json()["code"] == "invalid"
    assert "s2s-producer header must be" in malformed.json()["message"]
    for seq in range(PRODUCER_WINDOW_BATCHES + 1):
        assert _append(http, headers, f"w {seq}", "x").status_code == 200
    too_old = _append(http, headers, "w 0", "x")
    assert too_old.status_code == 409 and too_old.json()["code"] == "resource_already_exists"
    skipped = _append(http, headers, f"w {PRODUCER_WINDOW_BATCHES + 2}", "x")
    assert skipped.status_code == 422 and "out of order" in skipped.json()["message"]
    tail = http.get("/v1/streams/s/records/tail", headers=headers).json()["tail"]["seq_num"]
    assert tail == PRODUCER_WINDOW_BATCHES + 1


def _batch(producer: str, seq: int, *bodies: bytes) -> AppendInput:
    header = (b"s2s-producer", f"{producer} {seq}".encode())
    records = [Record(body=bodies[0], headers=[header])]
    records += [Record(body=body) for body in bodies[1:]]
    return AppendInput(records=records)


async def test_the_sdk_s_unary_appends_and_sessions_carry_the_header(
    sdk: S2, basin_name: str
) -> None:
    stream = await _stream(sdk, basin_name)
    first = await stream.append(_batch("sdk-1", 0, b"a", b"b"))
    assert (await stream.append(_batch("sdk-1", 0, b"a", b"b"))).start == first.start
    async with stream.append_session() as session:
        second = await (await session.submit(_batch("sdk-1", 1, b"c")))
    async with stream.append_session() as session:  # a new session after a lost one
        again = await (await session.submit(_batch("sdk-1", 1, b"c")))
        third = await (await session.submit(_batch("sdk-1", 2, b"d")))
    assert (again.start, again.end) == (second.start, second.end)
    assert (second.start.seq_num, third.start.seq_num) == (2, 3)
    batch = await stream.read(start=SeqNum(0))
    assert [(r.body, r.headers) for r in batch.records] == [
        (b"a", []),
        (b"b", []),
        (b"c", []),
        (b"d", []),
    ]


async def test_the_sdk_s_own_session_retries_write_each_batch_once(
    server: ServerProcess, basin_name: str
) -> None:
    """The official SDK resends a session's unacknowledged batches through a new connection
    when one is lost (its default `AppendRetryPolicy.ALL`); with the header on each batch, and
    at most `PRODUCER_WINDOW_BATCHES` unacknowledged (more, and a resent one can be older than
    the server remembers: `resource_already_exists`), a resent batch that was written is
    answered, not written again."""
    proxy = LossyProxy(server.http_port)
    port = await proxy.start()
    url = f"http://127.0.0.1:{port}"
    retry = Retry(max_attempts=20, max_base_delay=timedelta(milliseconds=200))
    sdk = S2("unused-token", endpoints=Endpoints(account=url, basin=url), retry=retry)
    try:
        async with sdk:
            stream = await _stream(sdk, basin_name)
            tickets = []
            window = PRODUCER_WINDOW_BATCHES
            async with stream.append_session(max_unacked_batches=window) as session:
                disorder = asyncio.ensure_future(_lose_and_cut(proxy, rounds=3))
                for n in range(300):
                    tickets.append(await session.submit(_batch("sdk-retries", n, b"%d" % n)))
                    await asyncio.sleep(0.003)
                await disorder
                acks = [await ticket for ticket in tickets]
            assert [ack.start.seq_num for ack in acks] == list(range(300))
            assert proxy.cuts == 3 and proxy.answer_bytes_lost > 0
            bodies: list[bytes] = []
            while len(bodies) < 300:
                batch = await stream.read(start=SeqNum(len(bodies)))
                bodies += [r.body for r in batch.records]
            assert bodies == [b"%d" % n for n in range(300)]
    finally:
        await proxy.close()
    text = httpx.get(f"{server.http_url}/metrics", timeout=10).text
    assert f's2s_append_retries_total{{basin="{basin_name}"}}' in text, "some resent were written"


async def _lose_and_cut(proxy: LossyProxy, rounds: int) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0.1)
        proxy.lose_answers()
        await asyncio.sleep(0.15)
        proxy.cut()
