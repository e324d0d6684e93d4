"""Idempotent appends over gRPC against a real server: the client's `Producer` through a proxy
that loses the server's acks and then cuts the connection, again and again while records flow,
writes every record exactly once and in order; a batch sent twice in one session, or again in
a new one, gets one ack; the non-idempotent producer fails instead of resending."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import httpx
import pytest

from client import S2SClient
from client._errors import S2SError
from s2s.records import PRODUCER_HEADER, PRODUCER_WINDOW_BATCHES
from s2s.v1 import records_pb2 as pb
from tests.grpc_api.conftest import BASIN
from tests.lossy_proxy import LossyProxy
from tests.server_process import ServerProcess

RECORDS = 6000
CHAOS_ROUNDS = 4


async def read_bodies(client: S2SClient, stream: str) -> list[bytes]:
    out: list[bytes] = []
    tail = (await client.stream(BASIN, stream).check_tail()).seq_num
    while len(out) < tail:
        batch = await client.stream(BASIN, stream).read(seq_num=len(out))
        out += [record.body for record in batch.records]
    return out


def retries_answered(server: ServerProcess) -> int:
    """The server's `s2s_append_retries_total` for the test basin."""
    text = httpx.get(f"{server.http_url}/metrics", timeout=10).text
    match = re.search(rf's2s_append_retries_total{{basin="{BASIN}"}} (\S+)', text)
    return 0 if match is None else int(float(match.group(1)))


def producer_record(producer: str, seq: int, body: bytes) -> pb.AppendRecord:
    header = pb.Header(name=PRODUCER_HEADER, value=f"{producer} {seq}".encode())
    return pb.AppendRecord(body=body, headers=[header])


async def chaos(proxy: LossyProxy, rounds: int) -> None:
    """Lose the server's answers for a while, then cut every connection; `rounds` times."""
    for _ in range(rounds):
        await asyncio.sleep(0.15)
        proxy.lose_answers()
        await asyncio.sleep(0.25)
        proxy.cut()


@pytest.fixture
async def proxied(server: ServerProcess) -> AsyncIterator[tuple[LossyProxy, S2SClient]]:
    """A client of the server through a lossy proxy, with the test basin created."""
    proxy = LossyProxy(server.grpc_port)
    port = await proxy.start()
    try:
        async with S2SClient(f"127.0.0.1:{port}") as client:
            await client.create_basin(BASIN)
            yield proxy, client
    finally:
        await proxy.close()


async def test_the_producer_writes_every_record_once_though_acks_are_lost(
    server: ServerProcess, proxied: tuple[LossyProxy, S2SClient]
) -> None:
    proxy, client = proxied
    await client.create_stream(BASIN, "idem")
    stream = client.stream(BASIN, "idem")
    futures: list[asyncio.Future[int]] = []
    async with stream.producer(linger_s=0.002) as producer:
        disorder = asyncio.ensure_future(chaos(proxy, CHAOS_ROUNDS))
        for i in range(RECORDS):
            futures.append(await producer.append(b"r%d" % i))
            if i % 50 == 0:
                await asyncio.sleep(0.005)  # records keep coming through the chaos
        await disorder
    seq_nums = [await future for future in futures]
    assert seq_nums == list(range(RECORDS))
    assert await read_bodies(client, "idem") == [b"r%d" % i for i in range(RECORDS)]
    assert proxy.cuts == CHAOS_ROUNDS and proxy.answer_bytes_lost > 0
    assert producer.resent_batches > 0
    assert retries_answered(server) > 0, "some resent batches had been written already"


async def test_without_idempotence_the_producer_fails_rather_than_resend(
    proxied: tuple[LossyProxy, S2SClient],
) -> None:
    proxy, client = proxied
    await client.create_stream(BASIN, "plain")
    producer = client.stream(BASIN, "plain").producer(linger_s=0.002, idempotent=False)
    assert producer.producer_id is None
    first = await producer.append(b"before")
    assert await first == 0
    proxy.lose_answers()
    lost = await producer.append(b"ack lost")
    await asyncio.sleep(0.2)
    proxy.cut()
    with pytest.raises(S2SError) as failed:
        await lost
    assert failed.value.code == "unavailable"
    await producer.close()
    assert await read_bodies(client, "plain") == [b"before", b"ack lost"]


def test_an_idempotent_producer_keeps_within_the_window(server: ServerProcess) -> None:
    async def build() -> None:
        async with S2SClient(server.target) as client:
            stream = client.stream(BASIN, "any")
            with pytest.raises(ValueError, match=str(PRODUCER_WINDOW_BATCHES)):
                stream.producer(inflight_batches_max=PRODUCER_WINDOW_BATCHES + 1)
            stream.producer(inflight_batches_max=64, idempotent=False)

    asyncio.run(build())


async def test_a_batch_sent_twice_in_a_session_or_in_another_gets_one_ack(
    client: S2SClient,
) -> None:
    await client.create_stream(BASIN, "twice")
    stream = client.stream(BASIN, "twice")
    batch: list[pb.AppendRecord | bytes] = [producer_record("session-writer", 0, b"a"), b"b"]
    async with stream.append_session() as session:
        pending = [await session.submit(batch) for _ in range(3)]  # the first still in flight
        acks = [await ack for ack in pending]
    async with stream.append_session() as again:
        acks.append(await again.append(batch))
    acks.append(await stream.append(batch))
    assert {(a.start.seq_num, a.start.timestamp, a.end.seq_num) for a in acks} == {
        (0, acks[0].start.timestamp, 2)
    }
    assert await read_bodies(client, "twice") == [b"a", b"b"]
    stored = (await stream.read(seq_num=0)).records[0]
    assert list(stored.headers) == [], "the header is not stored"


async def test_bad_producer_headers_are_refused_with_their_reason(client: S2SClient) -> None:
    await client.create_stream(BASIN, "bad")
    stream = client.stream(BASIN, "bad")
    with pytest.raises(S2SError) as malformed:
        await stream.append(
            [
                pb.AppendRecord(
                    body=b"x", headers=[pb.Header(name=PRODUCER_HEADER, value=b"no-number")]
                )
            ]
        )
    assert (
        malformed.value.code == "invalid"
        and "s2s-producer header must be" in malformed.value.message
    )
    await stream.append([producer_record("w", 0, b"x")])
    with pytest.raises(S2SError) as skipped:
        await stream.append([producer_record("w", 2, b"y")])
    assert skipped.value.code == "invalid" and "out of order" in skipped.value.message
    assert await read_bodies(client, "bad") == [b"x"]
