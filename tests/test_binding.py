"""Both ports listen exactly at `--host`, over real sockets: the server's listening sockets as
the kernel lists them (`/proc/net/tcp`, `/proc/net/tcp6`, only the server process's own),
which loopback addresses accept a connection, and real gRPC and HTTP calls over each.

Before the fix, `--host 0.0.0.0` had gRPC listening on every IPv6 address too (a dual-stack
`[::]` socket) and `--host ::` could not start.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

import httpx
import pytest

from client import S2SClient
from tests.server_process import ServerProcess, environment_without_s2s

V4_LOOPBACK = "127.0.0.1"
V6_LOOPBACK = "::1"

# --host as given -> (where each port listens, whether 127.0.0.1 and ::1 connect)
EXPECTED = {
    "127.0.0.1": ({"127.0.0.1"}, True, False),
    "0.0.0.0": ({"0.0.0.0"}, True, False),
    "::1": ({"::1"}, False, True),
    "[::1]": ({"::1"}, False, True),
    "::": ({"::"}, True, True),
}


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind((V6_LOOPBACK, 0))
    except OSError:
        return False
    return True


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def _proc_address(hex_address: str) -> str:
    """/proc/net/tcp{,6} addresses are 32-bit words in host (little-endian) order; an IPv4
    address on an IPv6 socket (::ffff:a.b.c.d) is reported as the IPv4 address it is."""
    raw = bytes.fromhex(hex_address)
    raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(raw)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def listening_addresses(pid: int, port: int) -> set[str]:
    """The addresses the process's listening TCP sockets on `port` are bound to."""
    inodes = _socket_inodes(pid)
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            next(lines)  # header
            for line in lines:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                hex_address, hex_port = local.split(":")
                if state == "0A" and inode in inodes and int(hex_port, 16) == port:
                    found.add(_proc_address(hex_address))
    return found


def _connects(address: str, port: int) -> bool:
    try:
        socket.create_connection((address, port), timeout=5).close()
    except ConnectionRefusedError:
        return False
    return True


def _host_port(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


async def _calls_succeed(address: str, server: ServerProcess) -> None:
    async with S2SClient(_host_port(address, server.grpc_port), retries=0) as client:
        await client.list_basins()
    async with httpx.AsyncClient() as http:
        response = await http.get(f"http://{_host_port(address, server.http_port)}/v1/basins")
        assert response.status_code == 200, response.text


@pytest.mark.parametrize("host", list(EXPECTED))
async def test_both_ports_listen_exactly_at_host(host: str, tmp_path: Path) -> None:
    if ":" in host and not _has_ipv6_loopback():
        pytest.skip("this machine has no IPv6 loopback (::1)")
    addresses, v4_connects, v6_connects = EXPECTED[host]
    server = ServerProcess(
        str(tmp_path / "data"), extra_args=["--host", host], env=environment_without_s2s()
    ).start()
    try:
        for port in (server.grpc_port, server.http_port):
            assert listening_addresses(server.pid, port) == addresses, (host, port)
            assert _connects(V4_LOOPBACK, port) is v4_connects, (host, port, V4_LOOPBACK)
            if _has_ipv6_loopback():
                assert _connects(V6_LOOPBACK, port) is v6_connects, (host, port, V6_LOOPBACK)
        for address, reachable in ((V4_LOOPBACK, v4_connects), (V6_LOOPBACK, v6_connects)):
            if reachable:
                await _calls_succeed(address, server)
    finally:
        assert server.stop() == 0, "".join(server.log)
    assert "Traceback" not in "".join(server.log)
