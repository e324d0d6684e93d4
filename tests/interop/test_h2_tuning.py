"""The HTTP/2 tuning of `server/http_frontend/h2_tuning.py`, seen from a real client socket.

The server must advertise its larger stream window and frame size in its first SETTINGS
frame and open the connection window, and it must accept a request body sent as frames of
that size. The frame-repr replacement must produce hyperframe's exact text.
"""

from __future__ import annotations

import socket

import h2.config
import h2.connection
import h2.events
import h2.settings
import httpx

from server.http_frontend.h2_tuning import (
    CONNECTION_WINDOW_BYTES,
    FRAME_BYTES_MAX,
    STREAM_WINDOW_BYTES,
    frame_data_repr,
)
from tests.server_process import ServerProcess

DEFAULT_WINDOW_BYTES = 65_535


def _connect(server: ServerProcess) -> tuple[socket.socket, h2.connection.H2Connection]:
    sock = socket.create_connection(("127.0.0.1", server.http_port), timeout=10)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    return sock, conn


def _events_until(
    sock: socket.socket, conn: h2.connection.H2Connection, *wanted: type[h2.events.Event]
) -> list[h2.events.Event]:
    """Read until an event of every `wanted` type arrived (they may share one read)."""
    events: list[h2.events.Event] = []
    while not all(any(isinstance(event, kind) for event in events) for kind in wanted):
        data = sock.recv(65_536)
        assert data, "server closed the connection"
        events += conn.receive_data(data)
        sock.sendall(conn.data_to_send())
    return events


def test_server_advertises_large_windows_and_frames(server: ServerProcess) -> None:
    sock, conn = _connect(server)
    with sock:
        events = _events_until(sock, conn, h2.events.RemoteSettingsChanged, h2.events.WindowUpdated)
    settings = next(e for e in events if isinstance(e, h2.events.RemoteSettingsChanged))
    changed = settings.changed_settings
    codes = h2.settings.SettingCodes
    assert changed[codes.INITIAL_WINDOW_SIZE].new_value == STREAM_WINDOW_BYTES
    assert changed[codes.MAX_FRAME_SIZE].new_value == FRAME_BYTES_MAX
    update = next(e for e in events if isinstance(e, h2.events.WindowUpdated))
    assert update.stream_id == 0
    assert update.delta == CONNECTION_WINDOW_BYTES - DEFAULT_WINDOW_BYTES


def test_a_body_sent_in_maximal_frames_is_accepted(server: ServerProcess, basin_name: str) -> None:
    with httpx.Client(base_url=server.http_url) as http:
        assert http.post("/v1/basins", json={"basin": basin_name}).status_code == 201
        created = http.post("/v1/streams", json={"stream": "big"}, headers={"s2-basin": basin_name})
        assert created.status_code == 201
    sock, conn = _connect(server)
    body = b'{"records": [{"body": "' + b"x" * (FRAME_BYTES_MAX - 100) + b'"}]}'
    with sock:
        _events_until(sock, conn, h2.events.RemoteSettingsChanged, h2.events.WindowUpdated)
        assert conn.max_outbound_frame_size == FRAME_BYTES_MAX
        stream_id = conn.get_next_available_stream_id()
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":authority", f"127.0.0.1:{server.http_port}"),
            (":path", "/v1/streams/big/records"),
            ("content-type", "application/json"),
            ("s2-basin", basin_name),
        ]
        conn.send_headers(stream_id, headers)
        # One DATA frame carrying (nearly) the whole body: larger than HTTP/2's 16 KiB default.
        assert len(body) > 16_384 and conn.local_flow_control_window(stream_id) >= len(body)
        conn.send_data(stream_id, body, end_stream=True)
        sock.sendall(conn.data_to_send())
        events = _events_until(sock, conn, h2.events.StreamEnded)
    response = next(e for e in events if isinstance(e, h2.events.ResponseReceived))
    assert dict(response.headers)[b":status"] == b"200"
    with httpx.Client(base_url=server.http_url) as http:
        tail = http.get("/v1/streams/big/records/tail", headers={"s2-basin": basin_name})
    assert tail.json()["tail"]["seq_num"] == 1


def test_frame_data_repr_matches_hyperframe() -> None:
    assert frame_data_repr(None) == "None"
    assert frame_data_repr(b"") == "None"
    assert frame_data_repr(b"\x01") == "<hex:01>"
    assert frame_data_repr(bytes(range(10))) == "<hex:00010203040506070809>"
    assert frame_data_repr(bytes(range(11))) == "<hex:00010203040506070809...>"
    assert frame_data_repr(b"x" * 1_000_000) == "<hex:" + "78" * 10 + "...>"
