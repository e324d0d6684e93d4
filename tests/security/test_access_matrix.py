"""Access control on every HTTP and lake operation, against one real server with auth on.

For each operation and each way a call can be refused (no token, a malformed header, an
expired, a revoked token, a basin or a stream outside the token's scope, a token without the
operation's group), the call gets the right status and S2 error code, and the server's
observable state (basins, streams, their configs and tails, tokens, materializations) is
unchanged afterwards. A token in scope is not refused. List operations are not refused for
resources out of scope: they leave those out.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.server_process import ServerProcess

BASIN = "matrix-basin"
STREAM = "main"
OTHER_BASIN = "matrix-elsewhere"
TABLE = "sales.orders"

ALL_GROUPS = {g: {"read": True, "write": True} for g in ("account", "basin", "stream")}
EVERYTHING = {"prefix": ""}


@dataclass(frozen=True)
class Operation:
    name: str
    group: str
    method: str
    path: str
    resources: frozenset[str]
    """Which of the token's resource sets this call must be within: basin, stream."""
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    lists: str | None = None
    """For a list: the response field whose items a scope filters instead of refusing."""


def _op(name: str, group: str, method: str, path: str, *resources: str, **extra: Any) -> Operation:
    return Operation(name, group, method, path, frozenset(resources), **extra)


BASIN_HEADER = {"s2-basin": BASIN}
_NOW_S = int(time.time())
HOUR = f"start={_NOW_S - 3600}&end={_NOW_S}"
"""A metrics query's range: the hour before the module was loaded."""
JSON_RECORDS = {"records": [{"body": "x"}]}

