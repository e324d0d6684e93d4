"""kill -9 between a commit and its ack (ADR 0016): the producer's row was committed with its
batch, so after the restart a retry of the batch gets the ack it would have had, on gRPC and
on HTTP, and nothing is written twice; and an idempotent `Producer` writing through the kill
and the restart writes every record exactly once, in order.

The server is `tests/crash/ack_lost_server.py`: armed by SIGUSR1, it kills itself with SIGKILL
right after the first commit holding a producer's row lands, before any ack leaves.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from pathlib import Path

import httpx
import pytest

from client import S2SClient
from client._errors import S2SError
from s2s.records import PRODUCER_HEADER
from s2s.v1 import records_pb2 as pb
from tests.crash.ack_lost_server import ACK_LOST_SERVER, ARMED, KILLED
from tests.lossy_proxy import LossyProxy
from tests.server_process import ServerProcess

BASIN = "kill-ack-basin"
LOG_WAIT_S = 10.0


def producer_record(producer: str, seq: int, body: bytes) -> pb.AppendRecord:
    header = pb.Header(name=PRODUCER_HEADER, value=f"{producer} {seq}".encode())
    return pb.AppendRecord(body=body, headers=[header])


async def logged(server: ServerProcess, line: str) -> None:
    deadline = time.monotonic() + LOG_WAIT_S
    while not any(line in entry for entry in server.log):
        assert time.monotonic() < deadline, f"the server never logged {line!r}"
        await asyncio.sleep(0.01)


async def killed(server: ServerProcess) -> None:
    """Wait until the server died of SIGKILL, having said it killed itself after a commit."""
    assert server.process is not None
    returncode = await asyncio.to_thread(server.process.wait, LOG_WAIT_S)
    assert returncode == -signal.SIGKILL
    await logged(server, KILLED)


def retries_answered(server: ServerProcess) -> int:
    """The server's `s2s_append_retries_total` for the test basin."""
    text = httpx.get(f"{server.http_url}/metrics", timeout=10).text
    match = re.search(rf's2s_append_retries_total{{basin="{BASIN}"}} (\S+)', text)
    return 0 if match is None else int(float(match.group(1)))


async def read_all(client: S2SClient, stream: str) -> list[pb.SequencedRecord]:
    records: list[pb.SequencedRecord] = []
    tail = (await client.stream(BASIN, stream).check_tail()).seq_num
    while len(records) < tail:
        records += (await client.stream(BASIN, stream).read(seq_num=len(records))).records
    return records


async def test_a_retry_after_a_kill_between_commit_and_ack_gets_the_original_ack(
    tmp_path: Path,
) -> None:
    data_dir = str(tmp_path / "data")
    server = ServerProcess(data_dir, command=ACK_LOST_SERVER).start()
    try:
        async with S2SClient(server.target) as client:
            await client.create_basin(BASIN)
            await client.create_stream(BASIN, "s")
            stream = client.stream(BASIN, "s")
            await stream.append([producer_record("p", 0, b"a"), b"b"])
            os.kill(server.pid, signal.SIGUSR1)
            await logged(server, ARMED)
            with pytest.raises(S2SError) as lost:
                await stream.append([producer_record("p", 1, b"c"), b"d"])
            assert lost.value.code == "unavailable"
        await killed(server)
    finally:
        if server.process is not None and server.process.poll() is None:
            server.kill()
    restarted = ServerProcess(data_dir).start()
    try:
        async with S2SClient(restarted.target) as client:
            stream = client.stream(BASIN, "s")
            retried = await stream.append([producer_record("p", 1, b"c"), b"d"])
            records = await read_all(client, "s")
            assert [r.body for r in records] == [b"a", b"b", b"c", b"d"], "written once"
            # The ack it would have had: where the commit before the kill put it.
            assert (retried.start.seq_num, retried.end.seq_num) == (2, 4)
            assert retried.start.timestamp == records[2].timestamp
            assert retried.end.timestamp == records[3].timestamp
        response = httpx.post(
            f"{restarted.http_url}/v1/streams/s/records",
            headers={"s2-basin": BASIN},
            json={"records": [{"body": "c", "headers": [["s2s-producer", "p 1"]]}, {"body": "d"}]},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        ack = response.json()
        assert (ack["start"]["seq_num"], ack["end"]["seq_num"]) == (2, 4)
        assert ack["start"]["timestamp"] == retried.start.timestamp
    finally:
        restarted.stop()


async def test_a_producer_writes_every_record_once_across_a_kill_and_a_restart(
    tmp_path: Path,
) -> None:
    data_dir = str(tmp_path / "data")
    server = ServerProcess(data_dir, command=ACK_LOST_SERVER).start()
    proxy = LossyProxy(server.grpc_port)  # the client's one address across the restart
    port = await proxy.start()
    servers = [server]
    records = 3000
    try:
        async with S2SClient(f"127.0.0.1:{port}") as client:
            await client.create_basin(BASIN)
            await client.create_stream(BASIN, "p")

            async def restart_after_the_kill() -> None:
                await killed(server)
                restarted = await asyncio.to_thread(ServerProcess(data_dir).start)
                servers.append(restarted)
                proxy.upstream_port = restarted.grpc_port

            futures: list[asyncio.Future[int]] = []
            async with client.stream(BASIN, "p").producer(linger_s=0.002) as producer:
                restart: asyncio.Future[None] | None = None
                for i in range(records):
                    futures.append(await producer.append(b"r%d" % i))
                    if i == records // 3:
                        os.kill(server.pid, signal.SIGUSR1)
                        restart = asyncio.ensure_future(restart_after_the_kill())
                    if i % 50 == 0:
                        await asyncio.sleep(0.005)
                assert restart is not None
                await restart
            assert [await future for future in futures] == list(range(records))
            bodies = [r.body for r in await read_all(client, "p")]
            assert bodies == [b"r%d" % i for i in range(records)]
            assert producer.resent_batches > 0
            assert retries_answered(servers[-1]) >= 1, "the batch whose ack the kill took"
    finally:
        await proxy.close()
        for each in servers:
            if each.process is not None and each.process.poll() is None:
                each.stop()
