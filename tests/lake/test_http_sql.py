"""`POST /v1/lake/query` and the materialization routes end to end: a real server, real HTTP.

Covers JSON and Arrow results, the read-only fences, truncation, and the materialization
lifecycle (declare, list, pause, resume, delete).
"""

from __future__ import annotations

import time

import pyarrow as pa
import pytest

from tests.lake.conftest import LakeClient

pytestmark = pytest.mark.xdist_group("test_http_sql")

ARROW = "application/vnd.apache.arrow.stream"


def test_json_result_shape_and_values(lake: LakeClient) -> None:
    response = lake.sql(
        "SELECT 1 AS i, 'x' AS s, 12.34::DECIMAL(6, 2) AS d, "
        "TIMESTAMP '2024-01-02 03:04:05' AS ts, DATE '2024-01-02' AS day, "
        "'\\xFF\\x00'::BLOB AS b, 'nan'::DOUBLE AS f, [1, 2] AS l, NULL AS z"
    )
    assert response.status_code == 200, response.text
    assert response.headers["s2s-truncated"] == "false"
    body = response.json()
    assert [column["name"] for column in body["columns"]] == [
        "i", "s", "d", "ts", "day", "b", "f", "l", "z",
    ]  # fmt: skip
    assert body["columns"][2]["type"] == "decimal128(6, 2)"
    assert body["rows"] == [
        [1, "x", "12.34", "2024-01-02T03:04:05", "2024-01-02", "/wA=", "NaN", [1, 2], None]
    ]
    assert (body["row_count"], body["truncated"]) == (1, False)


def test_arrow_result(lake: LakeClient, table: str) -> None:
    lake.declare(table)
    lake.ingest_ok(table, [{"id": i, "name": f"n{i}"} for i in range(5)])
    response = lake.http.post(
        "/v1/lake/query",
        json={"sql": f"SELECT id, name FROM lake.{table} ORDER BY id"},
        headers={"accept": ARROW},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == ARROW
    assert response.headers["s2s-truncated"] == "false"
    result = pa.ipc.open_stream(response.content).read_all()
    assert result.column_names == ["id", "name"]
    assert result.column("id").to_pylist() == list(range(5))
    assert result.column("name").to_pylist()[-1] == "n4"


def test_truncation_with_limit(lake: LakeClient) -> None:
    body = lake.sql("SELECT range AS n FROM range(50)", limit=10).json()
    assert (body["row_count"], body["truncated"]) == (10, True)
    assert body["rows"] == [[n] for n in range(10)]
    body = lake.sql("SELECT range AS n FROM range(50)", limit=100).json()
    assert (body["row_count"], body["truncated"]) == (50, False)
    response = lake.http.post(
        "/v1/lake/query",
        json={"sql": "SELECT range AS n FROM range(50)", "limit": 7},
        headers={"accept": ARROW},
    )
    assert response.headers["s2s-truncated"] == "true"
    assert pa.ipc.open_stream(response.content).read_all().num_rows == 7
    assert lake.sql("SELECT 1", limit=0).status_code == 422


def _refused(lake: LakeClient, sql: str, code: str) -> str:
    response = lake.sql(sql)
    assert response.status_code == 400, (sql, response.text)
    body = response.json()
    assert body["code"] == code, (sql, body)
    message: str = body["message"]
    return message


def test_write_statements_are_refused_and_change_nothing(
    lake: LakeClient, table: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    lake.declare(table)
    lake.ingest_ok(table, [{"id": 1}])
    target = tmp_path_factory.mktemp("copy") / "out.csv"
    statements = [
        f"INSERT INTO lake.{table} VALUES (2)",
        f"UPDATE lake.{table} SET id = 3",
        f"DELETE FROM lake.{table}",
        "CREATE TABLE lake.bronze.sneaky (id BIGINT)",
        f"DROP TABLE lake.{table}",
        f"COPY lake.{table} TO '{target}'",
        f"ATTACH '{target}.db' AS other",
    ]
    for sql in statements:
        _refused(lake, sql, "read_only_sql")
    assert lake.rows(f"SELECT id FROM lake.{table}") == [[1]]
    assert not target.exists()
    sneaky = "SELECT count(*) FROM information_schema.tables WHERE table_name = 'sneaky'"
    assert lake.rows(sneaky) == [[0]]


def test_multiple_statements_are_refused(lake: LakeClient, table: str) -> None:
    lake.declare(table)
    lake.ingest_ok(table, [{"id": 1}])
    message = _refused(lake, f"SELECT 1; DROP TABLE lake.{table}", "bad_sql")
    assert "one statement" in message
    assert lake.rows(f"SELECT id FROM lake.{table}") == [[1]]


def test_syntax_error_is_bad_sql(lake: LakeClient) -> None:
    _refused(lake, "SELEC 1", "bad_sql")
    _refused(lake, "SELECT * FROM lake.bronze.does_not_exist", "bad_sql")


def test_files_outside_the_lake_are_unreadable(lake: LakeClient) -> None:
    response = lake.sql("SELECT * FROM read_csv('/etc/passwd')")
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "read_only_sql"
    assert "read_csv" in response.json()["message"]
    assert "root" not in response.text


def test_bad_query_bodies(lake: LakeClient) -> None:
    assert lake.http.post("/v1/lake/query", json=["SELECT 1"]).status_code == 422
    assert lake.http.post("/v1/lake/query", json={"sql": ""}).status_code == 422
    assert lake.http.post("/v1/lake/query", content=b"{").status_code == 400


def test_materialization_lifecycle(lake: LakeClient, table: str) -> None:
    status = lake.declare(table)
    assert status["name"] == table and status["table"] == table
    assert status["source"] == {"basin": "lake-ingest", "stream": table}
    duplicate = lake.http.post(
        "/v1/lake/materializations", json={"name": table, "table": table, "create_table": True}
    )
    assert duplicate.status_code == 409
    listed = lake.http.get("/v1/lake/materializations").json()["materializations"]
    assert table in [m["name"] for m in listed]
    lake.ingest_ok(table, [{"id": 1}])

    paused = lake.http.post(f"/v1/lake/materializations/{table}/pause")
    assert paused.status_code == 200 and paused.json()["state"] == "paused"
    assert lake.ingest(table, [{"id": 2}]).status_code == 200
    time.sleep(0.5)  # several linger periods: a running materialization would have applied it
    assert lake.rows(f"SELECT id FROM lake.{table}") == [[1]]
    assert lake.status(table)["lag_records"] == 1

    resumed = lake.http.post(f"/v1/lake/materializations/{table}/resume")
    assert resumed.status_code == 200 and resumed.json()["state"] != "paused"
    lake.wait_for(f"SELECT id FROM lake.{table} ORDER BY id", [[1], [2]])

    assert lake.http.delete(f"/v1/lake/materializations/{table}").status_code == 204
    missing = lake.http.get(f"/v1/lake/materializations/{table}")
    assert missing.status_code == 404
    assert missing.json()["code"] == "materialization_not_found"
    assert lake.http.delete(f"/v1/lake/materializations/{table}").status_code == 404
    assert lake.http.post(f"/v1/lake/materializations/{table}/resume").status_code == 404


def test_invalid_materialization_is_refused(lake: LakeClient) -> None:
    response = lake.http.post("/v1/lake/materializations", json={"name": "x", "table": "nodot"})
    assert response.status_code == 422
    assert response.json()["code"] == "invalid"
