"""The lake's own schema (`s2s`) is out of clients' reach, and damage to it never stops the
server (issue 12, item 2).

A real server over its real ports. Before the fix, `POST /v2/stream?table=s2s.materializations`
landed a row there and the next start failed with a TypeError, and ingest into
`s2s.checkpoints` added a column so that every later materialization create answered 500.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import pytest

from client import S2SClient, S2SError
from server.lake.connection import LakeSettings, lake_cursor, open_lake
from tests.lake.conftest import LakeClient
from tests.server_process import ServerProcess

pytestmark = pytest.mark.xdist_group("test_internal_schema")

SERVER_ARGS = ["--lake-linger-ms", "100"]
INTERNAL_TABLES = [
    "s2s.materializations",
    "s2s.checkpoints",
    "s2s.dead_letters",
    "S2S.checkpoints",
    "lake.S2s.materializations",
    "LAKE.s2s.new_table",
]


def _internal_state(lake: LakeClient) -> list[list[Any]]:
    """What ingest into `s2s` changed before the fix: rows and columns of the lake's tables."""
    return [
        *lake.rows("SELECT name, definition FROM s2s.materializations ORDER BY name"),
        *lake.rows("SELECT name, last_seq_num FROM s2s.checkpoints ORDER BY name"),
        *lake.rows("SELECT count(*) FROM s2s.dead_letters"),
        *lake.rows(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_catalog = 'lake' AND table_schema = 's2s' ORDER BY ALL"
        ),
    ]


def test_ingest_into_the_internal_schema_is_refused_and_changes_nothing(
    lake: LakeClient,
) -> None:
    lake.declare("pub.seen", paused=True)
    before = _internal_state(lake)
    for table in INTERNAL_TABLES:
        row = {"name": "evil", "definition": "{}", "extra": 1}
        ndjson = lake.http.post(
            "/v2/stream",
            params={"table": table, "wait": "true"},
            content=json.dumps(row).encode(),
            headers={"content-type": "application/x-ndjson"},
        )
        body = lake.ingest(table, [row], wait=True)
        for response in (ndjson, body):
            assert response.status_code == 400, (table, response.text)
            error = response.json()["errors"][0]
            assert error["code"] == "invalid_table", (table, error)
            assert "'s2s'" in error["message"] and "another schema" in error["message"]
    assert _internal_state(lake) == before
    streams = lake.http.get("/v1/streams", headers={"s2-basin": "lake-ingest"})
    assert streams.status_code == 200, streams.text
    names = [stream["name"] for stream in streams.json()["streams"]]
    assert "pub.seen" in names and not [n for n in names if n.lower().startswith("s2s.")]
    # Declarations and ingest elsewhere still work.
    lake.declare("pub.after")
    lake.ingest_ok("pub.after", [{"id": 1}])
    assert lake.rows("SELECT id FROM pub.after") == [[1]]


async def test_materialization_targets_in_the_internal_schema_are_refused(
    lake: LakeClient, lake_server: ServerProcess
) -> None:
    before = _internal_state(lake)
    for table in INTERNAL_TABLES:
        response = lake.http.post(
            "/v1/lake/materializations",
            json={"name": "evil-http", "table": table, "create_table": True},
        )
        assert response.status_code == 422, (table, response.text)
        assert response.json()["code"] == "invalid"
        assert "'s2s'" in response.json()["message"]
    async with S2SClient(lake_server.target) as client:
        for table in INTERNAL_TABLES:
            with pytest.raises(S2SError) as info:
                await client.create_materialization("evil-grpc", table, create_table=True)
            assert info.value.code == "invalid", table
            assert info.value.status == grpc.StatusCode.INVALID_ARGUMENT
            assert "'s2s'" in info.value.message
        names = [m.name for m in await client.list_materializations()]
    assert "evil-http" not in names and "evil-grpc" not in names
    assert _internal_state(lake) == before
    dead = lake.http.get("/v2/stream/errors", params={"table": "s2s.dead_letters"})
    assert dead.status_code == 422 and "'s2s'" in dead.json()["message"]


def _definition(name: str, table: str, owner: str, **fields: Any) -> str:
    """A stored definition as the server writes it (definition.Materialization's JSON)."""
    schema, table_name = table.split(".")
    stored = {
        "name": name,
        "basin": "lake-ingest",
        "stream": table,
        "target_schema": schema,
        "target_table": table_name,
        "mode": "append",
        "primary_key": None,
        "select": None,
        "where": None,
        "partition_by": [],
        "create_table": True,
        "paused": False,
        "owner": owner,
        **fields,
    }
    return json.dumps(stored, sort_keys=True)


