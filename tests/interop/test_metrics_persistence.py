"""The metrics API's counts and stored bytes across restarts of a real server: a graceful stop
keeps everything; a kill -9 keeps every count older than one flush interval, and the stored
bytes exactly (recounted from the batches where the last snapshot is stale)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from tests.server_process import ServerProcess

BASIN = "persisted-basin"
FLUSH_INTERVAL_S = 0.5


def _server(data_dir: Path) -> ServerProcess:
    return ServerProcess(
        str(data_dir), extra_args=["--metrics-flush-interval-s", str(FLUSH_INTERVAL_S)]
    ).start()


def _get(http: httpx.Client, path: str, set_: str) -> list[dict[str, Any]]:
    now = int(time.time())
    response = http.get(path, params={"set": set_, "start": now - 3600, "end": now})
    assert response.status_code == 200, response.text
    values: list[dict[str, Any]] = response.json()["values"]
    return values


def _sum(http: httpx.Client, path: str, set_: str, name: str) -> float:
    return float(
        sum(
            value
            for metric in _get(http, path, set_)
            if metric["accumulation"]["name"] == name
            for _, value in metric["accumulation"]["values"]
        )
    )


def _storage(http: httpx.Client, path: str) -> float:
    (metric,) = _get(http, path, "storage")
    last: float = metric["gauge"]["values"][-1][1]
    return last


def _append(http: httpx.Client, stream: str, body: str) -> int:
    response = http.post(
        f"/v1/streams/{stream}/records",
        headers={"s2-basin": BASIN},
        json={"records": [{"body": body}]},
    )
    assert response.status_code == 200, response.text
    return 8 + len(body)


def _setup(http: httpx.Client) -> None:
    assert http.post("/v1/basins", json={"basin": BASIN}).status_code == 201
    for stream in ("kept", "other"):
        created = http.post("/v1/streams", headers={"s2-basin": BASIN}, json={"stream": stream})
        assert created.status_code == 201, created.text


def _state(http: httpx.Client) -> tuple[float, float, float, float, float]:
    basin = f"/v1/metrics/{BASIN}"
    return (
        _sum(http, basin, "append-ops", "express"),
        _sum(http, basin, "append-throughput", "append-throughput"),
        _storage(http, basin),
        _storage(http, f"{basin}/kept"),
        _storage(http, f"{basin}/other"),
    )


def test_a_graceful_restart_keeps_every_count(tmp_path: Path) -> None:
    server = _server(tmp_path)
    try:
        with httpx.Client(base_url=server.http_url, timeout=30) as http:
            _setup(http)
            kept = sum(_append(http, "kept", "k" * n) for n in (5, 50, 500))
            other = _append(http, "other", "o" * 70)
            before = _state(http)
            assert before == (4, kept + other, kept + other, kept, other)
    finally:
        assert server.stop() == 0
    server = _server(tmp_path)
    try:
        with httpx.Client(base_url=server.http_url, timeout=30) as http:
            assert _state(http) == before
    finally:
        server.stop()


def test_kill_9_loses_at_most_a_flush_interval_and_no_stored_byte(tmp_path: Path) -> None:
    server = _server(tmp_path)
    try:
        with httpx.Client(base_url=server.http_url, timeout=30) as http:
            _setup(http)
            flushed = sum(_append(http, "kept", "k" * n) for n in (5, 50, 500))
            time.sleep(FLUSH_INTERVAL_S * 4)  # flushed by now
            # Appended just before the kill: their counts may be lost, their bytes never are.
            late = _append(http, "kept", "late" * 100) + _append(http, "other", "o" * 70)
            server.kill()
    finally:
        if server.process is not None and server.process.poll() is None:
            server.kill()
    server = _server(tmp_path)
    try:
        with httpx.Client(base_url=server.http_url, timeout=30) as http:
            ops, appended, basin_stored, kept, other = _state(http)
            assert 3 <= ops <= 5
            assert flushed <= appended <= flushed + late
            assert (basin_stored, kept, other) == (
                flushed + late,
                flushed + 8 + 400,
                8 + 70,
            )
    finally:
        server.stop()
