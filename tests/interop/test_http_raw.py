"""The HTTP API without the SDK (httpx): JSON record formats, SSE, idempotent creation, error
bodies and bad input (docs/s2-compat.md §3, §4, §6, §8.1)."""

from __future__ import annotations

import base64
import gzip
import json
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.server_process import ServerProcess


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.http_url, timeout=10) as client:
        yield client


def _basin(http: httpx.Client, name: str, **config: object) -> dict[str, str]:
    response = http.post("/v1/basins", json={"basin": name, "config": config or None})
    assert response.status_code == 201, response.text
    return {"s2-basin": name}


def _stream(http: httpx.Client, basin_name: str, stream: str = "s") -> dict[str, str]:
    headers = _basin(http, basin_name)
    response = http.post("/v1/streams", json={"stream": stream}, headers=headers)
    assert response.status_code == 201, response.text
    return headers


def _error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["code"] == code and isinstance(body["message"], str)


def _tail(http: httpx.Client, headers: dict[str, str], stream: str = "s") -> int:
    response = http.get(f"/v1/streams/{stream}/records/tail", headers=headers)
    assert response.status_code == 200, response.text
    seq_num: int = response.json()["tail"]["seq_num"]
    return seq_num


def test_health_and_ping(http: httpx.Client) -> None:
    for path in ("/health", "/ping"):
        response = http.get(path)
        assert (response.status_code, response.text) == (200, "OK")


def test_http2_prior_knowledge(server: ServerProcess) -> None:
    # The SDK never speaks HTTP/1.1: it opens cleartext connections with the h2 preface.
    with httpx.Client(base_url=server.http_url, http1=False, http2=True) as client:
        response = client.get("/v1/basins")
    assert response.http_version == "HTTP/2" and response.status_code == 200


def test_create_basin_is_idempotent_with_request_token(http: httpx.Client, basin_name: str) -> None:
    body = {"basin": basin_name, "config": {"create_stream_on_append": True}}
    token = {"s2-request-token": "a" * 32}
    first = http.post("/v1/basins", json=body, headers=token)
    assert first.status_code == 201 and first.headers["s2-provision-result"] == "created"
    replay = http.post("/v1/basins", json=body, headers=token)
    assert replay.status_code == 201 and replay.headers["s2-provision-result"] == "noop"
    assert replay.json()["created_at"] == first.json()["created_at"]
    _error(
        http.post("/v1/basins", json=body, headers={"s2-request-token": "b" * 32}),
        409,
        "resource_already_exists",
    )
    _error(http.post("/v1/basins", json=body), 409, "resource_already_exists")
    _error(
        http.post("/v1/basins", json=body, headers={"s2-request-token": "c" * 37}),
        400,
        "bad_header",
    )


def test_ensure_basin_sets_provision_result(http: httpx.Client, basin_name: str) -> None:
    created = http.put(f"/v1/basins/{basin_name}")
    assert created.status_code == 201 and created.headers["s2-provision-result"] == "created"
    same = http.put(f"/v1/basins/{basin_name}")
    assert same.status_code == 200 and same.headers["s2-provision-result"] == "noop"
    assert created.json()["state"] == "active" and created.json()["deleted_at"] is None


def test_configs_are_fully_resolved_json(http: httpx.Client, basin_name: str) -> None:
    headers = _stream(http, basin_name)
    assert http.get("/v1/streams/s", headers=headers).json() == {
        "storage_class": "express",
        "retention_policy": {"age": 604800},
        "timestamping": {"mode": "client-prefer", "uncapped": False},
        "delete_on_empty": {"min_age_secs": 0},
    }
    patched = http.patch(
        "/v1/streams/s", json={"timestamping": {"uncapped": True}}, headers=headers
    )
    assert patched.json()["timestamping"] == {"mode": "client-prefer", "uncapped": True}
    basin = http.get(f"/v1/basins/{basin_name}").json()
    assert basin["create_stream_on_append"] is False and basin["default_stream_config"] is None


def test_bad_input_is_rejected_with_contract_codes(http: httpx.Client, basin_name: str) -> None:
    _error(
        http.post("/v1/basins", content=b"{not json", headers={"content-type": "application/json"}),
        400,
        "bad_json",
    )
    _error(
        http.post(
            "/v1/basins",
            content=json.dumps({"basin": basin_name}),
            headers={"content-type": "text/plain"},
        ),
        400,
        "bad_json",
    )
    _error(http.post("/v1/basins", json={"basin": "Bad_Name!"}), 422, "invalid")
    _error(http.get("/v1/basins/Bad_Name!"), 400, "bad_path")
    _error(http.get("/v1/streams"), 400, "bad_header")
    _error(http.get("/v1/streams", headers={"s2-basin": "UPPER"}), 400, "bad_header")
    _error(http.get("/v1/basins", params={"limit": "many"}), 400, "bad_query")
    _error(http.get("/v1/basins", params={"prefix": "-starts-with-dash"}), 400, "bad_query")
    _error(
        http.put(
            f"/v1/basins/{basin_name}",
            json={"config": {"default_stream_config": {"retention_policy": {"age": 0}}}},
        ),
        422,
        "invalid",
    )
    # None of the rejected requests created anything.
    assert http.get(f"/v1/basins/{basin_name}").status_code == 404


