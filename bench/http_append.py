"""HTTP append benchmarks: the S2-v1 HTTP API, with the gRPC figure alongside, one server.

    .venv/bin/python bench/http_append.py [--seconds 5]

One `s2s serve` process (`--grpc-port 0 --http-port 0`, 127.0.0.1, data in a temporary
directory) is started; every scenario runs against it, one after the other, for `--seconds`
each. Every append is durable (fsync'd) before its ack. A probe line comes first (1 KiB
append+fdatasync latency and a CPU loop, as in bench/engine.py) because this VM drifts.

Scenarios:
  sdk-session-1000x1k   S2S append session through the official SDK (`s2_sdk`, direct mode:
                        both endpoints are our HTTP origin, the basin goes in `s2-basin`),
                        1000 x 1 KiB batches, pipelined as far as the SDK allows by default
                        (max_unacked_bytes 5 MiB, no batch limit: 5 batches of 1000 x 1 KiB,
                        as the SDK meters them) (batches/s, records/s, MiB/s, and the CPU
                        time per batch of the server process and of this client). Run
                        first against an S2S echo server (`--echo-server`: Hypercorn with
                        the server's HTTP/2 tuning, acking each frame, storing nothing):
                        the ceiling of the SDK, Hypercorn and HTTP/2 on this machine
  sdk-unary-500rps      unary append through the official SDK (`stream.append`, one 1 KiB
                        record, the SDK's own HTTP/2 connection), offered open-loop at 500/s:
                        each append is a task started at its due time i/500 s; latency runs
                        from the due time (acks/s, ack latency p50/p99/max ms)
  http-unary-500rps     unary JSON append, `POST /v1/streams/{s}/records` with
                        `content-type: application/json` and `s2-basin`, one 1 KiB record per
                        request, offered open-loop at 500 requests/s (request i is due at
                        i/500 s; latency runs from the due time, so queueing counts), sent by
                        16 workers over httpx's HTTP/1.1 cleartext keep-alive pool of 16
                        connections (acks/s, ack latency p50/p99 ms). When acks/s falls short
                        of 500 the load is beyond what client plus server sustain and the
                        latencies are mostly queueing; httpx itself is a large share of the
                        cost (its per-request CPU on the same 2-core VM).
  grpc-session-1000x1k  for comparison: gRPC AppendSession with our own client
                        (`client.S2SClient`), 1000 x 1 KiB batches, 16 in flight
                        (batches/s, records/s, MiB/s)
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from hypercorn.asyncio import serve
from hypercorn.config import Config
from s2_sdk import S2, AppendInput, Endpoints, Record

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchlib import percentile, probe, process_cpu_s, start_process  # noqa: E402

from client import S2SClient  # noqa: E402
from s2s import allocator  # noqa: E402
from s2s.v1 import records_pb2 as pb  # noqa: E402
from server.http_frontend import h2_tuning  # noqa: E402
from server.http_frontend.s2s_frames import encode_frame, read_frames  # noqa: E402
from tests.server_process import ServerProcess  # noqa: E402

BASIN = "bench-basin"
RECORD = b"x" * 1024
MIB = 1024 * 1024
BATCH_RECORDS = 1000
GRPC_INFLIGHT = 16
UNARY_RATE = 500.0
UNARY_CONNECTIONS = 16


# --- the S2S echo server ----------------------------------------------------------------------


async def run_echo_server(port_file: str) -> None:
    """Hypercorn, with the server's HTTP/2 tuning, and an S2S append endpoint that acks each
    `AppendInput` frame as it arrives and stores nothing: what the SDK, Hypercorn and HTTP/2
    allow together on this machine, the ceiling for `sdk-session-1000x1k`."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    h2_tuning.install()
    config = Config()
    config.bind = [f"fd://{sock.detach()}"]
    config.accesslog = None
    config.loglevel = "WARNING"
    serving = asyncio.create_task(serve(_echo_app, config))  # type: ignore[arg-type]
    Path(port_file).write_text(str(port))
    await serving


