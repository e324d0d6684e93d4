"""What the console needs from the server, over real sockets (httpx against `s2s serve` with
access control on): its files with their security headers, `/` redirected to it, and the
three API additions it uses: `GET /v1/whoami`, `GET /v1/streams/{s}/status`, and SQL results
as CSV and Parquet downloads."""

from __future__ import annotations

import base64
import io
import struct
from collections.abc import Mapping

import httpx
import pyarrow.parquet as pq
import pytest

from tests.server_process import ServerProcess

pytestmark = pytest.mark.xdist_group("console-api")

BASIN = "console-api"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _issue(api: httpx.Client, token_id: str, scope: Mapping[str, object]) -> str:
    response = api.post("/v1/access-tokens", json={"id": token_id, "scope": scope})
    assert response.status_code == 201, response.text
    secret: str = response.json()["access_token"]
    return secret


def test_the_console_is_served_with_strict_security_headers(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.http_url) as anonymous:
        redirect = anonymous.get("/")
        assert redirect.status_code == 302
        assert redirect.headers["location"] == "/console/"
        for path in ("/console", "/console/", "/console/index.html"):
            page = anonymous.get(path)
            assert page.status_code == 200, path
            assert page.headers["content-type"] == "text/html; charset=utf-8"
            assert page.headers["content-security-policy"] == CSP
            assert page.headers["x-content-type-options"] == "nosniff"
            assert page.headers["referrer-policy"] == "no-referrer"
            assert page.headers["x-frame-options"] == "DENY"
            assert '<script type="module" src="/console/main.js">' in page.text
            # No inline script or style: the CSP would block them.
            assert "<style" not in page.text and " style=" not in page.text
        script = anonymous.get("/console/main.js")
        assert script.status_code == 200
        assert script.headers["content-type"] == "text/javascript; charset=utf-8"
        assert script.headers["content-security-policy"] == CSP
        etag = script.headers["etag"]
        again = anonymous.get("/console/main.js", headers={"if-none-match": etag})
        assert again.status_code == 304 and again.content == b""
        assert anonymous.get("/console/views/lake.js").status_code == 200
        for missing in ("/console/nope.js", "/console/%2e%2e/cli.py", "/console/views%2F..%2Fx"):
            response = anonymous.get(missing)
            assert response.status_code == 404, missing
            assert response.headers["content-security-policy"] == CSP
        assert anonymous.post("/console/").status_code == 405
        # The API itself still needs a token.
        assert anonymous.get("/v1/basins").status_code == 401


def test_whoami_tells_a_token_its_own_scope(server: ServerProcess, api: httpx.Client) -> None:
    mine = api.get("/v1/whoami")
    assert mine.status_code == 200
    assert mine.json()["access_control"] is True
    assert mine.json()["token"]["id"] == "root"
    scope = {"basins": {"prefix": "shown-"}, "streams": {"prefix": ""}, "ops": ["list-basins"]}
    secret = _issue(api, "console-whoami", scope)
    with httpx.Client(base_url=server.http_url) as client:
        answer = client.get("/v1/whoami", headers={"authorization": f"Bearer {secret}"})
        assert answer.status_code == 200
        token = answer.json()["token"]
        assert token["id"] == "console-whoami"
        assert token["scope"]["basins"] == {"prefix": "shown-"}
        assert token["scope"]["ops"] == ["list-basins"]
        assert "access_token" not in token  # never the secret
        assert client.get("/v1/whoami").status_code == 401
        wrong = client.get("/v1/whoami", headers={"authorization": "Bearer s2s_nope"})
        assert wrong.status_code == 401 and wrong.json()["code"] == "authn"
        mine_only = {"authorization": f"Bearer {secret}"}
        assert client.post("/v1/whoami", headers=mine_only).status_code == 405


def test_whoami_without_access_control(tmp_path: object) -> None:
    process = ServerProcess(str(tmp_path)).start()
    try:
        answer = httpx.get(f"{process.http_url}/v1/whoami")
        assert answer.status_code == 200
        assert answer.json()["access_control"] is False
        assert answer.json()["token"]["scope"]["basins"] == {"prefix": ""}
    finally:
        process.stop()