OPERATIONS = (
    _op("list-basins", "account", "GET", "/v1/basins", lists="basins"),
    _op("create-basin", "account", "POST", "/v1/basins", "basin", body={"basin": BASIN + "-new"}),
    _op("get-basin-config", "account", "GET", f"/v1/basins/{BASIN}", "basin"),
    _op(
        "reconfigure-basin",
        "account",
        "PATCH",
        f"/v1/basins/{BASIN}",
        "basin",
        body={"create_stream_on_append": True},
    ),
    _op("ensure-basin", "account", "PUT", f"/v1/basins/{BASIN}", "basin", body={}),
    _op("delete-basin", "account", "DELETE", f"/v1/basins/{BASIN}", "basin"),
    _op("list-access-tokens", "account", "GET", "/v1/access-tokens", lists="access_tokens"),
    _op(
        "issue-access-token",
        "account",
        "POST",
        "/v1/access-tokens",
        body={"id": "matrix-new", "scope": {"ops": ["list-basins"]}},
    ),
    _op("revoke-access-token", "account", "DELETE", "/v1/access-tokens/in-scope"),
    _op("list-locations", "account", "GET", "/v1/locations"),
    _op("get-default-location", "account", "GET", "/v1/locations/default"),
    _op("set-default-location", "account", "PUT", "/v1/locations/default", body="local"),
    _op(
        "list-streams",
        "basin",
        "GET",
        "/v1/streams",
        "basin",
        headers=BASIN_HEADER,
        lists="streams",
    ),
    _op(
        "create-stream",
        "basin",
        "POST",
        "/v1/streams",
        "basin",
        "stream",
        body={"stream": STREAM + "-new"},
        headers=BASIN_HEADER,
    ),
    _op(
        "get-stream-config",
        "basin",
        "GET",
        f"/v1/streams/{STREAM}",
        "basin",
        "stream",
        headers=BASIN_HEADER,
    ),
    _op(
        "reconfigure-stream",
        "basin",
        "PATCH",
        f"/v1/streams/{STREAM}",
        "basin",
        "stream",
        body={"storage_class": "express"},
        headers=BASIN_HEADER,
    ),
    _op(
        "ensure-stream",
        "basin",
        "PUT",
        f"/v1/streams/{STREAM}",
        "basin",
        "stream",
        body={},
        headers=BASIN_HEADER,
    ),
    _op(
        "delete-stream",
        "basin",
        "DELETE",
        f"/v1/streams/{STREAM}",
        "basin",
        "stream",
        headers=BASIN_HEADER,
    ),
    _op(
        "check-tail",
        "stream",
        "GET",
        f"/v1/streams/{STREAM}/records/tail",
        "basin",
        "stream",
        headers=BASIN_HEADER,
    ),
    _op(
        "append",
        "stream",
        "POST",
        f"/v1/streams/{STREAM}/records",
        "basin",
        "stream",
        body=JSON_RECORDS,
        headers=BASIN_HEADER,
    ),
    _op(
        "fence",
        "stream",
        "POST",
        f"/v1/streams/{STREAM}/records",
        "basin",
        "stream",
        body={"records": [{"headers": [["", "fence"]], "body": "f"}]},
        headers=BASIN_HEADER,
    ),
    _op(
        "read",
        "stream",
        "GET",
        f"/v1/streams/{STREAM}/records?seq_num=0",
        "basin",
        "stream",
        headers=BASIN_HEADER,
    ),
    _op(
        "read-sse",
        "stream",
        "GET",
        f"/v1/streams/{STREAM}/records?seq_num=0&count=1",
        "basin",
        "stream",
        headers={**BASIN_HEADER, "accept": "text/event-stream"},
    ),
    # The lake (server/lake/scoped.py): ingest and dead letters are the table's ingest stream's.
    _op(
        "lake-ingest",
        "stream",
        "POST",
        "/v2/stream",
        "basin",
        "stream",
        body={"config": {"table": TABLE}, "data": [{"id": 1}]},
    ),
    _op(
        "lake-dead-letters", "stream", "GET", f"/v2/stream/errors?table={TABLE}", "basin", "stream"
    ),
    _op(
        "lake-query",
        "account",
        "POST",
        "/v1/lake/query",
        "basin",
        "stream",
        body={"sql": "SELECT 1"},
    ),
    _op("lake-list-materializations", "account", "GET", "/v1/lake/materializations"),
    _op(
        "lake-create-materialization",
        "account",
        "POST",
        "/v1/lake/materializations",
        "basin",
        "stream",
        body={
            "name": "m-new",
            "table": "sales.other",
            "basin": BASIN,
            "stream": STREAM,
            "create_table": True,
        },
    ),
    _op("lake-pause-materialization", "account", "POST", "/v1/lake/materializations/orders/pause"),
    _op("lake-delete-materialization", "account", "DELETE", "/v1/lake/materializations/orders"),
    # Key-value stores (server/kv_store): the store `settings` is the stream `kv/settings`.
    _op("kv-get", "stream", "GET", f"/v1/kv/{BASIN}/settings/keys/color", "basin", "stream"),
    _op("kv-list", "stream", "GET", f"/v1/kv/{BASIN}/settings/keys", "basin", "stream"),
    _op(
        "kv-history",
        "stream",
        "GET",
        f"/v1/kv/{BASIN}/settings/keys/color/history",
        "basin",
        "stream",
    ),
    _op(
        "kv-put",
        "stream",
        "PUT",
        f"/v1/kv/{BASIN}/settings/keys/color",
        "basin",
        "stream",
        body={"value": "red"},
    ),
    _op("kv-delete", "stream", "DELETE", f"/v1/kv/{BASIN}/settings/keys/color", "basin", "stream"),
    _op(
        "kv-commit",
        "stream",
        "POST",
        f"/v1/kv/{BASIN}/settings/commit",
        "basin",
        "stream",
        body={"changes": [{"op": "put", "key": "size", "value": "10"}]},
    ),
    _op("metrics", "account", "GET", "/metrics"),
    _op("account-metrics", "account", "GET", f"/v1/metrics?set=account-ops&{HOUR}"),
    _op("basin-metrics", "basin", "GET", f"/v1/metrics/{BASIN}?set=append-ops&{HOUR}", "basin"),
    _op(
        "stream-metrics",
        "stream",
        "GET",
        f"/v1/metrics/{BASIN}/{STREAM}?set=storage&{HOUR}",
        "basin",
        "stream",
    ),
)


def _scope(**overrides: Any) -> dict[str, Any]:
    scope: dict[str, Any] = {
        "basins": EVERYTHING,
        "streams": EVERYTHING,
        "access_tokens": EVERYTHING,
        "op_groups": ALL_GROUPS,
    }
    scope.update(overrides)
    return scope


