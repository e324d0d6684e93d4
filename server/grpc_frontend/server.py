"""Builds the gRPC server: listening where `server.binding` says (over TLS when given a
certificate), then our services (LakeService only with a lake), the standard health service and
reflection."""

from __future__ import annotations

from typing import Any

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from s2s.v1 import lake_pb2, lake_pb2_grpc, services_pb2
from s2s.v1 import services_pb2_grpc as services
from server.binding import IPAddress, add_grpc_port
from server.grpc_frontend import stream
from server.grpc_frontend.control import AccountServicer, BasinServicer
from server.grpc_frontend.decoding import GuardedRegistry
from server.grpc_frontend.lake import LakeServicer
from server.lake.service import Lake
from server.streamstore import StreamStore
from server.tls import ServerTls

MESSAGE_BYTES_MAX = 8 * 1024 * 1024
"""Largest gRPC message accepted or sent: a 1 MiB batch plus generous protobuf overhead."""

SERVICE_NAMES = (
    "s2s.v1.AccountService",
    "s2s.v1.BasinService",
    "s2s.v1.StreamService",
)
LAKE_SERVICE_NAME = lake_pb2.DESCRIPTOR.services_by_name["LakeService"].full_name


def listening_grpc_server(
    address: IPAddress, port: int, tls: ServerTls | None = None
) -> tuple[aio.Server, int]:
    """A gRPC server listening exactly at address:port (0 picks a free port), not yet serving;
    returns it and its port. With `tls`, the port takes only TLS connections: a plain-text
    client's handshake fails."""
    server = aio.server(
        options=[
            ("grpc.max_receive_message_length", MESSAGE_BYTES_MAX),
            ("grpc.max_send_message_length", MESSAGE_BYTES_MAX),
            ("grpc.so_reuseport", 0),
        ]
    )
    credentials = None
    if tls is not None:
        credentials = grpc.ssl_server_credentials([(tls.key_pem, tls.cert_pem)])
    return server, add_grpc_port(server, address, port, "--grpc-port", credentials)


async def start_grpc_server(
    server: aio.Server,
    store: StreamStore,
    lake: Lake | None = None,
) -> None:
    """Register our services, health and reflection on `server`, then start serving."""
    await register_services(server, store, lake)
    await server.start()


async def register_services(
    server: aio.Server,
    store: StreamStore,
    lake: Lake | None,
) -> None:
    """Our services, health and reflection. Generated registrations go through a
    `GuardedRegistry`, so a request that does not decode is `bad_proto` there too
    (StreamService's own handlers decode that way themselves)."""
    registry: Any = GuardedRegistry(server)
    services.add_AccountServiceServicer_to_server(AccountServicer(store), registry)  # type: ignore[no-untyped-call]
    services.add_BasinServiceServicer_to_server(BasinServicer(store), registry)  # type: ignore[no-untyped-call]
    server.add_generic_rpc_handlers((stream.handlers(stream.StreamServicer(store)),))
    names = [
        services_pb2.DESCRIPTOR.services_by_name[n.split(".")[-1]].full_name for n in SERVICE_NAMES
    ]
    if lake is not None:
        lake_pb2_grpc.add_LakeServiceServicer_to_server(LakeServicer(store, lake), registry)  # type: ignore[no-untyped-call]
        names.append(LAKE_SERVICE_NAME)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, registry)
    for name in ("", *names):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    # The asyncio servicer named here: `enable_server_reflection` picks it only when handed
    # an `aio.Server` itself, not the registry.
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        reflection.aio.ReflectionServicer((*names, health.SERVICE_NAME, reflection.SERVICE_NAME)),
        registry,
    )
