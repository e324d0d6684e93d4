"""A materialization's `select`/`where` are expressions over one record and `partition_by`
entries are columns or partition transforms (issue 12, item 4).

A real server over its real ports, HTTP and gRPC. Before the fix,
`"select": "*, (SELECT count(*) FROM ducklake_expire_snapshots('lake', older_than => now()))
AS n"` was accepted (201) and expired snapshots on every batch, and a `where` of
`true) OR (1=1` was accepted.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc
import pytest

from client import S2SClient, S2SError
from tests.lake.conftest import LakeClient
from tests.server_process import ServerProcess

pytestmark = pytest.mark.xdist_group("test_projection_rules")

EXPIRE = "(SELECT count(*) FROM ducklake_expire_snapshots('lake', older_than => now()))"
CLEANUP = "(SELECT count(*) FROM ducklake_cleanup_old_files('lake', cleanup_all => true))"

# (spec fields, words the message must contain)
ATTACKS: list[tuple[dict[str, Any], tuple[str, ...]]] = [
    ({"select": f"*, {EXPIRE} AS n"}, ("subquery",)),
    ({"select": f"*, {CLEANUP} AS n"}, ("subquery",)),
    ({"where": f"{EXPIRE} >= 0"}, ("subquery",)),
    ({"where": "true) OR (1=1"}, ("where",)),
    ({"where": "true) UNION SELECT 1, 2, 3, 4, 5 --"}, ("where",)),
    ({"where": "EXISTS (SELECT 1 FROM lake.s2s.checkpoints)"}, ("subquery",)),
    ({"where": "true, false"}, ("one expression",)),
    ({"select": "* FROM lake.s2s.checkpoints"}, ("FROM",)),
    ({"select": "*, 1 AS x FROM range(3)"}, ("FROM",)),
    ({"select": "* ORDER BY 1 LIMIT 1"}, ("ORDER BY",)),
    ({"select": "DISTINCT *"}, ("DISTINCT",)),
    ({"select": "* UNION SELECT * FROM lake.s2s.materializations"}, ("set operation",)),
    ({"select": "count(*) OVER () AS n"}, ("window",)),
    ({"select": "current_setting('temp_directory') AS t"}, ("current_setting",)),
    ({"select": "*, nextval('s') AS n"}, ("nextval",)),
    ({"where": "getvariable('x') IS NULL"}, ("getvariable",)),
    ({"select": "*, get_block_size('lake') AS b"}, ("get_block_size",)),
    ({"select": "*, pg_get_constraintdef(1) AS c"}, ("pg_get_constraintdef",)),
    ({"select": "body /*"}, ("select",)),
    ({"select": "abs(" * 600 + "1" + ")" * 600 + " AS deep"}, ("deep",)),
    ({"partition_by": ["(SELECT 1)"]}, ("partition_by",)),
    ({"partition_by": ["current_setting('x')"]}, ("partition_by",)),
    ({"partition_by": ["upper(kind)"]}, ("partition_by",)),
    ({"partition_by": ["kind --", "year(ts)"]}, ("partition_by",)),
    ({"partition_by": ["year(ts)) , (1"]}, ("partition_by",)),
]


def _snapshots(lake: LakeClient) -> list[list[Any]]:
    return lake.rows("SELECT snapshot_id FROM ducklake_snapshots('lake') ORDER BY ALL")


def test_projection_attacks_are_refused_over_http(lake: LakeClient) -> None:
    lake.declare("proj.base")
    lake.ingest_ok("proj.base", [{"id": 1}])
    snapshots = _snapshots(lake)
    for index, (fields, words) in enumerate(ATTACKS):
        spec = {"name": f"attack-{index}", "table": f"proj.a{index}", "create_table": True}
        response = lake.http.post("/v1/lake/materializations", json={**spec, **fields})
        assert response.status_code == 422, (fields, response.text)
        body = response.json()
        assert body["code"] == "invalid", (fields, body)
        for word in words:
            assert word.lower() in body["message"].lower(), (fields, body["message"])
    listed = lake.http.get("/v1/lake/materializations").json()["materializations"]
    assert [m["name"] for m in listed] == ["proj.base"]
    assert _snapshots(lake) == snapshots


async def test_projection_attacks_are_refused_over_grpc(
    lake: LakeClient, lake_server: ServerProcess
) -> None:
    async with S2SClient(lake_server.target) as client:
        for index, (fields, _) in enumerate(ATTACKS):
            with pytest.raises(S2SError) as info:
                await client.create_materialization(
                    f"grpc-attack-{index}", f"proj.g{index}", create_table=True, **fields
                )
            assert info.value.code == "invalid", fields
            assert info.value.status == grpc.StatusCode.INVALID_ARGUMENT
        names = [m.name for m in await client.list_materializations()]
    assert not [name for name in names if name.startswith("grpc-attack")]


def test_valid_projections_work_end_to_end_over_http(lake: LakeClient) -> None:
    """Rename, derive with JSON extraction, filter, mask, sample, and a trailing comment:
    each fragment stays on its own lines, so `--` ends with it."""
    lake.declare(
        "proj.clicks",
        select=(
            "(body->>'id')::INT AS id, upper(body->>'user') AS who, "
            "(body->>'ms')::INT / 1000.0 AS seconds, "
            "regexp_replace(body->>'email', '^[^@]+', '***') AS email, "
            "(body->>'at')::TIMESTAMP AS ts -- when it happened"
        ),
        where="body->>'kind' = 'click' AND hash(seq_num) IS NOT NULL -- clicks only",
        partition_by=["year(ts)", "bucket(4, who)"],
    )
    rows = [
        {"id": 1, "user": "ann", "ms": 1500, "kind": "click", "email": "ann@x.org",
         "at": "2024-05-01T10:00:00"},
        {"id": 2, "user": "bob", "ms": 10, "kind": "view", "email": "bob@x.org",
         "at": "2024-05-01T10:00:01"},
        {"id": 3, "user": "cy", "ms": 250, "kind": "click", "email": "cy@y.org",
         "at": "2025-01-01T00:00:00"},
    ]  # fmt: skip
    lake.ingest_ok("proj.clicks", rows)
    assert lake.rows(
        "SELECT id, who, seconds::DOUBLE, email, year(ts) FROM proj.clicks ORDER BY id"
    ) == [[1, "ANN", 1.5, "***@x.org", 2024], [3, "CY", 0.25, "***@y.org", 2025]]
    status = lake.status("proj.clicks")
    assert status["partition_by"] == ["year(ts)", "bucket(4, who)"]
    assert status["rows_rejected"] == 0


async def test_valid_projections_work_end_to_end_over_grpc(lake_server: ServerProcess) -> None:
    async with S2SClient(lake_server.target) as client:
        await client.create_basin("proj-grpc")
        await client.create_stream("proj-grpc", "events")
        events = [{"user": "ann", "kind": "click"}, {"user": "bob", "kind": "view"}]
        await client.stream("proj-grpc", "events").append(
            [json.dumps(event).encode() for event in events]
        )
        created = await client.create_materialization(
            "proj-grpc",
            "proj.grpc_clicks",
            basin="proj-grpc",
            stream="events",
            select="seq_num AS seq, left(body->>'user', 1) || '*' AS masked",
            where="body->>'kind' = 'click'",
            create_table=True,
        )
        assert created.select.startswith("seq_num AS seq")
        for _ in range(200):
            status = await client.get_materialization("proj-grpc")
            if status.applied_seq_num >= 2:
                break
            await asyncio.sleep(0.05)
        result = await client.sql("SELECT seq, masked FROM proj.grpc_clicks")
        assert result.table.to_pylist() == [{"seq": 0, "masked": "a*"}]
