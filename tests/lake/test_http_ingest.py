"""`POST /v2/stream` and `GET /v2/stream/errors` end to end: a real server, real HTTP, and
SQL to check what reached the table."""

from __future__ import annotations

import gzip
import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import zstandard

from server.lake.ingest import MAX_DEPTH, MAX_FIELD_BYTES, MAX_PAYLOAD_BYTES, MAX_ROWS
from tests.lake.conftest import LakeClient

pytestmark = pytest.mark.xdist_group("test_http_ingest")

NDJSON = "application/x-ndjson"


def _nested(depth: int) -> dict[str, Any]:
    """A row whose nesting is `depth` levels, the row itself being level 1."""
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"x": value}
    return value


def _tail(lake: LakeClient, table: str) -> int:
    tail: int = lake.status(table)["tail_seq_num"]
    return tail


def test_append_with_wait_is_visible_exactly_once(lake: LakeClient, table: str) -> None:
    lake.declare(table)
    result = lake.ingest_ok(table, [{"id": 1, "v": "a"}, {"id": 2, "v": "b"}, {"id": 3}])
    assert result["success"] is True
    assert (result["accepted"], result["successful_rows"], result["rejected_rows"]) == (3, 3, 0)
    assert result["table"] == f"lake.{table}"
    assert result["stream_id"] == f"lake-ingest/{table}"
    assert lake.rows(f"SELECT id, v FROM lake.{table} ORDER BY id") == [
        [1, "a"],
        [2, "b"],
        [3, None],
    ]


def test_merge_upserts_by_primary_key(lake: LakeClient, table: str) -> None:
    lake.declare(table, mode="merge", primary_key="id")
    merge = {"mode": "merge", "primary_key": "id"}
    lake.ingest_ok(table, [{"id": 1, "v": "a"}, {"id": 2, "v": "b"}], **merge)
    lake.ingest_ok(table, [{"id": 1, "v": "c"}, {"id": 3, "v": "d"}], **merge)
    query = f"SELECT id, v FROM lake.{table} ORDER BY id"
    assert lake.rows(query) == [[1, "c"], [2, "b"], [3, "d"]]


def test_duplicate_key_in_one_request_writes_nothing(lake: LakeClient, table: str) -> None:
    lake.declare(table, mode="merge", primary_key="id")
    merge = {"mode": "merge", "primary_key": "id"}
    lake.ingest_ok(table, [{"id": 1, "v": "a"}], **merge)
    tail = _tail(lake, table)
    response = lake.ingest(table, [{"id": 2, "v": "x"}, {"id": 2, "v": "y"}], wait=True, **merge)
    assert response.status_code == 422
    body = response.json()
    assert body["success"] is False and body["accepted"] == 0
    assert body["errors"][0]["code"] == "duplicate_primary_key"
    assert _tail(lake, table) == tail
    assert lake.rows(f"SELECT id, v FROM lake.{table}") == [[1, "a"]]


def test_mode_mismatch_is_refused_in_the_failure_shape(lake: LakeClient, table: str) -> None:
    lake.declare(table)
    response = lake.ingest(table, [{"id": 1}], mode="merge", primary_key="id")
    assert response.status_code == 422
    body = response.json()
    assert body["success"] is False and body["table"] == f"lake.{table}"
    assert body["errors"][0]["code"] == "invalid"
    assert "append" in body["errors"][0]["message"]


@pytest.mark.parametrize("encoding", ["gzip", "zstd"])
def test_ndjson_compressed(lake: LakeClient, table: str, encoding: str) -> None:
    lake.declare(table)
    text = "".join(json.dumps({"id": i, "name": f"n{i}"}) + "\n" for i in range(100))
    compress = gzip.compress if encoding == "gzip" else zstandard.compress
    response = lake.http.post(
        "/v2/stream",
        params={"table": table, "wait": "true"},
        content=compress(text.encode()),
        headers={"content-type": NDJSON, "content-encoding": encoding},
    )
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 100
    assert lake.rows(f"SELECT count(*), count(DISTINCT id), max(name) FROM lake.{table}") == [
        [100, 100, "n99"]
    ]