async def _echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["method"] != "POST" or not scope["path"].endswith("/records"):
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return

    async def body_chunks() -> AsyncIterator[bytes]:
        while (message := await receive())["type"] == "http.request":
            yield message.get("body", b"")
            if not message.get("more_body"):
                return

    headers = [(b"content-type", b"s2s/proto")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    seq_num = 0
    async for frame in read_frames(body_chunks()):
        start, seq_num = seq_num, seq_num + len(pb.AppendInput.FromString(frame).records)
        ack = pb.AppendAck(
            start=pb.StreamPosition(seq_num=start),
            end=pb.StreamPosition(seq_num=seq_num),
            tail=pb.StreamPosition(seq_num=seq_num),
        )
        body = encode_frame(ack.SerializeToString(), None)
        await send({"type": "http.response.body", "body": body, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


# --- scenarios ----------------------------------------------------------------------------------


def _throughput(batches: int, elapsed: float) -> dict[str, float]:
    return {
        "batches_s": batches / elapsed,
        "records_s": batches * BATCH_RECORDS / elapsed,
        "mib_s": batches * BATCH_RECORDS * len(RECORD) / elapsed / MIB,
    }


def _open_loop_summary(latencies: list[float], elapsed: float) -> dict[str, float]:
    """Acks/s against the offered rate, and latency from each request's due time."""
    return {
        "offered_s": UNARY_RATE,
        "acks_s": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 50) * 1e3,
        "p99_ms": percentile(latencies, 99) * 1e3,
        "max_ms": max(latencies) * 1e3,
    }


async def sdk_session(
    sdk: S2, stream_name: str, seconds: float, server_pid: int
) -> dict[str, float]:
    """Submits until the deadline, then closes the session (which waits for every ack).

    Also reports the CPU time each side spent per batch (server: the whole process, from
    /proc; client: this process), which drifts less with the VM's speed than throughput."""
    stream = sdk.basin(BASIN).stream(stream_name)
    batch = AppendInput(records=[Record(body=RECORD) for _ in range(BATCH_RECORDS)])
    submitted = 0
    server_cpu, client_cpu = process_cpu_s(server_pid), time.process_time()
    start = time.perf_counter()
    deadline = start + seconds
    async with stream.append_session() as session:
        last = None
        while time.perf_counter() < deadline:
            last = await session.submit(batch)
            submitted += 1
        assert last is not None
        ack = await last
    elapsed = time.perf_counter() - start
    assert ack.end.seq_num == submitted * BATCH_RECORDS
    return {
        **_throughput(submitted, elapsed),
        "server_cpu_ms_per_batch": (process_cpu_s(server_pid) - server_cpu) / submitted * 1e3,
        "client_cpu_ms_per_batch": (time.process_time() - client_cpu) / submitted * 1e3,
    }


async def sdk_unary(sdk: S2, stream_name: str, seconds: float) -> dict[str, float]:
    stream = sdk.basin(BASIN).stream(stream_name)
    record = AppendInput(records=[Record(body=RECORD)])
    for _ in range(UNARY_CONNECTIONS):  # warm-up: the connection and the stream's sequencer
        await stream.append(record)
    total = int(UNARY_RATE * seconds)
    latencies: list[float] = []
    start = time.perf_counter()

    async def append(index: int) -> None:
        due = start + index / UNARY_RATE
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        await stream.append(record)
        latencies.append(time.perf_counter() - due)

    await asyncio.gather(*(append(index) for index in range(total)))
    return _open_loop_summary(latencies, time.perf_counter() - start)


async def http_unary(http_url: str, stream_name: str, seconds: float) -> dict[str, float]:
    """Open loop: request i is due at start + i/rate, whatever happened to the others.

    `UNARY_CONNECTIONS` workers share a pool of as many HTTP/1.1 keep-alive connections and
    take the next due request in turn (sending at once when behind schedule); latency runs from
    the due time, so time spent queued behind a slow server counts (no coordinated omission)
    and httpx's pool is never asked to hold thousands of waiting requests. (HTTP/2 prior
    knowledge works for single requests, but httpx 0.28 raised WriteError under this load.)
    """
    url = f"{http_url}/v1/streams/{stream_name}/records"
    headers = {
        "content-type": "application/json",
        "accept": "application/json",
        "s2-basin": BASIN,
        "authorization": "Bearer unused-token",
    }
    body = b'{"records": [{"body": "' + RECORD + b'"}]}'
    total = int(UNARY_RATE * seconds)
    interval = 1.0 / UNARY_RATE
    latencies: list[float] = []
    next_index = [0]
    limits = httpx.Limits(
        max_connections=UNARY_CONNECTIONS, max_keepalive_connections=UNARY_CONNECTIONS
    )
    async with httpx.AsyncClient(http1=True, http2=False, limits=limits, timeout=30) as http:

        async def post() -> None:
            response = await http.post(url, content=body, headers=headers)
            if response.status_code != 200 or response.http_version != "HTTP/1.1":
                raise RuntimeError(f"append: {response.status_code} {response.http_version}")
            response.json()

        await asyncio.gather(*(post() for _ in range(UNARY_CONNECTIONS)))  # warm-up
        start = time.perf_counter()

        async def worker() -> None:
            while next_index[0] < total:
                due = start + next_index[0] * interval
                next_index[0] += 1
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                await post()
                latencies.append(time.perf_counter() - due)

        await asyncio.gather(*(worker() for _ in range(UNARY_CONNECTIONS)))
        elapsed = time.perf_counter() - start
    return _open_loop_summary(latencies, elapsed)


async def grpc_session(target: str, stream_name: str, seconds: float) -> dict[str, float]:
    message = pb.AppendInput(records=[pb.AppendRecord(body=RECORD) for _ in range(BATCH_RECORDS)])
    acked = [0]
    start = time.perf_counter()
    deadline = start + seconds
    async with S2SClient(target) as client:
        stream = client.stream(BASIN, stream_name)
        async with stream.append_session(GRPC_INFLIGHT) as session:
            while time.perf_counter() < deadline:
                future = await session.submit(message)
                future.add_done_callback(lambda _: acked.__setitem__(0, acked[0] + 1))
    elapsed = time.perf_counter() - start
    return _throughput(acked[0], elapsed)


async def run_all(
    http_url: str, grpc_target: str, seconds: float, server_pid: int
) -> dict[str, dict[str, float]]:
    endpoints = Endpoints(account=http_url, basin=http_url)
    results: dict[str, dict[str, float]] = {}
    async with S2("unused-token", endpoints=endpoints) as sdk:
        await sdk.create_basin(BASIN)
        basin = sdk.basin(BASIN)
        for name in ("sdk-session", "sdk-unary", "http-unary", "grpc-session"):
            await basin.create_stream(name)
        # The load generator's own full collections (~20 ms with the SDK loaded) would be
        # counted as server latency; the server does the same after startup.
        gc.freeze()
        results["sdk-unary-500rps"] = await sdk_unary(sdk, "sdk-unary", seconds)
        results["sdk-session-1000x1k"] = await sdk_session(sdk, "sdk-session", seconds, server_pid)
    results["http-unary-500rps"] = await http_unary(http_url, "http-unary", seconds)
    results["grpc-session-1000x1k"] = await grpc_session(grpc_target, "grpc-session", seconds)
    return results


async def echo_session(echo_url: str, seconds: float, echo_pid: int) -> dict[str, float]:
    async with S2("unused-token", endpoints=Endpoints(account=echo_url, basin=echo_url)) as sdk:
        gc.freeze()
        return await sdk_session(sdk, "sdk-session", seconds, echo_pid)


# --- driver ---------------------------------------------------------------------------------


def _fmt(result: dict[str, float]) -> str:
    return ", ".join(f"{key} {value:,.1f}" for key, value in result.items())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--echo-server", metavar="PORT_FILE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    # The load generator and the echo server get the server's allocator settings. With glibc's
    # defaults, each new 1 MiB request buffer is page-faulted and zeroed again: ~2 ms of kernel
    # time per batch in the client, taken from the two cores the server runs on.
    allocator.tune()
    if args.echo_server:
        asyncio.run(run_echo_server(args.echo_server))
        return
    scratch = tempfile.mkdtemp(prefix="s2s-bench-http-")
    try:
        print(probe(scratch), flush=True)
        port_file = os.path.join(scratch, "echo.port")
        echo, echo_port = start_process(
            [sys.executable, __file__, "--echo-server", port_file], port_file
        )
        try:
            echo_url = f"http://127.0.0.1:{echo_port}"
            ceiling = asyncio.run(echo_session(echo_url, args.seconds, echo.pid))
        finally:
            echo.kill()
            echo.wait()
        server = ServerProcess(os.path.join(scratch, "data")).start()
        try:
            assert server.process is not None
            results = asyncio.run(
                run_all(server.http_url, server.target, args.seconds, server.process.pid)
            )
        finally:
            server.stop()
        for name, result in results.items():
            print(f"{name}: {_fmt(result)}")
            if name == "sdk-session-1000x1k":
                print(f"  echo ceiling: {_fmt(ceiling)}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