def test_unknown_route_and_wrong_method(http: httpx.Client) -> None:
    assert http.get("/v1/nothing").status_code == 404
    assert http.delete("/v1/basins").status_code == 405


def test_metrics_without_a_time_range(http: httpx.Client) -> None:
    _error(http.get("/v1/metrics", params={"set": "active-basins"}), 422, "invalid")


def test_json_append_and_read_raw(http: httpx.Client, basin_name: str) -> None:
    headers = _stream(http, basin_name)
    append = {
        "records": [
            {"body": "hello", "headers": [["k", "v"]], "timestamp": 1},
            {},
        ],
        "match_seq_num": 0,
    }
    ack = http.post("/v1/streams/s/records", json=append, headers=headers)
    assert ack.status_code == 200, ack.text
    assert ack.json()["start"]["seq_num"] == 0 and ack.json()["end"]["seq_num"] == 2
    read = http.get("/v1/streams/s/records", params={"seq_num": 0}, headers=headers)
    records = read.json()["records"]
    assert records[0]["body"] == "hello" and records[0]["headers"] == [["k", "v"]]
    assert "body" not in records[1] and "headers" not in records[1]
    assert "tail" not in read.json()


def test_json_append_and_read_base64(http: httpx.Client, basin_name: str) -> None:
    headers = {**_stream(http, basin_name), "s2-format": "base64"}
    binary = bytes(range(256))
    record = {"body": base64.b64encode(binary).decode()}
    assert http.post(
        "/v1/streams/s/records", json={"records": [record]}, headers=headers
    ).is_success
    read = http.get("/v1/streams/s/records", params={"seq_num": 0}, headers=headers)
    assert base64.b64decode(read.json()["records"][0]["body"]) == binary
    bad = http.post("/v1/streams/s/records", json={"records": [{"body": "!!"}]}, headers=headers)
    _error(bad, 422, "invalid")
    assert _tail(http, headers) == 1
    _error(
        http.get("/v1/streams/s/records", headers={**headers, "s2-format": "hex"}),
        400,
        "bad_header",
    )


def test_gzip_request_body_is_decompressed(http: httpx.Client, basin_name: str) -> None:
    headers = _stream(http, basin_name)
    body = gzip.compress(json.dumps({"records": [{"body": "zipped"}]}).encode())
    response = http.post(
        "/v1/streams/s/records",
        content=body,
        headers={**headers, "content-type": "application/json", "content-encoding": "gzip"},
    )
    assert response.status_code == 200, response.text
    read = http.get("/v1/streams/s/records", params={"seq_num": 0}, headers=headers)
    assert read.json()["records"][0]["body"] == "zipped"


def test_special_error_bodies_are_bare(http: httpx.Client, basin_name: str) -> None:
    headers = _stream(http, basin_name)
    one = {"records": [{"body": "x"}]}
    assert http.post("/v1/streams/s/records", json=one, headers=headers).is_success
    mismatch = http.post("/v1/streams/s/records", json={**one, "match_seq_num": 5}, headers=headers)
    assert (mismatch.status_code, mismatch.json()) == (412, {"seq_num_mismatch": 1})
    fenced = http.post("/v1/streams/s/records", json={**one, "fencing_token": "t"}, headers=headers)
    assert (fenced.status_code, fenced.json()) == (412, {"fencing_token_mismatch": ""})
    unwritten = http.get("/v1/streams/s/records", params={"seq_num": 1}, headers=headers)
    assert unwritten.status_code == 416
    assert unwritten.json() == {
        "tail": {"seq_num": 1, "timestamp": unwritten.json()["tail"]["timestamp"]}
    }
    assert _tail(http, headers) == 1


def test_read_argument_errors(http: httpx.Client, basin_name: str) -> None:
    headers = _stream(http, basin_name)
    _error(
        http.get("/v1/streams/s/records", params={"seq_num": "-1"}, headers=headers),
        400,
        "bad_query",
    )
    _error(
        http.get("/v1/streams/s/records", params={"seq_num": 0, "tail_offset": 1}, headers=headers),
        422,
        "invalid",
    )