def test_stream_status(server: ServerProcess, api: httpx.Client) -> None:
    headers = {"s2-basin": BASIN}
    assert api.put("/v1/streams/status-1", headers=headers).status_code in (200, 201)
    fresh = api.get("/v1/streams/status-1/status", headers=headers)
    assert fresh.status_code == 200
    assert fresh.json() == {
        "tail": {"seq_num": 0, "timestamp": 0},
        "trim_point": 0,
        "last_write_at": None,
        "fenced": False,
        "cipher": None,
    }
    b64 = base64.b64encode
    records = [
        {"body": b64(b"one").decode(), "timestamp": 1000},
        {"body": b64(b"two").decode(), "timestamp": 2000},
        {"headers": [["", b64(b"fence").decode()]], "body": b64(b"lease-1").decode()},
        {"headers": [["", b64(b"trim").decode()]], "body": b64(struct.pack(">Q", 1)).decode()},
    ]
    appended = api.post(
        "/v1/streams/status-1/records",
        headers={**headers, "s2-format": "base64"},
        json={"records": records},
    )
    assert appended.status_code == 200, appended.text
    status = api.get("/v1/streams/status-1/status", headers=headers).json()
    assert status["tail"]["seq_num"] == 4
    assert status["trim_point"] == 1
    assert status["fenced"] is True
    assert "lease-1" not in str(status)
    assert status["last_write_at"].endswith("Z")
    unknown = api.get("/v1/streams/nope/status", headers=headers)
    assert unknown.status_code == 404 and unknown.json()["code"] == "stream_not_found"
    assert api.get("/v1/streams/x/status").json()["code"] == "bad_header"
    assert api.delete("/v1/streams/status-1/status", headers=headers).status_code == 405

    def status_with_only(op: str) -> httpx.Response:
        """The status asked with a token allowed `op` alone on the basin."""
        scope = {"basins": {"exact": BASIN}, "streams": {"prefix": ""}, "ops": [op]}
        secret = _issue(api, f"console-status-{op}", scope)
        return httpx.get(
            f"{server.http_url}/v1/streams/status-1/status",
            headers={**headers, "authorization": f"Bearer {secret}"},
        )

    # check-tail is the permission it needs.
    denied = status_with_only("read")
    assert denied.status_code == 403 and denied.json()["code"] == "permission_denied"
    # ... and all it needs: the cipher comes with the tail, not with the stream's config.
    allowed = status_with_only("check-tail")
    assert allowed.status_code == 200, allowed.text
    assert allowed.json()["cipher"] is None


def test_sql_results_download_as_csv_and_parquet(api: httpx.Client) -> None:
    sql = "SELECT i, 'r' || i AS name, [i, i] AS pair FROM range(3) t(i) ORDER BY i"
    csv = api.post("/v1/lake/query", json={"sql": sql}, headers={"accept": "text/csv"})
    assert csv.status_code == 200, csv.text
    assert csv.headers["content-type"] == "text/csv; charset=utf-8"
    assert csv.headers["content-disposition"] == 'attachment; filename="result.csv"'
    assert csv.headers["s2s-truncated"] == "false"
    assert csv.text.splitlines() == [
        '"i","name","pair"',
        '0,"r0","[0,0]"',
        '1,"r1","[1,1]"',
        '2,"r2","[2,2]"',
    ]
    parquet = api.post(
        "/v1/lake/query", json={"sql": sql}, headers={"accept": "application/vnd.apache.parquet"}
    )
    assert parquet.status_code == 200
    assert parquet.headers["content-type"] == "application/vnd.apache.parquet"
    table = pq.read_table(io.BytesIO(parquet.content))
    assert table.column("name").to_pylist() == ["r0", "r1", "r2"]
    assert table.column("pair").to_pylist() == [[0, 0], [1, 1], [2, 2]]
    interval = api.post(
        "/v1/lake/query",
        json={"sql": "SELECT INTERVAL 3 DAY AS gap"},
        headers={"accept": "application/vnd.apache.parquet"},
    )
    assert interval.status_code == 422
    assert "gap" in interval.json()["message"]
    refused = api.post(
        "/v1/lake/query",
        json={"sql": "COPY (SELECT 1) TO 'x.csv'"},
        headers={"accept": "text/csv"},
    )
    assert refused.status_code == 400 and refused.json()["code"] == "read_only_sql"