def _assert_refused(response: Any, status: int, code: str, *named: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["errors"][0]
    assert error["code"] == code
    for text in named:
        assert text in error["message"]


def test_payload_limit(lake: LakeClient, table: str) -> None:
    lake.declare(table)
    response = lake.http.post(
        "/v2/stream",
        params={"table": table},
        content=b" " * (MAX_PAYLOAD_BYTES + 1),
        headers={"content-type": NDJSON},
    )
    _assert_refused(response, 413, "payload_too_large", str(MAX_PAYLOAD_BYTES))
    assert _tail(lake, table) == 0


def test_gzip_bomb_is_refused(lake: LakeClient, table: str) -> None:
    lake.declare(table)
    row = json.dumps({"pad": "x" * 1000}).encode() + b"\n"
    bomb = gzip.compress(row * (2 * MAX_PAYLOAD_BYTES // len(row)))
    assert len(bomb) < MAX_PAYLOAD_BYTES // 100
    response = lake.http.post(
        "/v2/stream",
        params={"table": table},
        content=bomb,
        headers={"content-type": NDJSON, "content-encoding": "gzip"},
    )
    _assert_refused(response, 413, "payload_too_large", "decompressed", str(MAX_PAYLOAD_BYTES))
    assert _tail(lake, table) == 0


def test_row_count_limit(lake: LakeClient, table: str) -> None:
    lake.declare(table)
    response = lake.ingest(table, [{"i": 1}] * (MAX_ROWS + 1))
    _assert_refused(response, 422, "too_many_rows", str(MAX_ROWS + 1), str(MAX_ROWS))
    assert _tail(lake, table) == 0


def test_field_size_limit(lake: LakeClient, table: str) -> None:
    lake.declare(table)
    response = lake.ingest(table, [{"ok": 1}, {"big": "x" * (MAX_FIELD_BYTES + 1)}])
    _assert_refused(response, 422, "field_too_large", "'big'", str(MAX_FIELD_BYTES))
    assert _tail(lake, table) == 0


def test_depth_limit(lake: LakeClient, table: str) -> None:
    lake.declare(table)
    lake.ingest_ok(table, [_nested(MAX_DEPTH)])
    tail = _tail(lake, table)
    response = lake.ingest(table, [_nested(MAX_DEPTH + 1)])
    _assert_refused(response, 422, "nesting_too_deep", f"{MAX_DEPTH} levels")
    assert _tail(lake, table) == tail


def test_validation_comes_before_the_table_lookup(lake: LakeClient, table: str) -> None:
    response = lake.http.post("/v2/stream", json={"config": {"table": table}})
    _assert_refused(response, 400, "invalid_request", "'data'")
    _assert_refused(lake.ingest(table, [_nested(MAX_DEPTH + 1)]), 422, "nesting_too_deep")
    response = lake.http.post("/v2/stream", content=b"{}", headers={"content-type": "text/csv"})
    _assert_refused(response, 415, "unsupported_media_type")
    response = lake.ingest(table, [{"id": 1}])
    _assert_refused(response, 404, "table_not_found", table)
    assert response.json()["table"] == f"lake.{table}"


def test_coercion_and_rejections_by_column(lake: LakeClient, table: str) -> None:
    lake.declare(table)
    lake.ingest_ok(table, [{"n": 1}])
    result = lake.ingest_ok(table, [{"n": "42"}, {"n": 2.5}])
    assert result["success"] is False
    assert (result["accepted"], result["successful_rows"], result["rejected_rows"]) == (2, 1, 1)
    [rejected] = result["rejected"]
    assert rejected["index"] == 1 and rejected["code"] == "rejected"
    assert "'n'" in rejected["message"] and "BIGINT" in rejected["message"]
    assert lake.rows(f"SELECT n FROM lake.{table} ORDER BY n") == [[1], [42]]
    response = lake.http.get("/v2/stream/errors", params={"table": table, "limit": "10"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["table"] == table
    [dead] = body["errors"]
    assert "'n'" in dead["reason"] and json.loads(dead["body"]) == {"n": 2.5}


def test_dead_letters_need_a_table(lake: LakeClient) -> None:
    response = lake.http.get("/v2/stream/errors")
    assert response.status_code == 400
    assert response.json()["code"] == "bad_query"


def test_schema_evolution_adds_columns(lake: LakeClient, table: str) -> None:
    lake.declare(table)
    lake.ingest_ok(table, [{"a": 1}])
    lake.ingest_ok(table, [{"a": 2, "b": "x"}])
    assert lake.rows(f"SELECT a, b FROM lake.{table} ORDER BY a") == [[1, None], [2, "x"]]


def test_rows_that_are_not_objects_are_rejected_by_index(lake: LakeClient, table: str) -> None:
    lake.declare(table)
    result = lake.ingest_ok(table, [{"id": 1}, 5, None, {"id": 2}, [1]])
    assert result["accepted"] == 2 and result["success"] is False
    assert [(r["index"], r["code"]) for r in result["rejected"]] == [
        (1, "not_an_object"),
        (2, "not_an_object"),
        (4, "not_an_object"),
    ]
    text = '{"id": 3}\n"str"\n{broken\n{"id": 4}\n'
    response = lake.http.post(
        "/v2/stream",
        params={"table": table, "wait": "1"},
        content=text.encode(),
        headers={"content-type": NDJSON},
    )
    assert response.status_code == 200, response.text
    assert [(r["index"], r["code"]) for r in response.json()["rejected"]] == [
        (1, "not_an_object"),
        (2, "invalid_json"),
    ]
    assert lake.rows(f"SELECT id FROM lake.{table} ORDER BY id") == [[1], [2], [3], [4]]


def test_metrics_count_requests_rows_and_errors(lake: LakeClient, table: str) -> None:
    lake.declare(table)
    lake.ingest_ok(table, [{"n": 1}])
    before = {
        name: lake.metric(f"s2s_lake_ingest_{name}_total", table=table)
        for name in ("requests", "rows_accepted", "rows_rejected", "errors")
    }
    lake.ingest_ok(table, [{"n": 2}, {"n": 2.5}, 7])
    _assert_refused(lake.ingest(table, [{"n": 3}], mode="merge", primary_key="n"), 422, "invalid")
    after = {name: lake.metric(f"s2s_lake_ingest_{name}_total", table=table) for name in before}
    assert after["requests"] - before["requests"] == 2
    assert after["rows_accepted"] - before["rows_accepted"] == 2
    assert after["rows_rejected"] - before["rows_rejected"] == 2
    assert after["errors"] - before["errors"] == 1
    assert lake.metric("s2s_lake_materialization_rows_applied_total", name=table) == 2
    assert lake.metric("s2s_lake_materialization_rows_rejected_total", name=table) == 1
    assert lake.metric("s2s_lake_materialization_lag_records", name=table) == 0


def test_applied_ingest_records_are_trimmed_from_the_stream(lake: LakeClient, table: str) -> None:
    lake.declare(table)
    rows = [{"i": i, "pad": "p" * 100} for i in range(12_000)]  # > TRIM_AFTER_RECORDS
    result = lake.ingest_ok(table, rows)
    assert result["successful_rows"] == 12_000
    assert lake.rows(f"SELECT count(*), count(DISTINCT i) FROM {table}") == [[12_000, 12_000]]
    # The ingest stream keeps nothing the table already has: the first readable record is
    # past the applied ones (the trim is appended right after the commit).
    stream = {"s2-basin": "lake-ingest"}
    deadline = time.monotonic() + 15
    while True:
        response = lake.http.get(
            f"/v1/streams/{table}/records", params={"seq_num": 0, "count": 1}, headers=stream
        )
        assert response.status_code == 200, response.text
        records = response.json()["records"]
        if not records or records[0]["seq_num"] >= 12_000 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert not records or records[0]["seq_num"] >= 12_000, records[:1]


def test_tags_reach_the_projection_as_headers(lake: LakeClient, table: str) -> None:
    lake.declare(
        table,
        select="(body->>'id')::INT AS id, headers['tag:source'] AS source, seq_num",
        where="headers['tag:source'] <> 'ignored'",
    )
    lake.ingest_ok(table, [{"id": 1}, {"id": 2}], tags={"source": "my-app"})
    lake.ingest_ok(table, [{"id": 3}], tags={"source": "ignored"})
    lake.ingest_ok(table, [{"id": 4}])  # no tags: no header, so the predicate is NULL
    assert lake.rows(f"SELECT id, source, seq_num FROM {table} ORDER BY id") == [
        [1, "my-app", 0],
        [2, "my-app", 1],
    ]


def test_tags_that_are_not_strings_arrive_as_their_json_text(lake: LakeClient, table: str) -> None:
    """A tag's value became its Python repr (`{'a': 1}`, `True`) before: JSON text now."""
    lake.declare(
        table,
        select="(body->>'id')::INT AS id, headers['tag:n'] AS n, headers['tag:ok'] AS ok, "
        "headers['tag:obj'] AS obj",
    )
    lake.ingest_ok(table, [{"id": 1}], tags={"n": 2, "ok": True, "obj": {"a": 1, "b": "é"}})
    assert lake.rows(f"SELECT id, n, ok, obj FROM {table}") == [[1, "2", "true", '{"a":1,"b":"é"}']]


def test_concurrent_first_ingests_into_an_existing_table_declare_it_once(
    lake: LakeClient, table: str
) -> None:
    lake.declare(table)
    lake.ingest_ok(table, [{"n": 0}])
    name = table  # LakeClient.declare names the materialization after the table
    assert lake.http.delete(f"/v1/lake/materializations/{name}").status_code == 204
    # The table stays; the next ingests find no materialization and declare one, racing.
    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda n: lake.ingest(table, [{"n": n}], wait=True), range(1, 7)))
    assert [r.status_code for r in responses] == [200] * 6, [r.text for r in responses]
    assert lake.rows(f"SELECT count(*), count(DISTINCT n) FROM {table}") == [[7, 7]]
    names = [
        m["name"] for m in lake.http.get("/v1/lake/materializations").json()["materializations"]
    ]
    assert names.count(f"ingest.{table}") == 1


def test_apply_time_rejections_report_the_request_index(lake: LakeClient, table: str) -> None:
    lake.declare(table)
    lake.ingest_ok(table, [{"n": 1}])
    # Row 0 is refused at parse time, so the bad row 2 is the second *accepted* row.
    result = lake.ingest_ok(table, [7, {"n": 3}, {"n": 2.5}])
    assert [(r["index"], r["code"]) for r in result["rejected"]] == [
        (0, "not_an_object"),
        (2, "rejected"),
    ]
