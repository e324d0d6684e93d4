"""The lake on a PostgreSQL catalog (a real server from tests/postgres.py) with a shared data
path: rows ingested through one s2s server are committed in PostgreSQL and readable from a
second server that has its own data directory but the same catalog."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.postgres import PostgresServer, running_postgres
from tests.server_process import ServerProcess

pytestmark = pytest.mark.xdist_group("postgres")


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


def _server(data_dir: Path, postgres: PostgresServer, shared: Path) -> ServerProcess:
    return ServerProcess(
        str(data_dir),
        extra_args=[
            "--lake-catalog",
            postgres.ducklake_catalog(),
            "--lake-data-path",
            str(shared),
            "--lake-linger-ms",
            "50",
        ],
    ).start()


def _count(http: httpx.Client, table: str) -> int:
    response = http.post("/v1/lake/query", json={"sql": f"SELECT count(*) FROM {table}"})
    assert response.status_code == 200, response.text
    count: int = response.json()["rows"][0][0]
    return count


def test_shared_postgres_catalog(postgres: PostgresServer, tmp_path: Path) -> None:
    shared = tmp_path / "shared-data"
    first = _server(tmp_path / "one", postgres, shared)
    try:
        with httpx.Client(base_url=first.http_url, timeout=60) as http:
            created = http.post(
                "/v1/lake/materializations",
                json={"name": "pg-events", "table": "bronze.pg_events", "create_table": True},
            )
            assert created.status_code == 201, created.text
            rows = [{"id": i, "kind": "k" * (i % 5)} for i in range(500)]
            response = http.post(
                "/v2/stream",
                json={"data": rows, "config": {"table": "bronze.pg_events", "wait": True}},
            )
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["successful_rows"] == 500 and body["snapshot_id"] is not None
            assert _count(http, "bronze.pg_events") == 500
    finally:
        assert first.stop() == 0
    # The commit is in PostgreSQL: its snapshot, the table and the lake's checkpoint table.
    snapshots = int(postgres.psql("SELECT max(snapshot_id) FROM ducklake_snapshot"))
    assert snapshots >= body["snapshot_id"]
    tables = set(postgres.psql("SELECT table_name FROM ducklake_table").split())
    assert {"pg_events", "checkpoints", "dead_letters"} <= tables

    second = _server(tmp_path / "two", postgres, shared)
    try:
        with httpx.Client(base_url=second.http_url, timeout=60) as http:
            assert _count(http, "bronze.pg_events") == 500
            listed = http.get("/v1/lake/materializations").json()["materializations"]
            assert listed == []  # the first server owns it: its source stream lives there
    finally:
        assert second.stop() == 0
