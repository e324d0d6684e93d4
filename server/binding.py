"""Where the server listens: the `--host` forms accepted, and both frontends' listening sockets
bound exactly at that address.

`--host` is an IP address: IPv4 (`127.0.0.1`, `0.0.0.0`) or IPv6, bare or in brackets (`::1`,
`[::1]`, `::`). A name such as `localhost` is refused: it can resolve to several addresses, and
gRPC would listen on each of them where a socket binds only one.

What an address means, the same for the gRPC and the HTTP port:
- a specific address (`127.0.0.1`, `::1`, `192.0.2.7`): that address only;
- `0.0.0.0`: every IPv4 address, and no IPv6;
- `::`: every address, IPv6 and IPv4 (one dual-stack socket, whatever the system's
  `net.ipv6.bindv6only` says).

gRPC core (1.78) binds any wildcard address, `0.0.0.0` included, by first trying a dual-stack
`[::]:port` socket and binding `0.0.0.0:port` only if that fails (ListenerContainerAddWildcard
Addresses in posix_engine_listener_utils.cc); no option reachable from Python changes that. So
for `0.0.0.0` we hold `[::]:port` ourselves (IPv6 only, listening) while gRPC binds, its
dual-stack attempt fails, and it binds `0.0.0.0:port` alone. An IPv6-only wildcard is out of
gRPC's reach (its fallback is IPv4), which is why `::` means dual-stack for both ports.
ADR 0004 has what was measured.
"""

from __future__ import annotations

import errno
import ipaddress
import socket

import grpc
from grpc import aio

from server.startup import StartupError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

IPV4_ANY = ipaddress.IPv4Address("0.0.0.0")

LISTEN_BACKLOG = 1024

FREE_PORT_ATTEMPTS_MAX = 16
"""For `0.0.0.0` and port 0, tries at a port free on both IPv6 (to hold it) and IPv4 (for
gRPC); a collision needs another process to take the same ephemeral port in between."""


def parse_host(text: str) -> IPAddress:
    """The address `--host` names; ValueError says which forms are accepted."""
    bracketed = text.startswith("[") and text.endswith("]")
    try:
        address = ipaddress.ip_address(text[1:-1] if bracketed else text)
    except ValueError:
        raise ValueError(
            f"{text!r} is not an IP address: use one such as 127.0.0.1, 0.0.0.0 (all IPv4), "
            "::1 or :: (all IPv6 and IPv4)"
        ) from None
    if bracketed and address.version == 4:
        raise ValueError(f"{text!r}: brackets are for IPv6 addresses only, use {address}")
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        # ::ffff:a.b.c.d is reached over IPv4 only: bind it as the IPv4 address it stands for.
        return address.ipv4_mapped
    return address


def host_port(address: IPAddress, port: int) -> str:
    """`127.0.0.1:50051`, `[::1]:50051`: the form gRPC targets and URLs use."""
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


def listening_socket(address: IPAddress, port: int, port_flag: str) -> socket.socket:
    """A socket listening exactly at address:port (port 0: a free one)."""
    sock = _bound_socket(address, port, port_flag)
    try:
        sock.listen(LISTEN_BACKLOG)
    except OSError as error:
        sock.close()
        raise _bind_error(address, port, port_flag, error) from None
    return sock


def add_grpc_port(
    server: aio.Server,
    address: IPAddress,
    port: int,
    port_flag: str,
    credentials: grpc.ServerCredentials | None = None,
) -> int:
    """Make `server` listen exactly at address:port (port 0: a free one), over TLS with
    `credentials`, else in plain text; returns the port."""
    if address == IPV4_ANY:
        return _add_ipv4_wildcard(server, port, port_flag, credentials)
    # gRPC says only "failed to bind"; binding the same address first gives the reason.
    _bound_socket(address, port, port_flag).close()
    return _add(server, address, port, port_flag, credentials)


def _add_ipv4_wildcard(
    server: aio.Server, port: int, port_flag: str, credentials: grpc.ServerCredentials | None
) -> int:
    for _ in range(FREE_PORT_ATTEMPTS_MAX):
        holder = _hold_ipv6_wildcard(port)
        try:
            chosen = port
            if port == 0 and holder is not None:
                # gRPC's IPv4 socket must take the port held on IPv6, or it would go dual-stack
                # on a fresh port.
                chosen = holder.getsockname()[1]
            try:
                _bound_socket(IPV4_ANY, chosen, port_flag).close()
            except StartupError:
                if chosen != port:
                    continue  # the port free on IPv6 is taken on IPv4: hold another
                raise
            return _add(server, IPV4_ANY, chosen, port_flag, credentials)
        finally:
            if holder is not None:
                holder.close()
    raise StartupError(
        f"no port was free on both IPv4 and IPv6 in {FREE_PORT_ATTEMPTS_MAX} tries "
        f"({port_flag} 0): give a port with {port_flag}"
    )


def _hold_ipv6_wildcard(port: int) -> socket.socket | None:
    """`[::]:port`, IPv6 only and listening, so gRPC's dual-stack bind there fails; None if
    IPv6 is unavailable or `[::]:port` is taken, which fails gRPC's attempt just the same."""
    try:
        holder = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    except OSError:
        return None
    try:
        # With SO_REUSEADDR like gRPC's socket, so a port gRPC may take is never refused here
        # (TIME_WAIT); listening, so gRPC's SO_REUSEADDR bind cannot share the address.
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        holder.bind(("::", port))
        holder.listen(1)
    except OSError:
        holder.close()
        return None
    return holder


def _add(
    server: aio.Server,
    address: IPAddress,
    port: int,
    port_flag: str,
    credentials: grpc.ServerCredentials | None,
) -> int:
    target = host_port(address, port)
    try:
        if credentials is None:
            bound: int = server.add_insecure_port(target)
        else:
            bound = server.add_secure_port(target, credentials)
    except RuntimeError:
        raise StartupError(
            f"gRPC could not listen on {target} ({port_flag}): another process may have taken "
            "the port just now; run with GRPC_VERBOSITY=debug to see gRPC's reason"
        ) from None
    return bound


def _bound_socket(address: IPAddress, port: int, port_flag: str) -> socket.socket:
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as error:
        raise _bind_error(address, port, port_flag, error) from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            # Set either way: the system default (net.ipv6.bindv6only) varies.
            sock.setsockopt(
                socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if address.is_unspecified else 1
            )
        sock.bind((str(address), port))
    except OSError as error:
        sock.close()
        raise _bind_error(address, port, port_flag, error) from None
    return sock


def _bind_error(address: IPAddress, port: int, port_flag: str, error: OSError) -> StartupError:
    target = host_port(address, port)
    if error.errno == errno.EADDRINUSE:
        return StartupError(
            f"{target} is already in use: stop the process listening there, or give another "
            f"port with {port_flag} (0 picks a free one)"
        )
    if error.errno == errno.EADDRNOTAVAIL:
        return StartupError(
            f"{address} is not an address of this machine (--host): use one of its addresses, "
            "127.0.0.1, or 0.0.0.0 for all IPv4 addresses"
        )
    if error.errno == errno.EACCES:
        return StartupError(
            f"listening on port {port} needs privileges ({port_flag}): use a port above 1023"
        )
    if error.errno == errno.EAFNOSUPPORT:
        return StartupError(
            f"IPv6 is not available on this machine (--host {address}): use an IPv4 address "
            "such as 127.0.0.1 or 0.0.0.0"
        )
    return StartupError(f"cannot listen on {target} ({port_flag}): {error.strerror}")
