"""What access control costs: the same appends against a server with auth on and with
`--no-auth`, alternating, in one run.

    .venv/bin/python bench/auth_cost.py [--seconds 5] [--pairs 4]

Each pair starts one server with auth on and one without, one after the other (which goes
first alternates between pairs), each on a fresh data directory. With auth on, the appends
carry a scoped token (`basins: {"exact": "bench-basin"}`, streams by prefix, the stream group's
read and write), so every call is authenticated and checked as a real client's would be;
without, they carry none. Scenarios (the same code as bench/grpc_append.py and
bench/http_append.py):

  grpc-session-1000x1k  AppendSession, 1000 x 1 KiB batches, 16 in flight (MiB/s)
  grpc-unary-500rps     unary Append of one 1 KiB record, paced at 500/s (ack latency p50)
  grpc-unary-serial     unary Appends of one 1 KiB record, each sent when the previous is
                        acknowledged, for --seconds (ack latency p50, and the server's
                        CPU time per call: less noisy than latency on this VM)
  sdk-session-1000x1k   the official SDK's S2S append session, 1000 x 1 KiB (MiB/s)
  sdk-unary-500rps      the official SDK's unary append, open loop at 500/s (p50)

Targets (issue 14): auth costs at most 3% of the session throughput and at most 50 us of the
unary p50. On a 2-core VM whose speed drifts, end-to-end medians move by more than that
between identical runs, so the run ends with the server's own CPU cost of access control,
timed in-process over 100,000 calls (nothing else running): per unary call, authenticating
the `authorization` header and checking the append (`AccessTokens.authenticate`,
`ScopedStore`, `Principal.require`); per session batch, the check alone (the session
authenticated once).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import grpc_append  # noqa: E402
import http_append  # noqa: E402
from benchlib import probe, process_cpu_s  # noqa: E402
from s2_sdk import S2, Endpoints  # noqa: E402

from client import S2SClient  # noqa: E402
from s2s import allocator  # noqa: E402
from s2s.v1 import access_pb2 as apb  # noqa: E402
from server.access.scope import scope_from_json  # noqa: E402
from server.access.tokens import IssueRequest  # noqa: E402
from server.scoped_store import ScopedStore  # noqa: E402
from server.streamstore import StreamStore  # noqa: E402
from tests.server_process import ServerProcess  # noqa: E402

BASIN = grpc_append.BASIN
assert BASIN == http_append.BASIN
STREAMS = ("session-0", "unary-0", "sdk-session", "sdk-unary")
RW = apb.ReadWritePermissions(read=True, write=True)


async def _set_up(server: ServerProcess, auth: bool) -> str | None:
    """The basin and streams; with auth, a scoped token for the appends."""
    root = server.root_token if auth else None
    async with S2SClient(server.target, access_token=root) as client:
        await client.create_basin(BASIN)
        for stream in STREAMS:
            await client.create_stream(BASIN, stream)
        if not auth:
            return None
        scope = apb.AccessTokenScope(
            basins=apb.ResourceSet(exact=BASIN),
            streams=apb.ResourceSet(prefix=""),
            op_groups=apb.PermittedOperationGroups(stream=RW),
        )
        return await client.issue_access_token(apb.AccessTokenInfo(id="bench", scope=scope))


async def _measure(server: ServerProcess, auth: bool, seconds: float) -> dict[str, float]:
    token = await _set_up(server, auth)
    assert server.process is not None
    gc.freeze()
    results: dict[str, float] = {}
    async with S2SClient(server.target, access_token=token) as client:
        server_cpu = process_cpu_s(server.process.pid)
        session = await grpc_append.session_flood(client, "session", 1000, seconds)
        results["grpc-session-1000x1k MiB/s"] = session["mib_s"]
        batches = session["batches_s"] * seconds
        server_ms = (process_cpu_s(server.process.pid) - server_cpu) / batches * 1e3
        results["grpc-session server CPU ms/batch"] = server_ms
        unary = await grpc_append.paced_unary(client, 500.0, seconds)
        results["grpc-unary-500rps p50 ms"] = unary["p50_ms"]
        serial_p50_ms, server_us = await _serial_unary(client, seconds, server.process.pid)
        results["grpc-unary-serial p50 ms"] = serial_p50_ms
        results["grpc-unary-serial server CPU us/call"] = server_us
    endpoints = Endpoints(account=server.http_url, basin=server.http_url)
    async with S2(token or "unused-token", endpoints=endpoints) as sdk:
        sdk_session = await http_append.sdk_session(sdk, "sdk-session", seconds, server.process.pid)
        results["sdk-session-1000x1k MiB/s"] = sdk_session["mib_s"]
        results["sdk-session server CPU ms/batch"] = sdk_session["server_cpu_ms_per_batch"]
        sdk_unary = await http_append.sdk_unary(sdk, "sdk-unary", seconds)
        results["sdk-unary-500rps p50 ms"] = sdk_unary["p50_ms"]
    return results


async def _serial_unary(client: S2SClient, seconds: float, server_pid: int) -> tuple[float, float]:
    """Ack latency p50 (ms) and the server's CPU time per call (us)."""
    stream = client.stream(BASIN, "unary-0")
    latencies: list[float] = []
    server_cpu = process_cpu_s(server_pid)
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        began = time.perf_counter()
        await stream.append([grpc_append.RECORD])
        latencies.append(time.perf_counter() - began)
    server_s = process_cpu_s(server_pid) - server_cpu
    return statistics.median(latencies) * 1e3, server_s / len(latencies) * 1e6


