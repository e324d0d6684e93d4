"""Append sessions, the producer and crash safety over gRPC, against a real server process."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from client import FencingTokenMismatchError, S2SClient, S2SError, SeqNumMismatchError
from s2s.records import fence_record
from s2s.v1 import records_pb2 as pb
from tests.grpc_api.conftest import BASIN
from tests.server_process import ServerProcess


async def read_bodies(client: S2SClient, stream: str) -> list[bytes]:
    bodies: list[bytes] = []
    tail = (await client.stream(BASIN, stream).check_tail()).seq_num
    async for batch in client.stream(BASIN, stream).read_session(seq_num=0, count=tail):
        bodies.extend(r.body for r in batch.records)
    return bodies


async def test_pipelined_session_acks_in_order(client: S2SClient) -> None:
    await client.create_stream(BASIN, "pipe")
    sizes = [random.Random(i).randint(1, 20) for i in range(2000)]
    async with client.stream(BASIN, "pipe").append_session(inflight_batches_max=64) as session:
        futures = [
            await session.submit([b"%d.%d" % (i, j) for j in range(n)]) for i, n in enumerate(sizes)
        ]
        acks = [await f for f in futures]
    expected_start = 0
    for ack, size in zip(acks, sizes, strict=True):
        assert ack.start.seq_num == expected_start
        assert ack.end.seq_num - ack.start.seq_num == size
        assert ack.tail.seq_num >= ack.end.seq_num
        expected_start = ack.end.seq_num
    assert (await client.stream(BASIN, "pipe").check_tail()).seq_num == sum(sizes)


async def test_failed_batch_ends_session_and_applies_nothing_after(client: S2SClient) -> None:
    await client.create_stream(BASIN, "midfail")
    session = client.stream(BASIN, "midfail").append_session()
    first = await session.submit([b"ok-1"], match_seq_num=0)
    second = await session.submit([b"ok-2"], match_seq_num=1)
    bad = await session.submit([b"bad"], match_seq_num=99)
    later = []
    for i in range(3):
        try:
            later.append(await session.submit([b"late-%d" % i]))
        except S2SError:
            break  # the failure already ended the session: it refuses new batches at once
    assert (await first).end.seq_num == 1 and (await second).end.seq_num == 2
    # The typed error survives the writes racing the session's end (the server drains them).
    with pytest.raises(SeqNumMismatchError) as info:
        await bad
    assert info.value.expected_seq_num == 2
    for future in later:
        with pytest.raises(SeqNumMismatchError):
            await future
    await session.close()
    assert await read_bodies(client, "midfail") == [b"ok-1", b"ok-2"]


async def test_failed_condition_in_session_is_typed(client: S2SClient) -> None:
    await client.create_stream(BASIN, "midfail-typed")
    session = client.stream(BASIN, "midfail-typed").append_session()
    assert (await session.append([b"ok-1"], match_seq_num=0)).end.seq_num == 1
    with pytest.raises(SeqNumMismatchError) as info:
        await session.append([b"bad"], match_seq_num=99)
    assert info.value.expected_seq_num == 1
    with pytest.raises(SeqNumMismatchError):
        await session.submit([b"after"])
    await session.close()
    assert await read_bodies(client, "midfail-typed") == [b"ok-1"]


async def test_invalid_batch_in_session_is_rejected(client: S2SClient) -> None:
    await client.create_stream(BASIN, "badbatch")
    session = client.stream(BASIN, "badbatch").append_session()
    good = await session.submit([b"fine"])
    empty = await session.submit(pb.AppendInput())
    assert (await good).end.seq_num == 1
    with pytest.raises(S2SError) as info:
        await empty
    assert info.value.code == "invalid"
    await session.close()


async def test_racing_producers_win_each_seq_num_once(client: S2SClient) -> None:
    await client.create_stream(BASIN, "race")
    stream = client.stream(BASIN, "race")
    wins: dict[int, int] = {}

    async def producer(index: int) -> None:
        expected = 0
        for _ in range(15):
            while True:
                try:
                    ack = await stream.append([b"p%d" % index], match_seq_num=expected)
                except SeqNumMismatchError as mismatch:
                    expected = mismatch.expected_seq_num
                    continue
                assert ack.start.seq_num not in wins
                wins[ack.start.seq_num] = index
                expected = ack.end.seq_num
                break

    await asyncio.gather(*(producer(i) for i in range(8)))
    assert sorted(wins) == list(range(8 * 15))
    assert await read_bodies(client, "race") == [b"p%d" % wins[s] for s in range(8 * 15)]


async def test_fencing_handover(client: S2SClient) -> None:
    await client.create_stream(BASIN, "lease")
    stream = client.stream(BASIN, "lease")
    await stream.append([fence_record("writer-a")], fencing_token="")
    await stream.append([b"a1"], fencing_token="writer-a")
    # B takes over: it fences with the current token, then only B's token is accepted.
    await stream.append([fence_record("writer-b")], fencing_token="writer-a")
    with pytest.raises(FencingTokenMismatchError) as info:
        await stream.append([b"a2"], fencing_token="writer-a")
    assert info.value.current_token == "writer-b"
    await stream.append([b"b1"], fencing_token="writer-b")
    bodies = await read_bodies(client, "lease")
    assert bodies == [b"writer-a", b"a1", b"writer-b", b"b1"]


async def test_producer_assigns_each_record_its_seq_num(client: S2SClient) -> None:
    await client.create_stream(BASIN, "prod")
    async with client.stream(BASIN, "prod").producer(linger_s=0.002) as producer:
        futures = [await producer.append(b"rec-%d" % i) for i in range(3000)]
    seq_nums = [await f for f in futures]
    assert seq_nums == list(range(3000))
    assert await read_bodies(client, "prod") == [b"rec-%d" % i for i in range(3000)]


def flood_body(batch_id: int, index: int) -> bytes:
    return b"%d:%d" % (batch_id, index)


async def flood_until_server_stops(
    target: str, stream: str, batch_records: Callable[[int], int], stop: Callable[[], object]
) -> list[tuple[int, int, int]]:
    """Append batches over one session until the server goes away (`stop` runs after 1.5 s).

    Returns (batch id, start, end) of every batch whose ack arrived.
    """
    acked: list[tuple[int, int, int]] = []
    async with S2SClient(target) as client:
        await client.create_basin(BASIN)
        await client.create_stream(BASIN, stream)
        session = client.stream(BASIN, stream).append_session(inflight_batches_max=32)

        async def watch(batch_id: int, future: asyncio.Future[pb.AppendAck]) -> None:
            ack = await future
            acked.append((batch_id, ack.start.seq_num, ack.end.seq_num))

        watchers = []
        asyncio.get_running_loop().call_later(1.5, stop)
        try:
            for batch_id in range(100_000):
                bodies = [flood_body(batch_id, j) for j in range(batch_records(batch_id))]
                watchers.append(
                    asyncio.ensure_future(watch(batch_id, await session.submit(bodies)))
                )
        except S2SError:
            pass  # the server went away under us: expected
        await asyncio.gather(*watchers, return_exceptions=True)
        await session.close()
    assert acked, "the server stopped before it acknowledged anything"
    return acked


def assert_acked_batches_whole(bodies: list[bytes], acked: list[tuple[int, int, int]]) -> None:
    """Every acknowledged batch is in the stream, whole, where its ack put it."""
    for batch_id, start, end in acked:
        assert bodies[start:end] == [flood_body(batch_id, j) for j in range(end - start)]


async def test_kill9_during_session_flood_loses_no_ack(tmp_path: Path) -> None:
    data_dir = str(tmp_path / "data")
    server = ServerProcess(data_dir).start()
    acked = await flood_until_server_stops(
        server.target, "flood", lambda batch_id: 1 + batch_id % 50, server.kill
    )
    restarted = ServerProcess(data_dir).start()
    try:
        async with S2SClient(restarted.target) as client:
            bodies = await read_bodies(client, "flood")
            assert_acked_batches_whole(bodies, acked)
            # Whatever survived beyond the acks is whole batches, and numbering continues.
            ack = await client.stream(BASIN, "flood").append([b"after-restart"])
            assert ack.start.seq_num == len(bodies)
    finally:
        restarted.stop()


async def test_read_session_resumes_after_server_restart(tmp_path: Path) -> None:
    data_dir = str(tmp_path / "data")
    server = ServerProcess(data_dir).start()
    port = server.grpc_port
    try:
        async with S2SClient(server.target, retries=50, backoff_s=0.05) as client:
            await client.create_basin(BASIN)
            await client.create_stream(BASIN, "resume")
            stream = client.stream(BASIN, "resume")
            await stream.append([b"r0", b"r1"])
            received: list[int] = []

            async def follow() -> None:
                async for batch in stream.read_session(seq_num=0):
                    received.extend(r.seq_num for r in batch.records)
                    if len(received) >= 4:
                        return

            follower = asyncio.create_task(follow())
            while len(received) < 2:
                await asyncio.sleep(0.05)
            server.kill()
            server = ServerProcess(data_dir, grpc_port=port).start()
            await stream.check_tail()  # retried until the channel reconnects; appends are not
            await stream.append([b"r2", b"r3"])
            await asyncio.wait_for(follower, 30)
            assert received == [0, 1, 2, 3]
    finally:
        server.stop()


async def test_sigterm_during_session_flood_exits_cleanly_and_keeps_acks(tmp_path: Path) -> None:
    data_dir = str(tmp_path / "data")
    server = ServerProcess(data_dir).start()
    assert server.process is not None
    acked = await flood_until_server_stops(
        server.target, "term", lambda _: 10, server.process.terminate
    )
    assert server.process.wait(30) == 0, "".join(server.log)
    restarted = ServerProcess(data_dir).start()
    try:
        async with S2SClient(restarted.target) as client:
            bodies = await read_bodies(client, "term")
            for batch_id, start, end in acked:
                assert bodies[start:end] == [flood_body(batch_id, j) for j in range(10)]
    finally:
        restarted.stop()