@dataclass
class Tokens:
    """The secrets of the tokens the matrix calls with, by case."""

    by_case: dict[str, str | None]
    group_less: dict[str, str]
    """For each group, a token with every permission except that group's."""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(str(tmp_path_factory.mktemp("access") / "data"), auth=True).start()
    try:
        yield process
    finally:
        process.stop()


def _client(server: ServerProcess, token: str | None) -> httpx.Client:
    headers = {} if token is None else {"authorization": f"Bearer {token}"}
    return httpx.Client(base_url=server.http_url, headers=headers, timeout=30)


@pytest.fixture(scope="module")
def root(server: ServerProcess) -> Iterator[httpx.Client]:
    with _client(server, server.root_token) as client:
        yield client


def _ok(response: httpx.Response) -> Any:
    assert response.status_code < 300, response.text
    return response.json() if response.content else None


def _issue(root: httpx.Client, token_id: str, scope: dict[str, Any], **extra: Any) -> str:
    response = root.post("/v1/access-tokens", json={"id": token_id, "scope": scope, **extra})
    assert response.status_code == 201, response.text
    secret: str = response.json()["access_token"]
    return secret


@pytest.fixture(scope="module")
def tokens(root: httpx.Client) -> Tokens:
    for basin in (BASIN, OTHER_BASIN):
        _ok(root.post("/v1/basins", json={"basin": basin}))
    _ok(root.post("/v1/streams", json={"stream": STREAM}, headers=BASIN_HEADER))
    _ok(root.post(f"/v1/streams/{STREAM}/records", json=JSON_RECORDS, headers=BASIN_HEADER))
    _ok(root.put(f"/v1/kv/{BASIN}/settings/keys/color", json={"value": "blue"}))
    _ok(
        root.post(
            "/v1/lake/materializations",
            json={"name": "orders", "table": TABLE, "create_table": True},
        )
    )
    revoked = _issue(root, "revoked", _scope())
    _ok(root.delete("/v1/access-tokens/revoked"))
    soon = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    expired = _issue(root, "expired", _scope(), expires_at=soon)
    _issue(root, "in-scope", _scope(ops=["list-basins"]))
    by_case: dict[str, str | None] = {
        "no token": None,
        "malformed": "Basic dXNlcjpwYXNz",
        "unknown": "s2s_not-a-token",
        "revoked": revoked,
        "expired": expired,
        "basin out of scope": _issue(root, "other-basin", _scope(basins={"exact": OTHER_BASIN})),
        "stream out of scope": _issue(root, "other-stream", _scope(streams={"exact": "other"})),
        "in scope": _issue(root, "everything", _scope()),
    }
    group_less = {
        group: _issue(
            root,
            f"no-{group}",
            _scope(op_groups={g: p for g, p in ALL_GROUPS.items() if g != group}),
        )
        for group in ALL_GROUPS
    }
    time.sleep(1.2)  # `expired` has expired
    return Tokens(by_case, group_less)


def _state(root: httpx.Client) -> str:
    """Everything a refused call must leave as it was, as one comparable text."""
    state: dict[str, Any] = {
        "tokens": _ok(root.get("/v1/access-tokens")),
        "default location": _ok(root.get("/v1/locations/default")),
    }
    basins = _ok(root.get("/v1/basins"))["basins"]
    state["basins"] = basins
    for basin in basins:
        name = basin["name"]
        headers = {"s2-basin": name}
        state[f"basin {name}"] = _ok(root.get(f"/v1/basins/{name}"))
        for stream in _ok(root.get("/v1/streams", headers=headers))["streams"]:
            path = f"/v1/streams/{quote(stream['name'], safe='')}"
            state[f"stream {name}/{stream['name']}"] = [
                stream,
                root.get(path, headers=headers).json(),
                root.get(f"{path}/records/tail", headers=headers).json(),
            ]
    state["materializations"] = [
        {key: m[key] for key in ("name", "state", "table")}
        for m in _ok(root.get("/v1/lake/materializations"))["materializations"]
    ]
    return json.dumps(state, sort_keys=True)


def _call(server: ServerProcess, token: str | None, op: Operation) -> httpx.Response:
    with _client(server, token) as client:
        if op.body is None:
            return client.request(op.method, op.path, headers=op.headers)
        return client.request(op.method, op.path, headers=op.headers, json=op.body)


