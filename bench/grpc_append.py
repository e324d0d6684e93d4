"""gRPC append benchmarks: our server against a bare gRPC echo server (the transport ceiling).

    .venv/bin/python bench/grpc_append.py [--seconds 5] [--only NAMES]

Both servers run as separate processes on 127.0.0.1 and are driven by the same client
(`client.S2SClient`). The echo server implements StreamService's AppendSession and Append by
answering each input at once, with no storage: what the Python gRPC transport alone allows.
It checks no conditions, so its `conditional` and `conditional-session` figures are the rates of
sequential unary and session round trips. Each scenario also reports the CPU each side used
while it ran, in cores: the server process (all threads) and this client process.

Scenarios:
  session-1000x1k   AppendSession, 1000 x 1 KiB batches, 16 in flight (MiB/s)
  session-1rec      AppendSession, 1-record batches, 16 in flight, one session (acks/s)
  sessions16-1rec   16 sessions of 1-record batches, 16 in flight each (records/s)
  producer          one Producer (idempotent, the default), single 1 KiB records (records/s)
  producer-idempotence  the Producer with idempotence on and off, alternating (records/s each,
                    and on/off; the target is 0.9 or more)
  unary-1000rps     unary Append of 1 record paced at 1,000/s (ack latency p50/p99)
  conditional       sequential unary appends with match_seq_num (appends/s)
  conditional-session  the same through one AppendSession, one append in flight (appends/s)
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchlib import percentile, probe, process_cpu_s, start_process  # noqa: E402

from client import S2SClient  # noqa: E402
from s2s import allocator  # noqa: E402
from s2s.v1 import records_pb2 as pb  # noqa: E402
from s2s.v1 import services_pb2 as spb  # noqa: E402
from tests.server_process import ServerProcess  # noqa: E402

BASIN = "bench-basin"
RECORD = b"x" * 1024
MIB = 1024 * 1024


# --- the echo server --------------------------------------------------------------------------


def _echo_ack(count: int, seq: list[int]) -> pb.AppendAck:
    start = seq[0]
    seq[0] += count
    return pb.AppendAck(
        start=pb.StreamPosition(seq_num=start),
        end=pb.StreamPosition(seq_num=seq[0]),
        tail=pb.StreamPosition(seq_num=seq[0]),
    )


async def run_echo_server(port_file: str) -> None:
    seq = [0]

    async def append(request: spb.AppendRequest, context: Any) -> spb.AppendResponse:
        return spb.AppendResponse(ack=_echo_ack(len(request.input.records), seq))

    async def append_session(
        requests: AsyncIterator[spb.AppendSessionRequest], context: Any
    ) -> AsyncIterator[spb.AppendSessionResponse]:
        async for request in requests:
            yield spb.AppendSessionResponse(ack=_echo_ack(len(request.input.records), seq))

    async def check_tail(request: spb.CheckTailRequest, context: Any) -> spb.CheckTailResponse:
        return spb.CheckTailResponse(tail=pb.StreamPosition(seq_num=seq[0]))

    server = aio.server(options=[("grpc.max_receive_message_length", 8 * MIB)])
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "s2s.v1.StreamService",
                {
                    "CheckTail": grpc.unary_unary_rpc_method_handler(
                        check_tail,
                        request_deserializer=spb.CheckTailRequest.FromString,
                        response_serializer=spb.CheckTailResponse.SerializeToString,
                    ),
                    "Append": grpc.unary_unary_rpc_method_handler(
                        append,
                        request_deserializer=spb.AppendRequest.FromString,
                        response_serializer=spb.AppendResponse.SerializeToString,
                    ),
                    "AppendSession": grpc.stream_stream_rpc_method_handler(
                        append_session,
                        request_deserializer=spb.AppendSessionRequest.FromString,
                        response_serializer=spb.AppendSessionResponse.SerializeToString,
                    ),
                },
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    Path(port_file).write_text(str(port))
    await server.wait_for_termination()


# --- scenarios ----------------------------------------------------------------------------------


async def session_flood(
    client: S2SClient, stream: str, records: int, seconds: float, sessions: int = 1
) -> dict[str, float]:
    message = pb.AppendInput(records=[pb.AppendRecord(body=RECORD) for _ in range(records)])
    deadline = time.perf_counter() + seconds
    acked = [0]

    async def one(index: int) -> None:
        async with client.stream(BASIN, f"{stream}-{index}").append_session(16) as session:
            while time.perf_counter() < deadline:
                future = await session.submit(message)
                future.add_done_callback(lambda _: acked.__setitem__(0, acked[0] + 1))

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(sessions)))
    elapsed = time.perf_counter() - start
    return {
        "batches_s": acked[0] / elapsed,
        "records_s": acked[0] * records / elapsed,
        "mib_s": acked[0] * records * len(RECORD) / elapsed / MIB,
    }


async def producer_flood(
    client: S2SClient, seconds: float, idempotent: bool = True, stream: str = "producer-0"
) -> dict[str, float]:
    deadline = time.perf_counter() + seconds
    count = 0
    start = time.perf_counter()
    async with client.stream(BASIN, stream).producer(idempotent=idempotent) as producer:
        last: asyncio.Future[int] | None = None
        while time.perf_counter() < deadline:
            for _ in range(100):
                last = await producer.append(RECORD)
                count += 1
        assert last is not None
    await last
    elapsed = time.perf_counter() - start
    return {"records_s": count / elapsed}


async def producer_idempotence(client: S2SClient, seconds: float) -> dict[str, float]:
    """The Producer with idempotence on and off, in the order on, off, off, on (a quarter of
    `seconds` each), so that warming up and a drift of the machine's speed hit both alike; the
    rates are the means of each."""
    rates: dict[bool, list[float]] = {True: [], False: []}
    for idempotent in (True, False, False, True):
        stream = "producer-1" if idempotent else "producer-2"
        run = await producer_flood(client, seconds / 4, idempotent, stream)
        rates[idempotent].append(run["records_s"])
    on, off = statistics.mean(rates[True]), statistics.mean(rates[False])
    return {"on_records_s": on, "off_records_s": off, "on_off": on / off}


async def paced_unary(client: S2SClient, rate: float, seconds: float) -> dict[str, float]:
    stream = client.stream(BASIN, "unary-0")
    latencies: list[float] = []
    interval = 1.0 / rate
    start = time.perf_counter()
    tasks = []

    async def one() -> None:
        began = time.perf_counter()
        await stream.append([RECORD])
        latencies.append(time.perf_counter() - began)

    for i in range(int(rate * seconds)):
        delay = start + i * interval - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one()))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    return {
        "acks_s": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 50) * 1e3,
        "p99_ms": percentile(latencies, 99) * 1e3,
    }


async def _one_at_a_time(
    append: Callable[..., Awaitable[pb.AppendAck]], next_seq: int, seconds: float
) -> dict[str, float]:
    """Conditional appends, each sent once the previous one is acknowledged."""
    deadline = time.perf_counter() + seconds
    count = 0
    start = time.perf_counter()
    while time.perf_counter() < deadline:
        ack = await append([RECORD], match_seq_num=next_seq)
        next_seq = ack.end.seq_num
        count += 1
    return {"appends_s": count / (time.perf_counter() - start)}


async def conditional(client: S2SClient, seconds: float) -> dict[str, float]:
    stream = client.stream(BASIN, "conditional-0")
    return await _one_at_a_time(stream.append, (await stream.check_tail()).seq_num, seconds)


async def conditional_session(client: S2SClient, seconds: float) -> dict[str, float]:
    stream = client.stream(BASIN, "conditional-1")
    next_seq = (await stream.check_tail()).seq_num
    async with stream.append_session(1) as session:
        return await _one_at_a_time(session.append, next_seq, seconds)


SCENARIOS: dict[str, Callable[[S2SClient, float], Awaitable[dict[str, float]]]] = {
    "session-1000x1k": lambda c, s: session_flood(c, "big", 1000, s),
    "session-1rec": lambda c, s: session_flood(c, "small", 1, s),
    "sessions16-1rec": lambda c, s: session_flood(c, "many", 1, s, sessions=16),
    "producer": producer_flood,
    "producer-idempotence": producer_idempotence,
    "unary-1000rps": lambda c, s: paced_unary(c, 1000, s),
    "conditional": conditional,
    "conditional-session": conditional_session,
}


# --- driver ---------------------------------------------------------------------------------


async def run_against(
    port: int, server_pid: int, names: list[str], seconds: float, s2s: bool
) -> dict[str, Any]:
    """Each scenario's figures, plus the CPU each side used while it ran, in cores (all threads
    of the server process; all of this process's): with both sides on the same two cores, what
    an operation costs in CPU says how far a rate can go, and drifts less than the rate."""
    results: dict[str, Any] = {}
    async with S2SClient(f"127.0.0.1:{port}") as client:
        if s2s:
            await client.create_basin(BASIN)
            for stream in ("big", "small", "many", "producer", "unary", "conditional"):
                for index in range(16):
                    await client.create_stream(BASIN, f"{stream}-{index}")
        # The load generator's own full collections would count as server latency.
        gc.freeze()
        for name in names:
            server_cpu, client_cpu = process_cpu_s(server_pid), time.process_time()
            start = time.perf_counter()
            results[name] = await SCENARIOS[name](client, seconds)
            elapsed = time.perf_counter() - start
            results[name]["server_cores"] = (process_cpu_s(server_pid) - server_cpu) / elapsed
            results[name]["client_cores"] = (time.process_time() - client_cpu) / elapsed
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--only", default=",".join(SCENARIOS))
    parser.add_argument("--echo-server", metavar="PORT_FILE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    # The load generator and the echo server get the server's allocator settings. With glibc's
    # defaults, each new 1 MiB request buffer is page-faulted and zeroed again: ~2 ms of kernel
    # time per batch in the client, taken from the two cores the server runs on.
    allocator.tune()
    if args.echo_server:
        asyncio.run(run_echo_server(args.echo_server))
        return
    names = args.only.split(",")
    scratch = tempfile.mkdtemp(prefix="s2s-bench-grpc-")
    try:
        print(probe(scratch), flush=True)
        port_file = os.path.join(scratch, "echo.port")
        echo, echo_port = start_process(
            [sys.executable, __file__, "--echo-server", port_file], port_file
        )
        try:
            ceiling = asyncio.run(run_against(echo_port, echo.pid, names, args.seconds, s2s=False))
        finally:
            echo.kill()
            echo.wait()
        server = ServerProcess(os.path.join(scratch, "data")).start()
        try:
            assert server.process is not None
            ours = asyncio.run(
                run_against(server.grpc_port, server.process.pid, names, args.seconds, s2s=True)
            )
        finally:
            server.stop()
        for name in names:
            print(f"{name}:")
            print("  s2s (durable): " + _fmt(ours.get(name)))
            print("  echo ceiling:  " + _fmt(ceiling.get(name)))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _fmt(result: dict[str, float] | None) -> str:
    if result is None:
        return "n/a"
    return ", ".join(
        f"{key} {value:,.2f}" if key.endswith(("_cores", "on_off")) else f"{key} {value:,.1f}"
        for key, value in result.items()
    )


if __name__ == "__main__":
    main()
