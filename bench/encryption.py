"""Encryption's cost: 1000 x 1 KiB append sessions into plaintext, AEGIS-256 and AES-256-GCM
streams, side by side in one run.

    .venv/bin/python bench/encryption.py [--seconds 5] [--rounds 4]

One `s2s serve` process (data in a temporary directory) and three basins: no cipher,
`aegis-256`, `aes-256-gcm`. Each round runs the same session against each of the three
streams in turn (the order rotates every round, so the VM's drift falls on all three alike),
for `--seconds` each:

  grpc     gRPC AppendSession with our client (`client.S2SClient`), 16 batches in flight
  sdk      S2S append session through the official SDK (HTTP/2), as bench/http_append.py

Printed per transport and cipher: the median MiB/s over the rounds, its ratio to plaintext's
median, and the server's CPU per batch (all its threads, from /proc), which drifts less than
throughput. Then the server-side work alone, in process: sealing (append) and opening (read)
one 1000 x 1 KiB batch, median of 200 runs, in microseconds.
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
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchlib import probe, process_cpu_s  # noqa: E402
from s2_sdk import S2, AppendInput, BasinConfig, Encryption, Endpoints, Record  # noqa: E402

from client import S2SClient  # noqa: E402
from s2s import allocator  # noqa: E402
from s2s.encryption_key import EncryptionKey  # noqa: E402
from s2s.records import validate_append_input  # noqa: E402
from s2s.v1 import records_pb2 as pb  # noqa: E402
from s2s.wire import record_entries  # noqa: E402
from server.encryption import open_entries, record_cipher, seal_batch, stream_identity  # noqa: E402
from tests.server_process import ServerProcess  # noqa: E402

RECORD = b"x" * 1024
BATCH_RECORDS = 1000
MIB = 1024 * 1024
KEY = os.urandom(32)
CIPHERS: dict[str, Encryption | None] = {
    "plaintext": None,
    "aegis-256": Encryption.AEGIS_256,
    "aes-256-gcm": Encryption.AES_256_GCM,
}


def _basin(cipher: str) -> str:
    return f"bench-{cipher.replace('-', '')}"


async def grpc_session(target: str, cipher: str, seconds: float, pid: int) -> tuple[float, float]:
    message = pb.AppendInput(records=[pb.AppendRecord(body=RECORD)] * BATCH_RECORDS)
    acked = [0]
    async with S2SClient(target) as client:
        key = None if cipher == "plaintext" else KEY
        stream = client.stream(_basin(cipher), "grpc", encryption_key=key)
        server_cpu = process_cpu_s(pid)
        start = time.perf_counter()
        deadline = start + seconds
        async with stream.append_session(16) as session:
            while time.perf_counter() < deadline:
                future = await session.submit(message)
                future.add_done_callback(lambda _: acked.__setitem__(0, acked[0] + 1))
        elapsed = time.perf_counter() - start
    cpu_ms = (process_cpu_s(pid) - server_cpu) / acked[0] * 1e3
    return acked[0] * BATCH_RECORDS * len(RECORD) / elapsed / MIB, cpu_ms


async def sdk_session(sdk: S2, cipher: str, seconds: float, pid: int) -> tuple[float, float]:
    key = None if cipher == "plaintext" else KEY
    stream = sdk.basin(_basin(cipher)).stream("sdk", encryption_key=key)
    batch = AppendInput(records=[Record(body=RECORD) for _ in range(BATCH_RECORDS)])
    submitted = 0
    server_cpu = process_cpu_s(pid)
    start = time.perf_counter()
    deadline = start + seconds
    async with stream.append_session() as session:
        last = None
        while time.perf_counter() < deadline:
            last = await session.submit(batch)
            submitted += 1
        assert last is not None
        await last
    elapsed = time.perf_counter() - start
    cpu_ms = (process_cpu_s(pid) - server_cpu) / submitted * 1e3
    return submitted * BATCH_RECORDS * len(RECORD) / elapsed / MIB, cpu_ms


async def run(
    server: ServerProcess, seconds: float, rounds: int
) -> dict[str, list[tuple[float, float]]]:
    assert server.process is not None
    pid = server.process.pid
    results: dict[str, list[tuple[float, float]]] = {}
    endpoints = Endpoints(account=server.http_url, basin=server.http_url)
    async with S2("unused-token", endpoints=endpoints) as sdk:
        for cipher, algorithm in CIPHERS.items():
            await sdk.create_basin(_basin(cipher), config=BasinConfig(stream_cipher=algorithm))
            for name in ("grpc", "sdk"):
                await sdk.basin(_basin(cipher)).create_stream(name)
        gc.freeze()
        order = list(CIPHERS)
        for round_index in range(rounds):
            rotated = order[round_index % 3 :] + order[: round_index % 3]
            for cipher in rotated:
                grpc_figures = await grpc_session(server.target, cipher, seconds, pid)
                results.setdefault(f"grpc {cipher}", []).append(grpc_figures)
                sdk_figures = await sdk_session(sdk, cipher, seconds, pid)
                results.setdefault(f"sdk {cipher}", []).append(sdk_figures)
            print(f"round {round_index + 1}/{rounds} done", flush=True)
    return results


def in_process() -> dict[str, tuple[float, float]]:
    """Median microseconds to seal and to open one 1000 x 1 KiB batch, per cipher."""
    batch = validate_append_input(
        pb.AppendInput(records=[pb.AppendRecord(body=RECORD)] * BATCH_RECORDS)
    )
    aad = stream_identity("bench-basin", "stream")
    figures = {}
    for name in ("aegis-256", "aes-256-gcm"):
        cipher = record_cipher(name, EncryptionKey.from_bytes(KEY))
        assert cipher is not None
        seal_us, open_us = [], []
        for _ in range(200):
            began = time.perf_counter()
            sealed = seal_batch(batch, cipher, aad)
            seal_us.append((time.perf_counter() - began) * 1e6)
            chunks, _ = record_entries(sealed.bodies, sealed.headed, 1, [1] * BATCH_RECORDS)
            stored = b"".join(chunks)
            began = time.perf_counter()
            open_entries(stored, cipher, aad)
            open_us.append((time.perf_counter() - began) * 1e6)
        figures[name] = (statistics.median(seal_us), statistics.median(open_us))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    allocator.tune()
    scratch = tempfile.mkdtemp(prefix="s2s-bench-encryption-")
    try:
        print(probe(scratch), flush=True)
        server = ServerProcess(os.path.join(scratch, "data")).start()
        try:
            results = asyncio.run(run(server, args.seconds, args.rounds))
        finally:
            server.stop()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for transport in ("grpc", "sdk"):
        plain = statistics.median(mib for mib, _ in results[f"{transport} plaintext"])
        for cipher in CIPHERS:
            runs = results[f"{transport} {cipher}"]
            mib = statistics.median(m for m, _ in runs)
            cpu = statistics.median(c for _, c in runs)
            each = " ".join(f"{m:.0f}" for m, _ in runs)
            print(
                f"{transport:4} {cipher:11} median {mib:6.1f} MiB/s (x{mib / plain:.2f} of "
                f"plaintext; rounds: {each}); server CPU {cpu:.2f} ms/batch"
            )
    for name, (seal_us, open_us) in in_process().items():
        print(
            f"in process, {name}: seal {seal_us:,.0f} us, open {open_us:,.0f} us per 1000 x 1 KiB"
        )


if __name__ == "__main__":
    main()
