"""Every gRPC method against a real server process, through the client and through raw stubs."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client import (
    FencingTokenMismatchError,
    ReadUnwrittenError,
    S2SClient,
    S2SError,
    SeqNumMismatchError,
)
from client._errors import metadata_dict
from s2s.config import BasinConfig, StreamConfig
from s2s.records import fence_record
from s2s.v1 import control_pb2 as cpb
from s2s.v1 import records_pb2 as pb
from s2s.v1 import services_pb2 as spb
from s2s.v1 import services_pb2_grpc as services
from tests.grpc_api.conftest import BASIN
from tests.server_process import ServerProcess


async def test_basin_methods(client: S2SClient) -> None:
    created = await client.create_basin("second-basin", BasinConfig(create_stream_on_append=True))
    assert created.result == cpb.PROVISION_RESULT_CREATED and created.info.name == "second-basin"
    listed = await client.list_basins(prefix="second")
    assert [b.name for b in listed.basins] == ["second-basin"] and not listed.has_more
    assert (await client.get_basin_config("second-basin")).create_stream_on_append
    config = await client.reconfigure_basin(
        "second-basin", cpb.BasinConfig(create_stream_on_read=True), ["create_stream_on_read"]
    )
    assert config.create_stream_on_read and config.create_stream_on_append
    await client.delete_basin("second-basin")
    # Listed as deleting until the background job removes it, which may already have happened.
    listed = await client.list_basins(prefix="second")
    assert all(b.HasField("deleted_at_ms") for b in listed.basins)
    with pytest.raises(S2SError) as info:
        await client.create_basin("Bad_Name")
    assert info.value.code == "invalid" and info.value.status == grpc.StatusCode.INVALID_ARGUMENT


async def test_create_is_idempotent_with_request_token(client: S2SClient) -> None:
    first = await client.create_stream(BASIN, "idem", request_token="token-1")
    again = await client.create_stream(BASIN, "idem", request_token="token-1")
    assert (first.result, again.result) == (
        cpb.PROVISION_RESULT_CREATED,
        cpb.PROVISION_RESULT_NOOP,
    )
    with pytest.raises(S2SError) as info:
        await client.create_stream(BASIN, "idem", request_token="token-2")
    assert info.value.code == "resource_already_exists"
    assert info.value.status == grpc.StatusCode.ALREADY_EXISTS


async def test_stream_methods(client: S2SClient) -> None:
    await client.create_stream(BASIN, "events", StreamConfig(retention=3600))
    listed = await client.list_streams(BASIN)
    assert [s.name for s in listed.streams] == ["events"]
    config = await client.get_stream_config(BASIN, "events")
    assert (config.retention, config.storage_class, config.timestamping_mode) == (
        3600,
        "express",
        "client-prefer",
    )
    patch = cpb.StreamConfig()
    patch.timestamping.mode = cpb.TIMESTAMPING_MODE_ARRIVAL
    config = await client.reconfigure_stream(BASIN, "events", patch, ["timestamping.mode"])
    assert config.timestamping_mode == "arrival" and config.retention == 3600
    config = await client.reconfigure_stream(
        BASIN, "events", cpb.StreamConfig(), ["retention_policy"]
    )
    assert config.retention == 7 * 24 * 3600
    stream = client.stream(BASIN, "events")
    ack = await stream.append([b"one", b"two"])
    assert (ack.start.seq_num, ack.end.seq_num, ack.tail.seq_num) == (0, 2, 2)
    assert (await stream.check_tail()).seq_num == 2
    batch = await stream.read(seq_num=0)
    assert [r.body for r in batch.records] == [b"one", b"two"]
    assert not batch.HasField("tail")
    await client.delete_stream(BASIN, "events")
    with pytest.raises(S2SError) as info:
        await stream.append([b"three"])
    # The background deletion job may finish between the two calls (it ticks every
    # second); the pending window itself is pinned by tests/test_control_plane.py.
    assert info.value.code in ("stream_deletion_pending", "stream_not_found")
    with pytest.raises(S2SError) as info:
        await client.get_stream_config(BASIN, "nope")
    assert info.value.code == "stream_not_found" and info.value.status == grpc.StatusCode.NOT_FOUND


async def test_condition_failures_are_machine_readable(client: S2SClient) -> None:
    await client.create_stream(BASIN, "cond")
    stream = client.stream(BASIN, "cond")
    await stream.append([b"a"])
    with pytest.raises(SeqNumMismatchError) as seq_info:
        await stream.append([b"b"], match_seq_num=5)
    assert seq_info.value.expected_seq_num == 1
    await stream.append([fence_record("écrivain")])
    with pytest.raises(FencingTokenMismatchError) as fence_info:
        await stream.append([b"c"], fencing_token="other")
    assert fence_info.value.current_token == "écrivain"
    with pytest.raises(ReadUnwrittenError) as read_info:
        await stream.read(seq_num=10)
    assert read_info.value.tail.seq_num == 2


async def test_raw_stubs_speak_the_wire_contract(server: ServerProcess, client: S2SClient) -> None:
    """Not through our client: generated stubs, field by field, like any gRPC user."""
    await client.create_stream(BASIN, "raw")
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = services.StreamServiceStub(channel)
        record = pb.AppendRecord(
            timestamp=123, headers=[pb.Header(name=b"k", value=b"v")], body=b"\x00\xff"
        )
        response = await stub.Append(
            spb.AppendRequest(basin=BASIN, stream="raw", input=pb.AppendInput(records=[record]))
        )
        assert response.ack.start.seq_num == 0 and response.ack.end.seq_num == 1
        assert response.ack.start.timestamp == 123
        read = await stub.Read(spb.ReadRequest(basin=BASIN, stream="raw", seq_num=0, count=1))
        (stored,) = read.batch.records
        assert (stored.seq_num, stored.timestamp, stored.body) == (0, 123, b"\x00\xff")
        assert [(h.name, h.value) for h in stored.headers] == [(b"k", b"v")]
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Append(spb.AppendRequest(basin=BASIN, stream="raw", input=pb.AppendInput()))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert metadata_dict(info.value.trailing_metadata())["s2-error-code"] == "invalid"
        tail = await stub.CheckTail(spb.CheckTailRequest(basin=BASIN, stream="raw"))
        assert tail.tail.seq_num == 1
        health = health_pb2_grpc.HealthStub(channel)
        status = await health.Check(health_pb2.HealthCheckRequest(service="s2s.v1.StreamService"))
        assert status.status == health_pb2.HealthCheckResponse.SERVING


async def test_read_session_follows_live_appends(client: S2SClient) -> None:
    await client.create_stream(BASIN, "live")
    stream = client.stream(BASIN, "live")
    await stream.append([b"before"])
    received: list[bytes] = []

    async def follow() -> None:
        async for batch in stream.read_session(seq_num=0):
            received.extend(r.body for r in batch.records)
            if len(received) >= 4:
                return

    follower = asyncio.create_task(follow())
    await asyncio.sleep(0.2)
    for body in (b"after-1", b"after-2", b"after-3"):
        await stream.append([body])
    await asyncio.wait_for(follower, 10)
    assert received == [b"before", b"after-1", b"after-2", b"after-3"]


async def test_unary_read_waits_for_live_batch(client: S2SClient) -> None:
    await client.create_stream(BASIN, "waiter")
    stream = client.stream(BASIN, "waiter")
    reader = asyncio.create_task(stream.read(seq_num=0, wait_s=10))
    await asyncio.sleep(0.2)
    await stream.append([b"wake"])
    batch = await asyncio.wait_for(reader, 10)
    assert [r.body for r in batch.records] == [b"wake"] and batch.tail.seq_num == 1


async def test_bad_names_are_invalid_arguments(server: ServerProcess, client: S2SClient) -> None:
    """An empty basin or stream name reached the catalog as a storage key: INTERNAL before."""
    async with grpc.aio.insecure_channel(server.target) as channel:
        account = services.AccountServiceStub(channel)
        basins = services.BasinServiceStub(channel)
        calls = [
            account.GetBasinConfig(cpb.GetBasinConfigRequest(basin="")),
            account.ReconfigureBasin(cpb.ReconfigureBasinRequest(basin="")),
            account.DeleteBasin(cpb.DeleteBasinRequest(basin="")),
            basins.ListStreams(cpb.ListStreamsRequest(basin="")),
            basins.CreateStream(cpb.CreateStreamRequest(basin="", stream="s")),
            basins.GetStreamConfig(cpb.GetStreamConfigRequest(basin="", stream="s")),
            basins.GetStreamConfig(cpb.GetStreamConfigRequest(basin=BASIN, stream="")),
            basins.ReconfigureStream(cpb.ReconfigureStreamRequest(basin=BASIN, stream="")),
            basins.DeleteStream(cpb.DeleteStreamRequest(basin="", stream="s")),
        ]
        for call in calls:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value
            assert metadata_dict(info.value.trailing_metadata())["s2-error-code"] == "invalid"
    await asyncio.sleep(0.2)  # the log is read by a thread
    assert not any("Traceback" in line for line in server.log)


async def test_unknown_enum_values_are_invalid_arguments(
    server: ServerProcess, client: S2SClient
) -> None:
    """proto3 keeps an enum number it does not know; it was taken for "unset", so a
    reconfigure with `stream_cipher=77` cleared the basin's cipher and answered OK."""
    await client.reconfigure_basin(
        BASIN, cpb.BasinConfig(stream_cipher=cpb.STREAM_CIPHER_AES_256_GCM), ["stream_cipher"]
    )
    odd_cipher = cpb.BasinConfig(stream_cipher=77)  # type: ignore[arg-type]
    with pytest.raises(S2SError) as info:
        await client.reconfigure_basin(BASIN, odd_cipher, ["stream_cipher"])
    assert info.value.status == grpc.StatusCode.INVALID_ARGUMENT and "77" in info.value.message
    assert (await client.get_basin_config(BASIN)).stream_cipher == "aes-256-gcm"
    with grpc.insecure_channel(server.target) as channel:
        basins = services.BasinServiceStub(channel)
        unknown = cpb.StreamConfig(storage_class=9)  # type: ignore[arg-type]
        with pytest.raises(grpc.RpcError) as raised:
            basins.CreateStream(
                cpb.CreateStreamRequest(basin=BASIN, stream="odd", config=unknown), timeout=10
            )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [s.name for s in (await client.list_streams(BASIN)).streams] == []
