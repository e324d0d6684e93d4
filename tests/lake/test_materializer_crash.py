"""kill -9 of the server while a materialization is applying thousands of records: after each
restart, the table must hold every record exactly once (rows and checkpoint commit together)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from client import S2SClient
from tests.server_process import ServerProcess

BASIN = "crash-lake"
STREAM = "events"
RECORDS_PER_ROUND = 4000
ROUNDS = 3
# Maintenance every second: kills also land while small files are being merged.
SERVER_ARGS = [
    "--lake-batch-rows",
    "400",
    "--lake-linger-ms",
    "20",
    "--lake-maintenance-interval-s",
    "1",
]


def _status(http: httpx.Client) -> dict[str, Any]:
    response = http.get("/v1/lake/materializations/crash")
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


def _sql(http: httpx.Client, sql: str) -> list[list[Any]]:
    response = http.post("/v1/lake/query", json={"sql": sql})
    response.raise_for_status()
    rows: list[list[Any]] = response.json()["rows"]
    return rows


async def _append_round(target: str, first_id: int) -> None:
    async with S2SClient(target) as client:
        stream = client.stream(BASIN, STREAM)
        for start in range(first_id, first_id + RECORDS_PER_ROUND, 500):
            bodies = [
                json.dumps({"id": i, "round_pad": "x" * 200}).encode()
                for i in range(start, start + 500)
            ]
            await stream.append(bodies)


async def _create_source(target: str) -> None:
    async with S2SClient(target) as client:
        await client.create_basin(BASIN)
        await client.create_stream(BASIN, STREAM)


def _wait_for(predicate: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.xdist_group("lake-crash")
@pytest.mark.parametrize("mode", ["append", "merge"])
async def test_kill9_during_materialization_applies_each_record_once(
    tmp_path: Path, mode: str
) -> None:
    """Merge mode upserts, so a repeated batch would not show as extra rows: there the
    checkpoint's own count (`rows_applied`, committed with the rows) must match."""
    data_dir = str(tmp_path / "data")
    server = ServerProcess(data_dir, extra_args=SERVER_ARGS).start()
    try:
        await _create_source(server.target)
        with httpx.Client(base_url=server.http_url, timeout=30) as http:
            created = http.post(
                "/v1/lake/materializations",
                json={
                    "name": "crash",
                    "table": "bronze.crash_events",
                    "basin": BASIN,
                    "stream": STREAM,
                    "create_table": True,
                    "mode": mode,
                    "primary_key": "id" if mode == "merge" else None,
                },
            )
            assert created.status_code == 201, created.text
        kills_mid_apply = 0
        for round_index in range(ROUNDS):
            first_id = round_index * RECORDS_PER_ROUND
            await _append_round(server.target, first_id)
            total = first_id + RECORDS_PER_ROUND
            # Kill once this round's records are partly applied: commits are in flight.
            midpoint = first_id + RECORDS_PER_ROUND // 2
            with httpx.Client(base_url=server.http_url, timeout=30) as http:
                applied = _wait_for(
                    lambda http=http, midpoint=midpoint: (
                        _status(http)["applied_seq_num"] >= midpoint
                        and _status(http)["applied_seq_num"]
                    ),
                    60,
                    "half of the round to apply",
                )
            server.kill()
            kills_mid_apply += applied < total
            server = ServerProcess(data_dir, extra_args=SERVER_ARGS).start()
            with httpx.Client(base_url=server.http_url, timeout=30) as http:
                _wait_for(
                    lambda http=http, total=total: _status(http)["applied_seq_num"] == total,
                    60,
                    "the materialization to catch up after restart",
                )
                [[rows, distinct, low, high]] = _sql(
                    http,
                    "SELECT count(*), count(DISTINCT id), min(id), max(id) "
                    "FROM bronze.crash_events",
                )
                assert (rows, distinct, low, high) == (total, total, 0, total - 1)
                status = _status(http)
                assert (status["rows_applied"], status["rows_rejected"]) == (total, 0)
        assert kills_mid_apply >= 1, "no kill landed while records were still being applied"
    finally:
        if server.process is not None and server.process.poll() is None:
            server.stop()
