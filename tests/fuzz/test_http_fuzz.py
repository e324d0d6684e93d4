"""Every HTTP route of a real server under generated malformed requests: no input gets a 500,
the log shows no traceback, and the server still answers afterwards.

How many requests, and how they are drawn: `tests/fuzz/budget.py` (3,000 by default, ~15 s).
"""

from __future__ import annotations

import collections
import contextlib
import json
import socket
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import given

from tests.fuzz.budget import fuzzed
from tests.fuzz.inputs import (
    BASIN,
    KV_KEY,
    KV_STORE,
    MATERIALIZATION,
    STREAM,
    TABLE,
    RawRequest,
    requests,
)
from tests.server_process import ServerProcess

pytestmark = pytest.mark.xdist_group("fuzz-http")

_RESPONSE_TIMEOUT_S = 20.0
_statuses: collections.Counter[int] = collections.Counter()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(
        str(tmp_path_factory.mktemp("fuzz") / "data"), extra_args=["--lake-linger-ms", "50"]
    ).start()
    try:
        with httpx.Client(base_url=process.http_url, timeout=30) as http:
            assert http.post("/v1/basins", json={"basin": BASIN}).status_code == 201
            created = http.post("/v1/streams", json={"stream": STREAM}, headers={"s2-basin": BASIN})
            assert created.status_code == 201
            appended = http.post(
                f"/v1/streams/{STREAM}/records",
                json={"records": [{"body": "one"}, {"body": "two"}]},
                headers={"s2-basin": BASIN},
            )
            assert appended.status_code == 200
            declared = http.post(
                "/v1/lake/materializations",
                json={"name": MATERIALIZATION, "table": TABLE, "create_table": True},
            )
            assert declared.status_code == 201, declared.text
            stored = http.put(f"/v1/kv/{BASIN}/{KV_STORE}/keys/{KV_KEY}", json={"value": "v"})
            assert stored.status_code == 200, stored.text
        yield process
    finally:
        process.stop()


def _send(port: int, request: RawRequest) -> tuple[int, dict[bytes, bytes], bytes]:
    """Status, headers and (for error answers with a length) body. Streaming answers are
    closed after their headers: a follow read would never end."""
    with socket.create_connection(("127.0.0.1", port), timeout=_RESPONSE_TIMEOUT_S) as sock:
        # The server may refuse before reading it all; its answer is still there.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request.encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                raise AssertionError(f"connection closed without an answer: {data!r}")
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status_line, *header_lines = head.split(b"\r\n")
        status = int(status_line.split()[1])
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        length = headers.get(b"content-length")
        if status >= 400 and length is not None and request.method != "HEAD":
            while len(body) < int(length):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                body += chunk
        return status, headers, body


def test_no_request_gets_a_500_and_the_server_survives(server: ServerProcess) -> None:
    """The generated requests, then the server's state after all of them: one test, so the
    survival check can never run on a server that saw no fuzz input."""
    _each_request_is_answered_without_a_500(server)
    _the_server_survived_with_no_traceback(server)


@fuzzed()
@given(request=requests())
def _each_request_is_answered_without_a_500(server: ServerProcess, request: RawRequest) -> None:
    status, headers, body = _send(server.http_port, request)
    _statuses[status] += 1
    assert status < 500 or status == 501, (status, body[:500])
    json_body = headers.get(b"content-type") == b"application/json" and request.method != "HEAD"
    if status >= 400 and json_body:
        error = json.loads(body)
        codes = [error["code"]] if "code" in error else [e["code"] for e in error.get("errors", [])]
        special = {"seq_num_mismatch", "fencing_token_mismatch", "tail"} & set(error)
        assert codes or special, body


def _the_server_survived_with_no_traceback(server: ServerProcess) -> None:
    assert _statuses, "no request was sent"
    assert server.process is not None and server.process.poll() is None
    with httpx.Client(base_url=server.http_url, timeout=10) as http:
        assert http.get("/health").status_code == 200
        tail = http.get(f"/v1/streams/{STREAM}/records/tail", headers={"s2-basin": BASIN})
        assert tail.status_code == 200, tail.text
    log = "".join(server.log)
    assert "Traceback" not in log, log[-5000:]
    print(f"fuzz: {sum(_statuses.values())} requests, by status: {sorted(_statuses.items())}")