def _code(response: httpx.Response) -> str:
    body = response.json()
    if "errors" in body:  # an ingest refusal, in the shape of an ingest answer
        code: str = body["errors"][0]["code"]
        return code
    code = body["code"]
    return code


AUTHN_CASES = ("no token", "malformed", "unknown", "revoked", "expired")


def _expectation(case: str, op: Operation) -> tuple[int, str] | str | None:
    """(status, code) if the call must be refused; "filtered" for a list that must leave the
    out-of-scope resource out; None if the case does not apply to the operation."""
    if case in AUTHN_CASES:
        return 401, "authn"
    resource = {"basin out of scope": "basin", "stream out of scope": "stream"}[case]
    if resource in op.resources:
        return 403, "permission_denied"
    if op.lists is not None and (op.lists, resource) in (
        ("basins", "basin"),
        ("streams", "stream"),
    ):
        return "filtered"
    return None


@pytest.mark.parametrize("op", OPERATIONS, ids=lambda op: op.name)
def test_refused_calls_get_the_right_code_and_change_nothing(
    server: ServerProcess, root: httpx.Client, tokens: Tokens, op: Operation
) -> None:
    before = _state(root)
    for case, token in tokens.by_case.items():
        if case == "in scope":
            continue
        expected = _expectation(case, op)
        if expected is None:
            continue
        response = _call(server, token, op)
        if expected == "filtered":
            assert response.status_code == 200, (case, response.text)
            listed = [item["name"] for item in response.json()[op.lists or ""]]
            assert BASIN not in listed and STREAM not in listed, (case, listed)
        else:
            assert (response.status_code, _code(response)) == expected, (case, response.text)
        assert _state(root) == before, f"{case}: the refused {op.name} changed the server"
    response = _call(server, tokens.group_less[op.group], op)
    assert (response.status_code, _code(response)) == (403, "permission_denied"), response.text
    assert _state(root) == before, f"without its group: the refused {op.name} changed the server"


SAFE_IN_SCOPE = tuple(
    op
    for op in OPERATIONS
    if op.method in ("GET",) or op.name in ("append", "lake-ingest", "create-stream")
)


@pytest.mark.parametrize("op", SAFE_IN_SCOPE, ids=lambda op: op.name)
def test_a_token_in_scope_is_not_refused(
    server: ServerProcess, tokens: Tokens, op: Operation
) -> None:
    response = _call(server, tokens.by_case["in scope"], op)
    assert response.status_code < 500 and response.status_code not in (401, 403), response.text


def test_health_needs_no_token(server: ServerProcess) -> None:
    with _client(server, None) as client:
        assert client.get("/health").status_code == 200


def test_the_root_token_file_is_private_and_its_secret_is_never_logged(
    server: ServerProcess,
) -> None:
    path = Path(server.data_dir) / "root.token"
    assert path.stat().st_mode & 0o777 == 0o600
    log = "".join(server.log)
    assert str(path) in log
    assert server.root_token not in log


def test_lists_show_only_what_the_scope_covers(
    server: ServerProcess, root: httpx.Client, tokens: Tokens
) -> None:
    secret = _issue(
        root,
        "lister",
        _scope(basins={"prefix": "matrix-b"}, access_tokens={"prefix": "no-"}),
    )
    with _client(server, secret) as client:
        basins = [b["name"] for b in _ok(client.get("/v1/basins"))["basins"]]
        assert basins == [BASIN]
        token_ids = [t["id"] for t in _ok(client.get("/v1/access-tokens"))["access_tokens"]]
        assert token_ids == ["no-account", "no-basin", "no-stream"]


def test_open_metrics_serves_loopback_without_a_token(tmp_path: Path) -> None:
    server = ServerProcess(str(tmp_path / "data"), auth=True, extra_args=["--open-metrics"])
    server.start()
    try:
        with _client(server, None) as anonymous:
            metrics = anonymous.get("/metrics")
            assert metrics.status_code == 200 and "text/plain" in metrics.headers["content-type"]
            refused = anonymous.get("/v1/basins")
            assert (refused.status_code, refused.json()["code"]) == (401, "authn")
    finally:
        server.stop()
