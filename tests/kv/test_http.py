"""The key-value store's HTTP JSON API against a real server with access control on: gets,
puts, deletes, listings, history, commits with an expected revision, bad input (a 4xx with
its S2 code, nothing changed), and tokens scoped like the stream `kv/NAME` itself."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from client import SyncClient
from tests.server_process import ServerProcess

BASIN = "kv-http-basin"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(str(tmp_path_factory.mktemp("kv-http") / "data"), auth=True).start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    headers = {"authorization": f"Bearer {server.root_token}"}
    with httpx.Client(base_url=server.http_url, headers=headers, timeout=30) as client:
        client.put(f"/v1/basins/{BASIN}").raise_for_status()
        yield client


def store_url(store: str, *rest: str) -> str:
    return "/".join([f"/v1/kv/{BASIN}/{store}", *rest])


def ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


def error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    return body


def test_put_get_list_delete_history(http: httpx.Client) -> None:
    assert ok(http.get(store_url("app"))) == {
        "basin": BASIN,
        "store": "app",
        "revision": 0,
        "keys": 0,
    }
    error(http.get(store_url("app", "keys", "color")), 404, "key_not_found")
    put = ok(http.put(store_url("app", "keys", "color"), json={"value": "blue"}))
    assert (put["key"], put["seq_num"], put["revision"]) == ("color", 0, 1)
    ok(http.put(store_url("app", "keys", "a%2Fb"), json={"value": "slash"}))
    ok(http.put(store_url("app", "keys", "color"), json={"value": "red"}))
    got = ok(http.get(store_url("app", "keys", "color")))
    assert (got["value"], got["seq_num"], got["revision"]) == ("red", 2, 3)
    assert ok(http.get(store_url("app", "keys", "a%2Fb")))["value"] == "slash"
    listed = ok(http.get(store_url("app", "keys")))
    assert [item["key"] for item in listed["keys"]] == ["a/b", "color"]
    assert "value" not in listed["keys"][0] and listed["has_more"] is False
    page = ok(http.get(store_url("app", "keys"), params={"limit": 1, "values": "true"}))
    assert page["keys"] == [
        {"key": "a/b", "value": "slash", "seq_num": 1, "timestamp": page["keys"][0]["timestamp"]}
    ]
    assert page["has_more"] is True
    after = ok(http.get(store_url("app", "keys"), params={"start_after": "a/b"}))
    assert [item["key"] for item in after["keys"]] == ["color"]
    assert ok(http.get(store_url("app", "keys"), params={"prefix": "co"}))["keys"][0]["key"] == (
        "color"
    )
    deleted = ok(http.delete(store_url("app", "keys", "color")))
    assert deleted["revision"] == 4
    error(http.delete(store_url("app", "keys", "color")), 404, "key_not_found")
    history = ok(http.get(store_url("app", "keys", "color", "history")))["history"]
    assert [(h["op"], h["value"], h["seq_num"]) for h in history] == [
        ("put", "blue", 0),
        ("put", "red", 2),
        ("delete", None, 3),
    ]
    latest = ok(http.get(store_url("app", "keys", "color", "history"), params={"limit": 1}))
    assert [h["op"] for h in latest["history"]] == ["delete"]
    assert ok(http.get(store_url("app")))["keys"] == 1


def test_commit_with_an_expected_revision(http: httpx.Client, server: ServerProcess) -> None:
    changes = [{"op": "put", "key": "x", "value": "1"}, {"op": "put", "key": "y", "value": "2"}]
    assert ok(http.post(store_url("tx", "commit"), json={"changes": changes}))["revision"] == 2
    body = {"changes": [{"op": "delete", "key": "x"}], "expected_revision": 2}
    assert ok(http.post(store_url("tx", "commit"), json=body))["revision"] == 3
    stale = {"changes": [{"op": "put", "key": "y", "value": "3"}], "expected_revision": 2}
    conflict = error(http.post(store_url("tx", "commit"), json=stale), 412, "kv_conflict")
    assert conflict["revision"] == 3
    refused = http.put(
        store_url("tx", "keys", "y"), params={"expected_revision": 1}, json={"value": "9"}
    )
    error(refused, 412, "kv_conflict")
    # The SDK sees what the HTTP API wrote, and the other way round.
    with SyncClient(server.target, access_token=server.root_token) as client:
        store = client.get_kv_store("tx", basin=BASIN)
        assert dict(store) == {"y": "2"} and store.revision == 3
        store["z"] = "from the sdk"
        store.commit()
    assert ok(http.get(store_url("tx", "keys", "z")))["value"] == "from the sdk"
    assert (
        ok(
            http.put(
                store_url("tx", "keys", "y"), params={"expected_revision": 4}, json={"value": "3"}
            )
        )["revision"]
        == 5
    )


BAD_REQUESTS: list[tuple[str, str, dict[str, Any], int, str]] = [
    ("PUT", store_url("bad", "keys", "k"), {"json": {"value": 1}}, 400, "bad_json"),
    ("PUT", store_url("bad", "keys", "k"), {"json": {"value": "v", "x": 1}}, 400, "bad_json"),
    ("PUT", store_url("bad", "keys", "k"), {"json": ["v"]}, 400, "bad_json"),
    ("PUT", store_url("bad", "keys", "k"), {"content": b"v"}, 400, "bad_json"),
    ("PUT", store_url("bad", "keys", "k"), {"json": {"value": "v" * 1_100_000}}, 422, "invalid"),
    ("PUT", store_url("bad", "keys", "k" * 1025), {"json": {"value": "v"}}, 400, "bad_path"),
    ("PUT", store_url("bad", "keys", "a%00b"), {"json": {"value": "v"}}, 400, "bad_path"),
    ("PUT", store_url("b a d", "keys", "k"), {"json": {"value": "v"}}, 400, "bad_path"),
    ("PUT", "/v1/kv/NO/bad/keys/k", {"json": {"value": "v"}}, 400, "bad_path"),
    ("PUT", store_url("bad", "keys", "k"), {"json": {"value": "v"}, "params": {
        "expected_revision": "-1"
    }}, 400, "bad_query"),
    ("GET", store_url("bad", "keys"), {"params": {"limit": "x"}}, 400, "bad_query"),
    ("GET", store_url("bad", "keys"), {"params": {"values": "yes"}}, 400, "bad_query"),
    ("GET", store_url("bad", "keys", "k", "history"), {"params": {"limit": "1001"}}, 400,
     "bad_query"),
    ("POST", store_url("bad", "commit"), {"json": {"changes": []}}, 422, "invalid"),
    ("POST", store_url("bad", "commit"), {"json": {"changes": "x"}}, 400, "bad_json"),
    ("POST", store_url("bad", "commit"), {"json": {"changes": [{"op": "put", "key": "k"}]}}, 400,
     "bad_json"),
    ("POST", store_url("bad", "commit"), {"json": {"changes": [{"op": "x", "key": "k"}]}}, 400,
     "bad_json"),
    ("POST", store_url("bad", "commit"), {"json": {"changes": [
        {"op": "delete", "key": "k", "value": "v"}
    ]}}, 400, "bad_json"),
    ("POST", store_url("bad", "commit"), {"json": {"changes": [
        {"op": "put", "key": "", "value": "v"}
    ]}}, 422, "invalid"),
    ("POST", store_url("bad", "commit"), {"json": {"changes": [
        {"op": "put", "key": "k", "value": "v"}
    ] * 1001}}, 422, "invalid"),
    ("POST", store_url("bad", "commit"), {"json": {"changes": [
        {"op": "put", "key": "k", "value": "v"}
    ], "expected_revision": True}}, 400, "bad_json"),
    ("POST", store_url("bad", "commit"), {"content": b"{", "headers": {
        "content-type": "application/json"
    }}, 400, "bad_json"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "url", "options", "status", "code"), BAD_REQUESTS)
def test_bad_input_is_a_4xx_and_changes_nothing(
    http: httpx.Client, method: str, url: str, options: dict[str, Any], status: int, code: str
) -> None:
    error(http.request(method, url, **options), status, code)
    assert ok(http.get(store_url("bad")))["revision"] == 0


def test_unknown_routes_and_methods(http: httpx.Client) -> None:
    assert http.get("/v1/kv").status_code == 404
    assert http.get(f"/v1/kv/{BASIN}").status_code == 404
    assert http.get(store_url("s", "nope")).status_code == 404
    assert http.get(store_url("s", "keys", "k", "nope")).status_code == 404
    assert http.post(store_url("s", "keys")).status_code == 405
    assert http.get(store_url("s", "commit")).status_code == 405
    assert http.post(store_url("s", "keys", "k")).status_code == 405


def issue(http: httpx.Client, token_id: str, scope: dict[str, Any]) -> httpx.Client:
    response = http.post("/v1/access-tokens", json={"id": token_id, "scope": scope})
    assert response.status_code in (200, 201), response.text
    secret = response.json()["access_token"]
    return httpx.Client(
        base_url=str(http.base_url), headers={"authorization": f"Bearer {secret}"}, timeout=30
    )


def test_tokens_are_checked_as_for_the_stream(http: httpx.Client) -> None:
    ok(http.put(store_url("scoped", "keys", "k"), json={"value": "v"}))
    reader = issue(
        http,
        "kv-reader",
        {
            "basins": {"exact": BASIN},
            "streams": {"exact": "kv/scoped"},
            "op_groups": {"stream": {"read": True}},
        },
    )
    writer = issue(
        http,
        "kv-writer",
        {"basins": {"exact": BASIN}, "streams": {"prefix": "kv/"}, "ops": ["append"]},
    )
    with reader, writer:
        assert ok(reader.get(store_url("scoped", "keys", "k")))["value"] == "v"
        error(reader.put(store_url("scoped", "keys", "k"), json={"value": "w"}), 403,
              "permission_denied")  # fmt: skip
        error(reader.get(store_url("other", "keys", "k")), 403, "permission_denied")
        error(reader.get(store_url("other")), 403, "permission_denied")
        # A plain put needs append only; reads and checked writes need read too.
        assert ok(writer.put(store_url("scoped", "keys", "k"), json={"value": "w"}))
        error(writer.get(store_url("scoped", "keys", "k")), 403, "permission_denied")
        error(writer.delete(store_url("scoped", "keys", "k")), 403, "permission_denied")
        # The first write makes the stream: that needs create-stream.
        error(writer.put(store_url("fresh", "keys", "k"), json={"value": "v"}), 403,
              "permission_denied")  # fmt: skip
        error(http.get("/v1/kv/kv-stores/x", headers={"authorization": "Bearer nope"}), 401,
              "authn")  # fmt: skip
    assert ok(http.get(store_url("scoped", "keys", "k")))["value"] == "w"
    assert ok(http.get(store_url("fresh")))["revision"] == 0


def test_the_default_basin_is_made_on_first_write(http: httpx.Client) -> None:
    url = "/v1/kv/kv-stores/defaults/keys/k"
    ok(http.put(url, json={"value": "v"}))
    assert ok(http.get(url))["value"] == "v"
    assert ok(http.get("/v1/basins", params={"prefix": "kv-stores"}))["basins"][0]["name"] == (
        "kv-stores"
    )


def test_foreign_records_are_skipped_and_lost_history_is_a_409(http: httpx.Client) -> None:
    headers = {"s2-basin": BASIN}
    ok(http.put(store_url("odd", "keys", "k"), json={"value": "v"}))
    foreign = {"records": [{"body": "not a change"}]}
    assert http.post("/v1/streams/kv%2Fodd/records", headers=headers, json=foreign).is_success
    ok(http.put(store_url("odd", "keys", "k2"), json={"value": "v2"}))
    assert ok(http.get(store_url("odd")))["keys"] == 2
    # A trim that is not compaction's leaves the state unknowable: said so, not guessed.
    ok(http.put(store_url("cut", "keys", "k"), json={"value": "v"}))
    ok(http.put(store_url("cut", "keys", "k2"), json={"value": "v2"}))
    trim = {"records": [{"headers": [["", "dHJpbQ=="]], "body": "AAAAAAAAAAE="}]}  # base64
    headers["s2-format"] = "base64"
    assert http.post("/v1/streams/kv%2Fcut/records", headers=headers, json=trim).is_success
    error(http.get(store_url("cut", "keys", "k2")), 409, "kv_history_lost")
    refused = http.delete(store_url("cut", "keys", "k2"))
    error(refused, 409, "kv_history_lost")
