"""Fixtures for the lake's HTTP tests: one real `s2s serve` per test module, and a thin
client for its lake routes (ingest, SQL, materializations, metrics)."""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.server_process import ServerProcess

_table_ids = itertools.count()
# Short lingering makes each wait=true ingest commit within a fraction of a second.
_SERVER_ARGS = ["--lake-linger-ms", "100"]


class LakeClient:
    """The lake's HTTP API as the tests use it; every call returns the raw response."""

    def __init__(self, base_url: str) -> None:
        # A bearer token is sent to show it is accepted (and, for now, ignored).
        self.http = httpx.Client(
            base_url=base_url, timeout=30, headers={"authorization": "Bearer test-token"}
        )

    def close(self) -> None:
        self.http.close()

    def declare(self, table: str, **spec: Any) -> dict[str, Any]:
        """Declares a materialization named after `table` that creates it; returns its status."""
        body = {"name": table, "table": table, "create_table": True, **spec}
        response = self.http.post("/v1/lake/materializations", json=body)
        assert response.status_code == 201, response.text
        status: dict[str, Any] = response.json()
        return status

    def ingest(self, table: str, rows: Any, **config: Any) -> httpx.Response:
        return self.http.post(
            "/v2/stream", json={"data": rows, "config": {"table": table, **config}}
        )

    def ingest_ok(self, table: str, rows: Any, **config: Any) -> dict[str, Any]:
        """Ingests with wait=true and checks the rows were committed; returns the body."""
        response = self.ingest(table, rows, wait=True, **config)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        assert isinstance(result["snapshot_id"], int), result
        return result

    def sql(self, sql: str, **body: Any) -> httpx.Response:
        return self.http.post("/v1/lake/query", json={"sql": sql, **body})

    def rows(self, sql: str) -> list[list[Any]]:
        response = self.sql(sql)
        assert response.status_code == 200, response.text
        rows: list[list[Any]] = response.json()["rows"]
        return rows

    def status(self, name: str) -> dict[str, Any]:
        response = self.http.get(f"/v1/lake/materializations/{name}")
        assert response.status_code == 200, response.text
        status: dict[str, Any] = response.json()
        return status

    def caught_up(self, name: str, timeout_s: float = 60.0) -> dict[str, Any]:
        """Polls a materialization's status until it has no lag; returns that status."""
        deadline = time.monotonic() + timeout_s
        status = self.status(name)
        while status["lag_records"] != 0 and time.monotonic() < deadline:
            time.sleep(0.1)
            status = self.status(name)
        assert status["lag_records"] == 0, status
        return status

    def metric(self, metric: str, /, **labels: str) -> float:
        """One sample from `/metrics`; 0 when the series does not exist yet."""
        text = self.http.get("/metrics").text
        rendered = ",".join(f'{key}="{value}"' for key, value in labels.items())
        series = f"{metric}{{{rendered}}}" if labels else metric
        match = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
        return float(match.group(1)) if match else 0.0

    def wait_for(self, sql: str, expected: list[list[Any]], timeout_s: float = 15.0) -> None:
        """Polls a query until it returns `expected` (for writes made without wait=true)."""
        deadline = time.monotonic() + timeout_s
        rows = self.rows(sql)
        while rows != expected and time.monotonic() < deadline:
            time.sleep(0.1)
            rows = self.rows(sql)
        assert rows == expected


@pytest.fixture(scope="module")
def lake_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data_dir = tmp_path_factory.mktemp("lake-http") / "data"
    process = ServerProcess(str(data_dir), extra_args=_SERVER_ARGS).start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def lake(lake_server: ServerProcess) -> Iterator[LakeClient]:
    client = LakeClient(lake_server.http_url)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def table() -> str:
    """A table name no other test of the session uses."""
    return f"bronze.t{next(_table_ids):04d}"
