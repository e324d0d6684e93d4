"""HTTP and gRPC share one sequencer per stream: what one frontend appends the other reads."""

from __future__ import annotations

from s2_sdk import S2, AppendInput, Record, SeqNum

from client import S2SClient
from tests.server_process import ServerProcess


async def test_http_append_is_read_through_grpc_and_back(
    server: ServerProcess, sdk: S2, basin_name: str
) -> None:
    await sdk.create_basin(basin_name)
    await sdk.basin(basin_name).create_stream("shared")
    http_stream = sdk.basin(basin_name).stream("shared")
    await http_stream.append(AppendInput(records=[Record(body=b"via-http")]))

    async with S2SClient(server.target) as grpc_client:
        grpc_stream = grpc_client.stream(basin_name, "shared")
        batch = await grpc_stream.read(seq_num=0)
        assert [(r.seq_num, r.body) for r in batch.records] == [(0, b"via-http")]
        ack = await grpc_stream.append([b"via-grpc"])
        assert ack.start.seq_num == 1

    batch = await http_stream.read(start=SeqNum(0))
    assert [(r.seq_num, r.body) for r in batch.records] == [(0, b"via-http"), (1, b"via-grpc")]
