"""Per-token rate limits against a real server: unary appends over the limit get S2's 429
`rate_limited` and change nothing; session appends are paced to the limit; a token cannot
issue looser limits than its own."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from s2_sdk import S2, AppendInput, Endpoints, Record

from tests.server_process import ServerProcess

BASIN = "limits-basin"
HEADERS = {"s2-basin": BASIN}
SCOPE = {
    "basins": {"prefix": ""},
    "streams": {"prefix": ""},
    "access_tokens": {"prefix": ""},
    "op_groups": {g: {"read": True, "write": True} for g in ("account", "basin", "stream")},
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(str(tmp_path_factory.mktemp("limits") / "data"), auth=True).start()
    try:
        with httpx.Client(base_url=process.http_url, headers=_bearer(process.root_token)) as root:
            assert root.post("/v1/basins", json={"basin": BASIN}).status_code == 201
        yield process
    finally:
        process.stop()


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def _issue(server: ServerProcess, issuer: str, token_id: str, limits: Any) -> httpx.Response:
    with httpx.Client(base_url=server.http_url, headers=_bearer(issuer)) as client:
        return client.post(
            "/v1/access-tokens", json={"id": token_id, "scope": SCOPE, "limits": limits}
        )


def test_unary_appends_over_the_limit_are_refused_with_429(server: ServerProcess) -> None:
    # 2/s with a burst of 2: ten appends pass the limit unless they take over 4 s.
    response = _issue(server, server.root_token, "two-per-s", {"appends_per_s": 2})
    assert response.status_code == 201, response.text
    token = response.json()["access_token"]
    with httpx.Client(base_url=server.http_url, headers={**_bearer(token), **HEADERS}) as client:
        assert client.post("/v1/streams", json={"stream": "unary"}).status_code == 201
        statuses = [
            client.post("/v1/streams/unary/records", json={"records": [{"body": "x"}]})
            for _ in range(10)
        ]
        refused = [r for r in statuses if r.status_code != 200]
        assert refused, "some appends went over 2/s"
        assert all(r.status_code == 429 and r.json()["code"] == "rate_limited" for r in refused)
        accepted = len(statuses) - len(refused)
        tail = client.get("/v1/streams/unary/records/tail").json()["tail"]["seq_num"]
        assert tail == accepted, "a refused append appended nothing"
        listed = client.get("/v1/access-tokens", params={"prefix": "two"}).json()
        assert listed["access_tokens"][0]["limits"] == {"appends_per_s": 2.0, "mib_per_s": None}


async def test_session_appends_are_paced_to_the_limit(server: ServerProcess) -> None:
    response = _issue(server, server.root_token, "half-mib", {"mib_per_s": 0.5})
    token = response.json()["access_token"]
    endpoints = Endpoints(account=server.http_url, basin=server.http_url)
    async with S2(token, endpoints=endpoints) as sdk:
        basin = sdk.basin(BASIN)
        await basin.create_stream("paced")
        stream = basin.stream("paced")
        record = Record(body=b"x" * (256 * 1024 - 8))
        started = time.monotonic()
        async with stream.append_session() as session:
            tickets = [await session.submit(AppendInput(records=[record])) for _ in range(6)]
            acks = [await ticket for ticket in tickets]
        elapsed = time.monotonic() - started
    assert [a.start.seq_num for a in acks] == list(range(6)), "every batch was acknowledged"
    # 1.5 MiB at 0.5 MiB/s with a one-second burst: at least 2 s.
    assert elapsed >= 1.8, elapsed


def test_a_token_cannot_issue_looser_limits_than_its_own(server: ServerProcess) -> None:
    parent = _issue(server, server.root_token, "parent-limited", {"appends_per_s": 10})
    secret = parent.json()["access_token"]
    looser = _issue(server, secret, "child-looser", {"appends_per_s": 20})
    assert (looser.status_code, looser.json()["code"]) == (403, "permission_denied")
    unlimited = _issue(server, secret, "child-unlimited", {"mib_per_s": 1})
    assert (unlimited.status_code, unlimited.json()["code"]) == (403, "permission_denied")
    inherited = _issue(server, secret, "child-inherits", None)
    assert inherited.status_code == 201
    with httpx.Client(base_url=server.http_url, headers=_bearer(server.root_token)) as root:
        listed = root.get("/v1/access-tokens", params={"prefix": "child-"}).json()
    assert [(t["id"], t["limits"]["appends_per_s"]) for t in listed["access_tokens"]] == [
        ("child-inherits", 10.0)
    ]