def test_stream_names_route_on_the_undecoded_path(http: httpx.Client, basin_name: str) -> None:
    headers = _basin(http, basin_name)
    name = "a/b/records"
    assert http.post("/v1/streams", json={"stream": name}, headers=headers).status_code == 201
    encoded = "a%2Fb%2Frecords"
    ack = http.post(f"/v1/streams/{encoded}/records", json={"records": [{}]}, headers=headers)
    assert ack.status_code == 200, ack.text
    assert (
        http.get(f"/v1/streams/{encoded}/records/tail", headers=headers).json()["tail"]["seq_num"]
        == 1
    )
    assert http.get(f"/v1/streams/{encoded}", headers=headers).status_code == 200


def _sse_events(text: str) -> list[dict[str, str]]:
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        events.append(fields)
    return events


def test_sse_read_and_resume(http: httpx.Client, basin_name: str) -> None:
    headers = _stream(http, basin_name)
    records = {"records": [{"body": str(i)} for i in range(5)]}
    assert http.post("/v1/streams/s/records", json=records, headers=headers).is_success
    sse = {**headers, "accept": "text/event-stream"}
    response = http.get("/v1/streams/s/records", params={"seq_num": 0, "count": 3}, headers=sse)
    assert response.headers["content-type"] == "text/event-stream"
    events = _sse_events(response.text)
    assert events[-1] == {"data": "[DONE]"}
    batches = [e for e in events if e.get("event") == "batch"]
    bodies = [r["body"] for e in batches for r in json.loads(e["data"])["records"]]
    assert bodies == ["0", "1", "2"]
    assert batches[-1]["id"] == "2,3,27"  # 3 records of 9 metered bytes each
    resumed = http.get(
        "/v1/streams/s/records",
        params={"seq_num": 0, "count": 4},
        headers={**sse, "last-event-id": batches[-1]["id"]},
    )
    resumed_batches = [e for e in _sse_events(resumed.text) if e.get("event") == "batch"]
    assert [r["body"] for e in resumed_batches for r in json.loads(e["data"])["records"]] == ["3"]
    assert resumed_batches[-1]["id"] == "3,4,36"


def test_sse_beyond_tail_is_plain_416(http: httpx.Client, basin_name: str) -> None:
    headers = {**_stream(http, basin_name), "accept": "text/event-stream"}
    response = http.get("/v1/streams/s/records", params={"seq_num": 3}, headers=headers)
    assert (response.status_code, response.json()) == (
        416,
        {"tail": {"seq_num": 0, "timestamp": 0}},
    )


def test_sse_follow_starts_with_ping_carrying_tail(http: httpx.Client, basin_name: str) -> None:
    headers = {**_stream(http, basin_name), "accept": "text/event-stream"}
    with http.stream("GET", "/v1/streams/s/records", headers=headers) as response:
        assert response.status_code == 200
        text = ""
        for chunk in response.iter_text():
            text += chunk
            if "\n\n" in text:
                break
    ping = _sse_events(text.split("\n\n", 1)[0] + "\n\n")[0]
    assert ping["event"] == "ping"
    assert json.loads(ping["data"])["tail"] == {"seq_num": 0, "timestamp": 0}


def test_bad_record_bodies_change_nothing(http: httpx.Client, basin_name: str) -> None:
    headers = _stream(http, basin_name)
    proto = {**headers, "content-type": "application/x-protobuf"}
    _error(
        http.post("/v1/streams/s/records", content=b"\xff\xff\xff", headers=proto), 400, "bad_proto"
    )
    _error(http.post("/v1/streams/s/records", json={"recs": []}, headers=headers), 400, "bad_json")
    _error(
        http.post("/v1/streams/s/records", json={"records": []}, headers=headers), 422, "invalid"
    )
    _error(
        http.post(
            "/v1/streams/s/records",
            json={"records": [{"headers": [["only-name"]]}]},
            headers=headers,
        ),
        400,
        "bad_json",
    )
    sse = {**headers, "accept": "text/event-stream", "last-event-id": "not-a-position"}
    _error(http.get("/v1/streams/s/records", headers=sse), 400, "bad_header")
    assert _tail(http, headers) == 0


