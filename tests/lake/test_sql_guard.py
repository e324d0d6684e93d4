"""User SQL reads only the lake's tables, whatever the statement looks like (issue 12, item 1).

A real server over its real ports, HTTP and gRPC. `EXPLAIN ANALYZE` runs the statement it
explains, so before the SQL guard `EXPLAIN ANALYZE COPY ... TO '<catalog>'` answered 200 and
overwrote the DuckLake catalog; file functions read the lake directory, and the
settings/databases functions showed absolute paths. Each attack must be refused with
`read_only_sql` naming what was refused, change nothing, and leave a server that restarts.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import grpc
import pytest

from client import S2SClient, S2SError
from tests.lake.conftest import LakeClient
from tests.server_process import ServerProcess

pytestmark = pytest.mark.xdist_group("test_sql_guard")


@pytest.fixture(scope="module", autouse=True)
def _tables(lake: LakeClient) -> None:
    """Two small tables the reading tests join."""
    lake.declare("guard.orders")
    lake.ingest_ok(
        "guard.orders",
        [{"id": i, "customer": i % 3, "amount": i * 1.5, "kind": "k"} for i in range(10)],
    )
    lake.declare("guard.customers")
    lake.ingest_ok("guard.customers", [{"id": i, "name": f"c{i}"} for i in range(3)])


def _lake_dir(server: ServerProcess) -> Path:
    return Path(server.data_dir) / "lake"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _refused(lake: LakeClient, sql: str, *named: str) -> str:
    response = lake.sql(sql)
    assert response.status_code == 400, (sql, response.text)
    body = response.json()
    assert body["code"] == "read_only_sql", (sql, body)
    message: str = body["message"]
    for word in named:
        assert word.lower() in message.lower(), (sql, message)
    return message


# --- the catalog overwrite -----------------------------------------------------------------


async def test_explain_analyze_copy_over_the_catalog_is_refused_and_the_server_restarts(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    catalog = data_dir / "lake" / "catalog.ducklake"
    attack = f"EXPLAIN ANALYZE COPY (SELECT 'x' AS x) TO '{catalog}' (FORMAT csv)"
    first = ServerProcess(str(data_dir), extra_args=["--lake-linger-ms", "100"]).start()
    lake = LakeClient(first.http_url)
    try:
        lake.declare("keep.rows")
        lake.ingest_ok("keep.rows", [{"id": 1}, {"id": 2}])
        before = _digest(catalog)
        for sql in (attack, attack.replace("EXPLAIN ANALYZE", "EXPLAIN")):
            message = _refused(lake, sql, "EXPLAIN")
            assert str(catalog) not in message
        _refused(lake, "EXPLAIN ANALYZE SELECT * FROM keep.rows", "EXPLAIN")
        assert _digest(catalog) == before
        async with S2SClient(first.target) as client:
            with pytest.raises(S2SError) as info:
                await client.sql(attack)
            assert info.value.code == "read_only_sql"
            assert info.value.status == grpc.StatusCode.INVALID_ARGUMENT
        assert _digest(catalog) == before
    finally:
        lake.close()
        first.stop()
    second = ServerProcess(str(data_dir)).start()
    try:
        async with S2SClient(second.target) as client:
            result = await client.sql("SELECT id FROM keep.rows ORDER BY id")
            assert result.table.to_pylist() == [{"id": 1}, {"id": 2}]
    finally:
        second.stop()


# --- files, settings and paths ---------------------------------------------------------------


def test_lake_files_are_unreadable(lake: LakeClient, lake_server: ServerProcess) -> None:
    root = _lake_dir(lake_server)
    catalog = root / "catalog.ducklake"
    for sql, named in [
        (f"SELECT * FROM read_blob('{catalog}')", "read_blob"),
        (f"SELECT * FROM read_blob('{root}/**')", "read_blob"),
        (f"SELECT * FROM glob('{root}/**')", "glob"),
        (f"SELECT * FROM read_text('{root}/server-id')", "read_text"),
        (f"SELECT * FROM read_csv('{root}/server-id')", "read_csv"),
        (f"SELECT * FROM read_parquet('{root}/data/**/*.parquet')", "read_parquet"),
        (f"SELECT * FROM parquet_metadata('{root}/data/**/*.parquet')", "parquet_metadata"),
        (f"SELECT * FROM sniff_csv('{root}/server-id')", "sniff_csv"),
        (f"SELECT * FROM '{root}/server-id'", "table"),
        (f"SELECT * FROM '{catalog}'", "table"),
        (f"SELECT * FROM query('SELECT * FROM read_blob(''{catalog}'')')", "query"),
        ("SELECT * FROM query_table('x')", "query_table"),
        ("SELECT * FROM ducklake_list_files('lake', 'orders', schema => 'guard')", "ducklake"),
        (f"SELECT (SELECT count(*) FROM glob('{root}/**')) AS n", "glob"),
        (f"WITH f AS (SELECT * FROM read_blob('{catalog}')) SELECT * FROM f", "read_blob"),
        (f"DESCRIBE SELECT * FROM read_csv('{root}/server-id')", "read_csv"),
        (f"SUMMARIZE SELECT * FROM read_blob('{catalog}')", "read_blob"),
    ]:
        message = _refused(lake, sql, named)
        assert server_id(lake_server) not in message


def server_id(server: ServerProcess) -> str:
    return (_lake_dir(server) / "server-id").read_text().strip()


def test_settings_databases_and_paths_are_hidden(
    lake: LakeClient, lake_server: ServerProcess
) -> None:
    root = str(_lake_dir(lake_server))
    for sql, named in [
        ("SELECT * FROM duckdb_settings()", "duckdb_settings"),
        ("SELECT * FROM duckdb_databases()", "duckdb_databases"),
        ("SELECT * FROM duckdb_databases", "duckdb_databases"),
        ("SELECT * FROM pg_catalog.pg_database", "duckdb_databases"),
        ("SELECT * FROM pg_catalog.pg_settings", "duckdb_settings"),
        ("SELECT * FROM pragma_database_list", "duckdb_databases"),
        ("SHOW DATABASES", "duckdb_databases"),
        ("SELECT * FROM duckdb_extensions()", "duckdb_extensions"),
        ("SELECT * FROM pragma_database_size()", "pragma_database_size"),
        ("SELECT current_setting('temp_directory')", "current_setting"),
        ("SELECT upper(current_setting('extension_directory')) AS d", "current_setting"),
        ("SELECT getvariable('x')", "getvariable"),
        ("SELECT * FROM range(3) WHERE current_setting('threads') IS NOT NULL", "current_setting"),
        ("SELECT json_serialize_plan('SELECT 1')", "json_serialize_plan"),
        ("SELECT * FROM json_execute_serialized_sql('{}')", "json_execute_serialized_sql"),
        ("SELECT setseed(0.5)", "setseed"),
        ("SELECT write_log('x')", "write_log"),
        ("SELECT sleep_ms(1)", "sleep_ms"),
        ("SELECT get_block_size('lake')", "get_block_size"),
        ("SELECT * FROM __ducklake_metadata_lake.main.ducklake_data_file", "lake"),
        ("SELECT * FROM __ducklake_metadata_lake.ducklake_data_file", "lake"),
        ("SELECT * FROM system.main.duckdb_settings()", "duckdb_settings"),
    ]:
        message = _refused(lake, sql, named)
        assert root not in message


def test_writes_and_maintenance_in_any_disguise_are_refused(lake: LakeClient) -> None:
    for sql, named in [
        ("EXPLAIN ANALYZE DELETE FROM guard.orders", "EXPLAIN"),
        ("EXPLAIN ANALYZE CREATE TABLE guard.sneaky AS SELECT 1 AS x", "EXPLAIN"),
        ("SELECT * FROM ducklake_expire_snapshots('lake', older_than => now())", "ducklake"),
        ("SELECT * FROM ducklake_cleanup_old_files('lake', cleanup_all => true)", "ducklake"),
        ("SELECT * FROM ducklake_merge_adjacent_files('lake')", "ducklake"),
        ("SELECT * FROM ducklake_flush_inlined_data('lake')", "ducklake"),
        ("SELECT * FROM ducklake_set_option('lake', 'x', 'y')", "ducklake"),
        ("SELECT * FROM checkpoint()", "checkpoint"),
        ("SELECT nextval('s')", "nextval"),
        ("CALL ducklake_expire_snapshots('lake', older_than => now())", "CALL"),
        ("PRAGMA database_list", "PRAGMA"),
        ("SET threads = 1", "SET"),
    ]:
        _refused(lake, sql, named)
    assert lake.rows("SELECT count(*) FROM guard.orders") == [[10]]
    sneaky = "SELECT count(*) FROM information_schema.tables WHERE table_name = 'sneaky'"
    assert lake.rows(sneaky) == [[0]]


def test_malformed_sql_stays_bad_sql(lake: LakeClient) -> None:
    deep = "SELECT " + "abs(" * 600 + "1" + ")" * 600  # deeper than Python's JSON parser goes
    for sql in ["SELEC 1", "SELECT * FROM guard.does_not_exist", "SELECT 1; SELECT 2", deep]:
        response = lake.sql(sql)
        assert response.status_code == 400 and response.json()["code"] == "bad_sql", sql


# --- what still works --------------------------------------------------------------------------


def test_reads_of_the_lake_still_work(lake: LakeClient) -> None:
    joined = lake.rows(
        "WITH totals AS (SELECT customer, sum(amount) AS total, count(*) AS n "
        "FROM guard.orders GROUP BY customer) "
        "SELECT c.name, t.total, t.n FROM totals AS t JOIN lake.guard.customers AS c "
        "ON c.id = t.customer ORDER BY c.name"
    )
    assert joined == [["c0", 27.0, 4], ["c1", 18.0, 3], ["c2", 22.5, 3]]
    assert lake.rows(
        "SELECT id, r FROM (SELECT id, row_number() OVER (PARTITION BY customer "
        "ORDER BY id DESC) AS r FROM guard.orders) "
        "WHERE id IN (SELECT id FROM guard.customers) ORDER BY id"
    ) == [[0, 4], [1, 3], [2, 3]]
    assert lake.rows("FROM guard.customers SELECT name ORDER BY id LIMIT 1") == [["c0"]]
    assert lake.rows(
        "SELECT count(*) FROM guard.orders o, LATERAL (SELECT o.id + 1 AS next) n "
        "WHERE EXISTS (SELECT 1 FROM guard.customers c WHERE c.id = o.customer)"
    ) == [[10]]
    assert lake.rows(
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) "
        "SELECT list(n ORDER BY n) FROM r"
    ) == [[[1, 2, 3]]]
    assert lake.rows("SELECT * FROM range(2) UNION ALL SELECT * FROM generate_series(5, 5)") == [
        [0],
        [1],
        [5],
    ]
    assert lake.rows("SELECT unnest([1, 2]) AS u") == [[1], [2]]
    assert lake.rows(
        "SELECT c.id, u.x FROM guard.customers c, unnest([c.id * 10]) AS u(x) ORDER BY c.id"
    ) == [[0, 0], [1, 10], [2, 20]]
    assert lake.rows("SELECT random() < 2, length(uuid()::VARCHAR)") == [[True, 36]]
    described = lake.rows("DESCRIBE guard.customers")
    assert [row[0] for row in described] == ["id", "name"]
    assert [row[0] for row in lake.rows("SHOW guard.customers")] == ["id", "name"]
    summary = lake.rows("SUMMARIZE guard.orders")
    assert sorted(row[0] for row in summary) == ["amount", "customer", "id", "kind"]
    tables = lake.rows("SHOW ALL TABLES")
    assert any(row[1:3] == ["guard", "orders"] for row in tables), tables
    assert ["orders"] in lake.rows(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'guard'"
    )
    assert lake.rows(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = 'guard' AND table_name = 'customers' ORDER BY ordinal_position"
    ) == [["id"], ["name"]]
    snapshots = lake.rows("SELECT count(*) > 0 FROM ducklake_snapshots('lake')")
    assert snapshots == [[True]]
    assert lake.rows(
        "SELECT count(*) FROM s2s.dead_letters WHERE target_table = 'guard.orders'"
    ) == [[0]]


async def test_the_grpc_query_is_guarded_too(lake_server: ServerProcess, lake: LakeClient) -> None:
    root = _lake_dir(lake_server)
    async with S2SClient(lake_server.target) as client:
        for sql in [
            f"EXPLAIN ANALYZE COPY (SELECT 1 AS x) TO '{root}/x.csv' (FORMAT csv)",
            f"SELECT * FROM read_blob('{root}/catalog.ducklake')",
            f"SELECT * FROM glob('{root}/**')",
            "SELECT * FROM duckdb_settings()",
            "SELECT * FROM duckdb_databases()",
            "SELECT current_setting('temp_directory') AS t",
        ]:
            with pytest.raises(S2SError) as info:
                await client.sql(sql)
            assert info.value.code == "read_only_sql", sql
            assert info.value.status == grpc.StatusCode.INVALID_ARGUMENT
            assert str(root) not in info.value.message
        result = await client.sql(
            "SELECT c.name, count(*) AS n FROM guard.orders o JOIN guard.customers c "
            "ON c.id = o.customer GROUP BY ALL ORDER BY c.name"
        )
        assert result.table.to_pylist() == [
            {"name": "c0", "n": 4},
            {"name": "c1", "n": 3},
            {"name": "c2", "n": 3},
        ]
    assert not (root / "x.csv").exists()