def _damage_catalog(data_dir: Path) -> None:
    """What ingest into `s2s` could do before the fix, and worse, with the server stopped."""
    root = data_dir / "lake"
    owner = (root / "server-id").read_text().strip()
    conn = open_lake(LakeSettings(root=root))
    try:
        cursor = lake_cursor(conn)
        rows = [
            ("not-json", "{not json"),
            ("unknown-field", _definition("unknown-field", "pub.x", owner, surprise=1)),
            ("wrong-type", _definition("wrong-type", "pub.x", owner, mode=7)),
            ("in-s2s", _definition("in-s2s", "s2s.checkpoints", owner)),
            (
                "expires",
                _definition(
                    "expires",
                    "pub.x",
                    owner,
                    select="*, (SELECT count(*) FROM ducklake_expire_snapshots('lake', "
                    "older_than => now())) AS n",
                ),
            ),
            ("twice", _definition("twice", "pub.x", owner)),
            ("twice", _definition("twice", "pub.y", owner)),
            (None, _definition("nameless", "pub.x", owner)),
        ]
        # Ingest added columns for the fields of the rows it landed.
        cursor.execute("ALTER TABLE s2s.materializations ADD COLUMN extra BIGINT")
        cursor.execute("ALTER TABLE s2s.checkpoints ADD COLUMN extra BIGINT")
        for name, definition in rows:
            cursor.execute(
                "INSERT INTO s2s.materializations (name, definition, extra) VALUES (?, ?, 1)",
                [name, definition],
            )
        cursor.execute(
            "INSERT INTO s2s.checkpoints (name, last_seq_num, extra) "
            "VALUES ('pub.good', 999, 1), ('not-json', NULL, 1)"
        )
    finally:
        conn.close()


DAMAGED = ["not-json", "unknown-field", "wrong-type", "in-s2s", "expires", "twice", "pub.good"]


def test_damaged_internal_rows_are_skipped_and_reported_and_the_rest_runs(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    first = ServerProcess(str(data_dir), extra_args=SERVER_ARGS).start()
    lake = LakeClient(first.http_url)
    try:
        lake.declare("pub.good")
        lake.ingest_ok("pub.good", [{"id": 1}])
        lake.declare("pub.other")
        lake.ingest_ok("pub.other", [{"id": 10}])
    finally:
        lake.close()
        first.stop()
    _damage_catalog(data_dir)

    second = ServerProcess(str(data_dir), extra_args=SERVER_ARGS).start()
    lake = LakeClient(second.http_url)
    try:
        # `good` now has two checkpoints (its own and the injected one): ambiguous, skipped.
        # `other` is untouched and keeps running.
        lake.ingest_ok("pub.other", [{"id": 11}])
        assert lake.rows("SELECT id FROM pub.other ORDER BY id") == [[10], [11]]
        assert lake.status("pub.other")["state"] == "running"
        listed = [
            m["name"] for m in lake.http.get("/v1/lake/materializations").json()["materializations"]
        ]
        assert listed == ["pub.other"]
        warnings = [line for line in second.log if "is not started" in line]
        for name in DAMAGED:
            reported = [line for line in warnings if f"'{name}'" in line]
            assert len(reported) == (2 if name == "twice" else 1), (name, warnings)
        assert any("(unnamed)" in line for line in warnings), warnings
        assert "Traceback" not in "".join(second.log)

        # A damaged one is named as such, cannot be declared over, and can be deleted.
        missing = lake.http.get("/v1/lake/materializations/expires")
        assert missing.status_code == 404 and "damaged" in missing.json()["message"]
        again = lake.http.post(
            "/v1/lake/materializations",
            json={"name": "expires", "table": "pub.expires", "create_table": True},
        )
        assert again.status_code == 409 and "damaged" in again.json()["message"]
        assert lake.http.delete("/v1/lake/materializations/expires").status_code == 204
        lake.declare("pub.expires", name="expires")
        # The extra columns do not break declarations (they answered 500 before).
        lake.declare("pub.fresh")
        lake.ingest_ok("pub.fresh", [{"id": 5}])
        assert lake.rows("SELECT id FROM pub.fresh") == [[5]]
    finally:
        lake.close()
        second.stop()
