"""LakeService over real gRPC: materializations of gRPC-written streams, SQL, and the CLI.

One server serves the whole module (starting one per test would dominate the runtime); each
test uses its own basin, tables and materialization names, so they do not interact.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from client import S2SClient, S2SError, SyncClient
from s2s.records import fence_record, trim_record
from s2s.v1 import lake_pb2 as lpb
from tests.server_process import REPO, ServerProcess

pytestmark = pytest.mark.xdist_group("lake-grpc")

APPLY_TIMEOUT_S = 20.0


@pytest.fixture(scope="module")
def lake_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data_dir: Path = tmp_path_factory.mktemp("lake-grpc") / "data"
    process = ServerProcess(str(data_dir), extra_args=["--lake-linger-ms", "100"]).start()
    yield process
    process.stop()


@pytest.fixture
async def client(lake_server: ServerProcess) -> AsyncIterator[S2SClient]:
    async with S2SClient(lake_server.target) as connected:
        yield connected


async def write_stream(client: S2SClient, basin: str, stream: str, rows: list[Any]) -> None:
    await client.create_basin(basin)
    await client.create_stream(basin, stream)
    await client.stream(basin, stream).append([json.dumps(row).encode() for row in rows])


async def wait_applied(client: S2SClient, name: str, seq_num: int) -> lpb.MaterializationStatus:
    """Poll until every record before `seq_num` is applied."""
    deadline = time.monotonic() + APPLY_TIMEOUT_S
    while True:
        status = await client.get_materialization(name)
        if status.applied_seq_num >= seq_num:
            return status
        assert time.monotonic() < deadline, f"not applied in time: {status}"
        await asyncio.sleep(0.05)


async def rows(client: S2SClient, query: str) -> list[dict[str, Any]]:
    result = await client.sql(query)
    assert not result.truncated
    table: list[dict[str, Any]] = result.table.to_pylist()
    return table


async def test_append_materialization_of_a_grpc_written_stream(client: S2SClient) -> None:
    orders = [{"id": i, "item": f"item-{i}", "qty": i * 2} for i in range(5)]
    await write_stream(client, "lake-append", "orders", orders)
    created = await client.create_materialization(
        "orders", "grpc.orders", basin="lake-append", stream="orders", create_table=True
    )
    assert (created.source.basin, created.source.stream) == ("lake-append", "orders")
    assert (created.table, created.mode, created.create_table) == ("grpc.orders", "append", True)
    assert not created.HasField("primary_key") and not created.HasField("select")

    deadline = time.monotonic() + APPLY_TIMEOUT_S
    while (status := await client.get_materialization("orders")).rows_applied < len(orders):
        assert time.monotonic() < deadline, f"rows not applied in time: {status}"
        await asyncio.sleep(0.05)
    assert status.state == "running" and not status.HasField("last_error")
    assert (status.applied_seq_num, status.tail_seq_num, status.lag_records) == (5, 5, 0)
    assert status.HasField("last_snapshot_id") and status.last_commit_at > 0
    assert await rows(client, "SELECT id, item, qty FROM lake.grpc.orders ORDER BY id") == orders
    listed = await client.list_materializations()
    assert "orders" in [m.name for m in listed]


async def test_merge_keeps_the_latest_row_per_key(client: S2SClient) -> None:
    updates = [
        {"id": 1, "status": "new"},
        {"id": 2, "status": "new"},
        {"id": 1, "status": "paid"},
        {"id": 3, "status": "new"},
        {"id": 2, "status": "shipped"},
    ]
    await write_stream(client, "lake-merge", "updates", updates)
    created = await client.create_materialization(
        "order-status",
        "grpc.order_status",
        basin="lake-merge",
        stream="updates",
        mode="merge",
        primary_key="id",
        create_table=True,
    )
    assert (created.mode, created.primary_key) == ("merge", "id")
    await wait_applied(client, "order-status", len(updates))
    assert await rows(client, "SELECT id, status FROM grpc.order_status ORDER BY id") == [
        {"id": 1, "status": "paid"},
        {"id": 2, "status": "shipped"},
        {"id": 3, "status": "new"},
    ]


async def test_projection_renames_derives_and_filters(client: S2SClient) -> None:
    events = [
        {"user": "ann", "kind": "click", "ms": 1500},
        {"user": "bob", "kind": "view", "ms": 10},
        {"user": "cat", "kind": "click", "ms": 250},
    ]
    await write_stream(client, "lake-project", "events", events)
    select = "upper(body->>'user') AS who, (body->>'ms')::INT / 1000.0 AS seconds, seq_num AS seq"
    where = "body->>'kind' = 'click'"
    created = await client.create_materialization(
        "clicks",
        "grpc.clicks",
        basin="lake-project",
        stream="events",
        select=select,
        where=where,
        create_table=True,
    )
    assert (created.select, created.where) == (select, where)
    await wait_applied(client, "clicks", len(events))
    assert await rows(client, "SELECT who, seconds, seq FROM grpc.clicks ORDER BY seq") == [
        {"who": "ANN", "seconds": 1.5, "seq": 0},
        {"who": "CAT", "seconds": 0.25, "seq": 2},
    ]


async def test_pause_resume_delete(client: S2SClient) -> None:
    await write_stream(client, "lake-pause", "jobs", [{"job": 1}, {"job": 2}])
    created = await client.create_materialization(
        "jobs", "grpc.jobs", basin="lake-pause", stream="jobs", create_table=True, paused=True
    )
    assert created.state == "paused"
    await asyncio.sleep(0.5)  # several linger periods: a running materialization would commit
    status = await client.get_materialization("jobs")
    assert (status.state, status.rows_applied, status.lag_records) == ("paused", 0, 2)

    resumed = await client.resume_materialization("jobs")
    assert resumed.state in ("starting", "running")
    await wait_applied(client, "jobs", 2)

    paused = await client.pause_materialization("jobs")
    assert paused.state == "paused"
    await client.stream("lake-pause", "jobs").append([b'{"job": 3}'])
    await asyncio.sleep(0.5)
    status = await client.get_materialization("jobs")
    assert (status.applied_seq_num, status.lag_records) == (2, 1)

    await client.delete_materialization("jobs")
    with pytest.raises(S2SError) as missing:
        await client.get_materialization("jobs")
    assert missing.value.code == "materialization_not_found"
    assert missing.value.status == grpc.StatusCode.NOT_FOUND
    assert "jobs" not in [m.name for m in await client.list_materializations()]
    with pytest.raises(S2SError) as again:
        await client.delete_materialization("jobs")
    assert again.value.code == "materialization_not_found"
    # The table outlives its materialization.
    assert await rows(client, "SELECT job FROM grpc.jobs ORDER BY job") == [{"job": 1}, {"job": 2}]


async def test_invalid_declarations_are_refused(client: S2SClient) -> None:
    with pytest.raises(S2SError) as bad_select:
        await client.create_materialization(
            "bad-select", "grpc.bad", basin="lake-bad", stream="s", select="no_such_column + 1"
        )
    assert bad_select.value.code == "invalid"
    assert bad_select.value.status == grpc.StatusCode.INVALID_ARGUMENT
    assert "select/where do not compile" in bad_select.value.message
    with pytest.raises(S2SError) as no_key:
        await client.create_materialization("no-key", "grpc.kv", mode="merge")
    assert no_key.value.code == "invalid"
    await client.create_materialization("twice", "grpc.twice", paused=True)
    with pytest.raises(S2SError) as duplicate:
        await client.create_materialization("twice", "grpc.twice", paused=True)
    assert duplicate.value.code == "resource_already_exists"
    names = [m.name for m in await client.list_materializations()]
    assert "bad-select" not in names and "no-key" not in names


async def test_query_is_read_only_and_limited(
    client: S2SClient, lake_server: ServerProcess
) -> None:
    with pytest.raises(S2SError) as write:
        await client.sql("CREATE TABLE grpc.sneaky AS SELECT 1 AS x")
    assert write.value.code == "read_only_sql"
    assert write.value.status == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(S2SError) as broken:
        await client.sql("SELEC 1")
    assert broken.value.code == "bad_sql"
    with pytest.raises(S2SError) as zero:
        await client.sql("SELECT 1", limit=0)
    assert zero.value.code == "invalid"

    result = await client.sql("SELECT range AS n FROM range(10)", limit=3)
    assert result.truncated and result.table.column("n").to_pylist() == [0, 1, 2]
    whole = await client.sql("SELECT range AS n FROM range(10)", limit=10)
    assert not whole.truncated and whole.table.num_rows == 10
    # About 10 MiB of rows do not fit in one message: the server sends what fits.
    big = await client.sql("SELECT repeat('x', 1024) AS pad FROM range(10000)")
    assert big.truncated and 0 < big.table.num_rows < 10000
    # Arrow keeps the types: an empty result still has its schema.
    empty = await client.sql("SELECT 1::BIGINT AS a, 'x' AS b WHERE false")
    assert empty.table.num_rows == 0 and empty.table.column_names == ["a", "b"]

    with SyncClient(lake_server.target) as sync:
        assert sync.sql("SELECT 42 AS answer").table.to_pylist() == [{"answer": 42}]


async def test_lake_service_is_healthy_and_reflected(lake_server: ServerProcess) -> None:
    async with grpc.aio.insecure_channel(lake_server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        status = await health.Check(health_pb2.HealthCheckRequest(service="s2s.v1.LakeService"))
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        async for response in call:
            names = [s.name for s in response.list_services_response.service]
            assert "s2s.v1.LakeService" in names
            break


def s2s(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args, "--server", server.target],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )


async def test_cli_materializations_and_sql(client: S2SClient, lake_server: ServerProcess) -> None:
    await write_stream(client, "lake-cli", "prices", [{"sku": "a", "price": 10}])
    await client.stream("lake-cli", "prices").append([b'{"sku": "bb", "price": 2.5}'])
    created = s2s(
        lake_server,
        "materializations",
        "create",
        "prices",
        "--table",
        "cli.prices",
        "--basin",
        "lake-cli",
        "--stream",
        "prices",
        "--mode",
        "merge",
        "--primary-key",
        "sku",
        "--create-table",
    )
    assert created.returncode == 0, created.stderr
    assert "created materialization prices: lake-cli/prices -> cli.prices" in created.stdout
    await wait_applied(client, "prices", 2)

    listed = s2s(lake_server, "materializations", "list")
    assert listed.stdout.splitlines()[0].split() == [
        "NAME",
        "STATE",
        "SOURCE",
        "TABLE",
        "ROWS",
        "LAG",
    ]
    # The server is the module's: other tests' materializations may be listed too.
    rows = [line.split() for line in listed.stdout.splitlines()[1:]]
    assert [row[:4] for row in rows if row[0] == "prices"] == [
        ["prices", "running", "lake-cli/prices", "cli.prices"]
    ]
    got = json.loads(s2s(lake_server, "materializations", "get", "prices").stdout)
    assert got["source"] == {"basin": "lake-cli", "stream": "prices"}
    assert (got["mode"], got["primary_key"], got["select"]) == ("merge", "sku", None)
    assert (got["applied_seq_num"], got["lag_records"]) == (2, 0)

    table = s2s(lake_server, "sql", "SELECT sku, price FROM cli.prices ORDER BY sku")
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines() == [
        "sku | price",
        "----+------",
        "a   |  10.0",
        "bb  |   2.5",
        "(2 rows)",
    ]
    cut = s2s(lake_server, "sql", "SELECT * FROM range(5)", "--limit", "2")
    assert cut.stdout.splitlines()[-2:] == [
        "(2 rows)",
        "(truncated: more rows matched; raise --limit or narrow the query)",
    ]
    as_json = s2s(lake_server, "sql", "SELECT sku FROM cli.prices ORDER BY sku", "--json")
    assert [json.loads(line) for line in as_json.stdout.splitlines()] == [
        {"sku": "a"},
        {"sku": "bb"},
    ]
    refused = s2s(lake_server, "sql", "DROP TABLE cli.prices")
    assert refused.returncode == 1 and refused.stderr.startswith("error: read_only_sql")
    missing = s2s(lake_server, "materializations", "pause", "nope")
    assert missing.returncode == 1
    assert missing.stderr.startswith("error: materialization_not_found")


async def test_a_recreated_source_stream_is_reported_not_replayed(client: S2SClient) -> None:
    await write_stream(client, "lake-recreate", "events", [{"n": i} for i in range(3)])
    await client.create_materialization(
        "recreate", "grpc.recreated", basin="lake-recreate", stream="events", create_table=True
    )
    await wait_applied(client, "recreate", 3)
    await client.delete_stream("lake-recreate", "events")
    deadline = time.monotonic() + APPLY_TIMEOUT_S
    while True:  # the name is free once the deletion job has run
        try:
            await client.create_stream("lake-recreate", "events")
            break
        except S2SError as error:
            assert error.code == "stream_deletion_pending" and time.monotonic() < deadline
            await asyncio.sleep(0.1)
    await client.stream("lake-recreate", "events").append([b'{"n": 100}'])
    # Transient errors come first (the stream is being deleted, then briefly missing).
    while (
        "deleted and created again"
        not in (status := await client.get_materialization("recreate")).last_error
    ):
        assert time.monotonic() < deadline, f"no error reported: {status}"
        await asyncio.sleep(0.1)
    assert status.state == "error"
    assert await rows(client, "SELECT n FROM lake.grpc.recreated ORDER BY n") == [
        {"n": 0},
        {"n": 1},
        {"n": 2},
    ]


async def test_command_records_are_skipped_not_rejected(client: S2SClient) -> None:
    await write_stream(client, "lake-commands", "fenced", [{"n": 0}, {"n": 1}])
    stream = client.stream("lake-commands", "fenced")
    await stream.append([fence_record("owner-1")])
    await stream.append([b'{"n": 2}'], fencing_token="owner-1")
    await client.create_materialization(
        "commands", "grpc.commands", basin="lake-commands", stream="fenced", create_table=True
    )
    status = await wait_applied(client, "commands", 4)
    assert (status.rows_applied, status.rows_rejected) == (3, 0)
    assert await rows(client, "SELECT n FROM lake.grpc.commands ORDER BY n") == [
        {"n": 0},
        {"n": 1},
        {"n": 2},
    ]


async def test_records_trimmed_before_they_were_applied_are_counted(client: S2SClient) -> None:
    await write_stream(client, "lake-skipped", "events", [{"n": i} for i in range(3)])
    await client.create_materialization(
        "skipped", "grpc.skipped", basin="lake-skipped", stream="events", create_table=True
    )
    await wait_applied(client, "skipped", 3)
    await client.pause_materialization("skipped")
    stream = client.stream("lake-skipped", "events")
    await stream.append([json.dumps({"n": i}).encode() for i in range(3, 8)])  # seq 3..7
    await stream.append([trim_record(6)])  # seq 8: drops 3, 4 and 5 before they are applied
    await client.resume_materialization("skipped")
    status = await wait_applied(client, "skipped", 9)
    assert status.records_skipped == 3 and status.rows_applied == 5
    assert [row["n"] for row in await rows(client, "SELECT n FROM grpc.skipped ORDER BY n")] == [
        0,
        1,
        2,
        6,
        7,
    ]