DEEP = b"[" * 100_000 + b"]" * 100_000
NINE_HUNDRED_DEEP = b"[" * 900 + b"]" * 900
JSON_CT = {"content-type": "application/json"}


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "status", "code"),
    [
        ("POST", "/v1/streams/s/records", JSON_CT, DEEP, 400, "bad_json"),
        ("POST", "/v1/basins", JSON_CT, DEEP, 400, "bad_json"),
        ("PUT", "/v1/locations/default", JSON_CT, NINE_HUNDRED_DEEP, 400, "bad_json"),
        (
            "POST",
            "/v1/basins",
            JSON_CT,
            b'{"basin": "a", "config": ' + NINE_HUNDRED_DEEP + b"}",
            400,
            "bad_json",
        ),
        ("POST", "/v1/basins", JSON_CT, b'{"basin": "\\ud800abcdefgh"}', 400, "bad_json"),
        ("POST", "/v1/streams", JSON_CT, b'{"stream": "a\\udc00b"}', 400, "bad_json"),
        ("POST", "/v1/lake/query", JSON_CT, b'{"sql": "SELECT \'\\ud800\'"}', 400, "bad_json"),
        (
            "POST",
            "/v1/streams/s/records",
            JSON_CT,
            b'{"records": [{"body": "\\ud800"}]}',
            400,
            "bad_json",
        ),
        (
            "POST",
            "/v1/streams/s/records",
            JSON_CT,
            b'{"records": [{"headers": [["\\udfff", "v"]]}]}',
            400,
            "bad_json",
        ),
        (
            "POST",
            "/v1/streams/s/records",
            JSON_CT,
            b'{"records": [{"body": "x"}], "fencing_token": "\\ud800"}',
            400,
            "bad_json",
        ),
        # The surrogate itself encoded as UTF-8 (which UTF-8 forbids), not escaped.
        (
            "POST",
            "/v1/streams/s/records",
            JSON_CT,
            b'{"records": [{"body": "\xed\xa0\x80"}]}',
            400,
            "bad_json",
        ),
        (
            "POST",
            "/v1/streams/s/records",
            JSON_CT,
            b'{"records": [{"body": "x", "timestamp": ' + b"9" * 5000 + b"}]}",
            400,
            "bad_json",
        ),
        # Invalid base64 is 422 in S2's contract, whatever the character.
        (
            "POST",
            "/v1/streams/s/records",
            {**JSON_CT, "s2-format": "base64"},
            '{"records": [{"body": "é"}]}'.encode(),
            422,
            "invalid",
        ),
        (
            "POST",
            "/v1/streams/s/records",
            {**JSON_CT, "s2-stream-config": "[" * 5000 + "]" * 5000},
            b'{"records": [{"body": "x"}]}',
            400,
            "bad_header",
        ),
        ("GET", "/v1/streams/s/records?seq_num=" + "9" * 5000, {}, b"", 400, "bad_query"),
        ("GET", "/v1/basins?limit=" + "9" * 5000, {}, b"", 400, "bad_query"),
        (
            "GET",
            "/v1/streams/s/records",
            {"accept": "text/event-stream", "last-event-id": "9" * 5000 + ",0,0"},
            b"",
            400,
            "bad_header",
        ),
    ],
    ids=[
        "records-100000-deep",
        "basins-100000-deep",
        "location-900-deep",
        "basin-config-900-deep",
        "basin-name-surrogate",
        "stream-name-surrogate",
        "sql-surrogate",
        "record-body-surrogate",
        "header-name-surrogate",
        "fencing-token-surrogate",
        "utf8-encoded-surrogate",
        "5000-digit-timestamp",
        "base64-non-ascii",
        "stream-config-header-deep",
        "5000-digit-seq-num",
        "5000-digit-limit",
        "5000-digit-last-event-id",
    ],
)
def test_hostile_input_is_a_4xx_that_changes_nothing(
    server: ServerProcess,
    http: httpx.Client,
    basin_name: str,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes,
    status: int,
    code: str,
) -> None:
    """Issue 12 item 6: each answered 500 with a traceback in the log before."""
    stream = _stream(http, basin_name)
    basins = http.get("/v1/basins").json()["basins"]
    tracebacks = sum("Traceback" in line for line in server.log)
    response = http.request(method, path, content=body, headers={**stream, **headers})
    _error(response, status, code)
    assert "sys.set_int_max_str_digits" not in response.json()["message"]
    assert _tail(http, stream) == 0
    assert http.get("/v1/basins").json()["basins"] == basins
    time.sleep(0.1)  # the log is read by a thread
    assert sum("Traceback" in line for line in server.log) == tracebacks


def test_sse_with_wait_0_ends_once_caught_up(http: httpx.Client, basin_name: str) -> None:
    headers = {**_stream(http, basin_name), "accept": "text/event-stream"}
    appended = http.post(
        "/v1/streams/s/records",
        json={"records": [{"body": "a"}, {"body": "b"}]},
        headers={**headers, "accept": "application/json"},
    )
    assert appended.status_code == 200, appended.text
    # Without `wait` this session would follow forever; with wait=0 the response ends.
    response = http.get("/v1/streams/s/records", params={"seq_num": 0, "wait": 0}, headers=headers)
    events = _sse_events(response.text)
    batches = [json.loads(e["data"]) for e in events if e.get("event") == "batch"]
    assert [r["body"] for b in batches for r in b["records"]] == ["a", "b"]
