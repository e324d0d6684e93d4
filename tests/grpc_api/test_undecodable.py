"""Request messages that do not decode (issue 12 item 5): every method answers
INVALID_ARGUMENT with S2's `bad_proto` and a message, promptly, and logs no traceback; an
append session ends at the undecodable message, keeping what came before it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import FileDescriptor
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from client import S2SClient
from client._errors import metadata_dict
from s2s.v1 import control_pb2 as cpb
from s2s.v1 import lake_pb2, services_pb2
from s2s.v1 import records_pb2 as pb
from s2s.v1 import services_pb2 as spb
from s2s.v1 import services_pb2_grpc as services
from server.grpc_frontend.server import register_services
from server.streamstore import StreamStore
from tests.grpc_api.conftest import BASIN
from tests.server_process import ServerProcess

UNDECODABLE = b"\x1a\xff\xff\xff\xff\x0f"
"""Field 3, length-delimited, with a length far past the end of the message."""
DEADLINE_S = 20.0
ANSWER_S_MAX = 2.0
"""An undecodable request is answered this fast, well before the client's deadline."""

Method = tuple[str, bool, bool]
"""A method's path, whether the client streams and whether the server streams."""


def _methods(file: FileDescriptor, *services: str) -> list[Method]:
    return [
        (f"/{service.full_name}/{method.name}", method.client_streaming, method.server_streaming)
        for service in file.services_by_name.values()
        if service.name in services
        for method in service.methods
    ]


STREAM_SERVICE = _methods(services_pb2.DESCRIPTOR, "StreamService")
GENERATED = [
    *_methods(services_pb2.DESCRIPTOR, "AccountService", "BasinService"),
    *_methods(lake_pb2.DESCRIPTOR, "LakeService"),
    *_methods(health_pb2.DESCRIPTOR, "Health"),
    *_methods(reflection_pb2.DESCRIPTOR, "ServerReflection"),
]


async def _send_undecodable(channel: aio.Channel, method: Method) -> aio.AioRpcError:
    """Calls the method with the undecodable message; returns the error it ends with."""
    path, client_streaming, server_streaming = method
    started = time.monotonic()
    with pytest.raises(aio.AioRpcError) as raised:
        if not client_streaming:
            if server_streaming:
                async for _ in channel.unary_stream(path)(UNDECODABLE, timeout=DEADLINE_S):
                    pass
            else:
                await channel.unary_unary(path)(UNDECODABLE, timeout=DEADLINE_S)
        else:
            call: Any = (
                channel.stream_stream(path) if server_streaming else channel.stream_unary(path)
            )(timeout=DEADLINE_S)
            await call.write(UNDECODABLE)
            await call.done_writing()
            if server_streaming:
                async for _ in call:
                    pass
            else:
                await call
    assert time.monotonic() - started < ANSWER_S_MAX, path
    return raised.value


def _assert_bad_proto(error: aio.AioRpcError, method: Method) -> None:
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, error)
    assert "request message is not a valid" in (error.details() or ""), (method, error)
    assert metadata_dict(error.trailing_metadata())["s2-error-code"] == "bad_proto"


def _tracebacks(server: ServerProcess) -> list[str]:
    return [line for line in server.log if "Traceback" in line or "ERROR" in line]


async def _every_method_answers_bad_proto(server: ServerProcess, methods: list[Method]) -> None:
    async with aio.insecure_channel(server.target) as channel:
        for method in methods:
            _assert_bad_proto(await _send_undecodable(channel, method), method)
    await asyncio.sleep(0.2)  # the log is read by a thread
    assert _tracebacks(server) == []


async def test_stream_service_answers_bad_proto(server: ServerProcess) -> None:
    await _every_method_answers_bad_proto(server, STREAM_SERVICE)


async def test_generated_services_answer_bad_proto(server: ServerProcess) -> None:
    await _every_method_answers_bad_proto(server, GENERATED)


def _session_request(body: bytes) -> bytes:
    records = [pb.AppendRecord(body=body)]
    request = spb.AppendSessionRequest(
        basin=BASIN, stream="s", input=pb.AppendInput(records=records)
    )
    return request.SerializeToString()


async def test_append_session_ends_at_an_undecodable_message(
    server: ServerProcess, client: S2SClient
) -> None:
    await client.create_stream(BASIN, "s")
    async with aio.insecure_channel(server.target) as channel:
        call: Any = channel.stream_stream("/s2s.v1.StreamService/AppendSession")(timeout=DEADLINE_S)
        started = time.monotonic()
        await call.write(_session_request(b"before"))
        acks = [await call.read()]
        await call.write(UNDECODABLE)
        with pytest.raises(aio.AioRpcError) as raised:
            acks.append(await call.read())
            await call.write(_session_request(b"after"))
            acks.append(await call.read())
        assert time.monotonic() - started < ANSWER_S_MAX
    assert len(acks) == 1
    assert spb.AppendSessionResponse.FromString(acks[0]).ack.end.seq_num == 1
    _assert_bad_proto(raised.value, ("AppendSession", True, True))
    tail = await client.stream(BASIN, "s").check_tail()
    assert tail.seq_num == 1
    await asyncio.sleep(0.2)
    assert _tracebacks(server) == []


# --- the registry, on a server built here with the generated registrations -------------


@pytest.fixture
async def guarded_server(store: StreamStore) -> AsyncIterator[str]:
    server = aio.server()
    store.access_tokens.required = False  # these tests are about decoding, not access
    await register_services(server, store, lake=None)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


GUARDED = [
    *_methods(services_pb2.DESCRIPTOR, "AccountService", "BasinService", "StreamService"),
    *_methods(health_pb2.DESCRIPTOR, "Health"),
    *_methods(reflection_pb2.DESCRIPTOR, "ServerReflection"),
]


async def test_registry_answers_bad_proto_for_every_method(
    guarded_server: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    async with aio.insecure_channel(guarded_server) as channel:
        for method in GUARDED:
            _assert_bad_proto(await _send_undecodable(channel, method), method)
    assert [record for record in caplog.records if record.levelno >= logging.ERROR] == []


async def test_registry_leaves_decodable_requests_alone(guarded_server: str) -> None:
    async with aio.insecure_channel(guarded_server) as channel:
        account = services.AccountServiceStub(channel)
        listed = await account.ListBasins(cpb.ListBasinsRequest())
        assert list(listed.basins) != [] and listed.basins[0].name == "test-basin"
        health_stub = health_pb2_grpc.HealthStub(channel)
        checked = await health_stub.Check(health_pb2.HealthCheckRequest())
        assert checked.status == health_pb2.HealthCheckResponse.SERVING
        reflected = reflection_pb2.ServerReflectionRequest(list_services="")
        call: Any = channel.stream_stream(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )()
        await call.write(reflected)
        await call.done_writing()
        names = [s.name async for r in call for s in r.list_services_response.service]
        assert "s2s.v1.AccountService" in names