async def _check_cost(directory: str) -> dict[str, float]:
    """Microseconds of server CPU that access control adds per unary call and per batch."""
    store = await StreamStore.open(directory)
    try:
        path = await store.access_tokens.bootstrap_root(directory)
        assert path is not None
        root = store.access_tokens.authenticate(f"Bearer {path.read_text().strip()}")
        scope = scope_from_json(
            {
                "basins": {"exact": BASIN},
                "streams": {"prefix": ""},
                "op_groups": {"stream": {"read": True, "write": True}},
            }
        )
        secret = await store.access_tokens.issue(root, IssueRequest(id="bench", scope=scope))
        header = f"Bearer {secret}"
        calls = 100_000
        start = time.perf_counter()
        for _ in range(calls):
            principal = store.access_tokens.authenticate(header)
            ScopedStore(store, principal)
            principal.require("append", basin=BASIN, stream="session-0")
        per_call = (time.perf_counter() - start) / calls
        start = time.perf_counter()
        for _ in range(calls):
            principal.require("append", basin=BASIN, stream="session-0")
        per_batch = (time.perf_counter() - start) / calls
    finally:
        await store.close()
    return {"per unary call us": per_call * 1e6, "per session batch us": per_batch * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--pairs", type=int, default=4)
    args = parser.parse_args()
    allocator.tune()
    scratch = tempfile.mkdtemp(prefix="s2s-bench-auth-")
    runs: dict[bool, list[dict[str, float]]] = {True: [], False: []}
    try:
        print(probe(scratch), flush=True)
        for pair in range(args.pairs):
            order = (True, False) if pair % 2 == 0 else (False, True)
            for auth in order:
                data_dir = str(Path(scratch) / f"data-{pair}-{auth}")
                server = ServerProcess(data_dir, auth=auth).start()
                try:
                    result = asyncio.run(_measure(server, auth, args.seconds))
                finally:
                    server.stop()
                runs[auth].append(result)
                label = "auth on " if auth else "auth off"
                print(
                    f"pair {pair + 1} {label}: "
                    + ", ".join(f"{k} {v:,.2f}" for k, v in result.items()),
                    flush=True,
                )
        cost = asyncio.run(_check_cost(str(Path(scratch) / "in-process")))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print("access control's server CPU: " + ", ".join(f"{k} {v:.2f}" for k, v in cost.items()))
    print("medians:")
    for key in runs[True][0]:
        on = statistics.median(run[key] for run in runs[True])
        off = statistics.median(run[key] for run in runs[False])
        change = (on - off) / off * 100
        print(f"  {key}: auth on {on:,.3f}, off {off:,.3f} ({change:+.1f}%)")


if __name__ == "__main__":
    main()
