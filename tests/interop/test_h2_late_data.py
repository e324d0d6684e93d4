"""Responses that end before their request body has arrived, over one HTTP/2 connection: the
connection survives and the server logs no traceback (`server/http_frontend/h2_late_data.py`)."""

from __future__ import annotations

import time

import httpx

from tests.server_process import ServerProcess

REQUESTS = 100
BODY = b"x" * 200_000
"""Sent in several DATA frames, so that some arrive after the 400 was sent."""


def test_early_answers_keep_the_connection(server: ServerProcess, basin_name: str) -> None:
    with httpx.Client(base_url=server.http_url, http1=False, http2=True, timeout=10) as h2:
        assert h2.post("/v1/basins", json={"basin": basin_name}).status_code == 201
        basin = {"s2-basin": basin_name}
        assert h2.post("/v1/streams", json={"stream": "s"}, headers=basin).status_code == 201
        s2s = {**basin, "content-type": "s2s/proto", "accept": "s2s/proto"}
        terminal_frame = b"\x00\x00\x01\x80"  # clients may not send it: answered at once
        for _ in range(REQUESTS):
            # No s2-basin header: refused before the body is read.
            response = h2.post("/v1/streams/s/records", content=BODY)
            assert response.status_code == 400 and response.json()["code"] == "bad_header"
            session = h2.post("/v1/streams/s/records", content=terminal_frame + BODY, headers=s2s)
            assert session.status_code == 200 and session.content[3] == 0x80
        assert h2.get("/v1/basins").status_code == 200
    time.sleep(0.2)  # the log is read by a thread
    assert [line for line in server.log if "Traceback" in line or "KeyError" in line] == []
