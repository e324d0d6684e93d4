"""The server each console test module runs against: a real `s2s serve` with access control
and the lake on (its own data directory per module), and the root token's HTTP client, with
the module's `BASIN` created, to set up and check what the console shows."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.server_process import ServerProcess


@pytest.fixture(scope="module")
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    data_dir = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1]) / "data"
    process = ServerProcess(str(data_dir), auth=True, extra_args=["--lake-linger-ms", "50"])
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def api(request: pytest.FixtureRequest, server: ServerProcess) -> Iterator[httpx.Client]:
    headers = {"authorization": f"Bearer {server.root_token}"}
    with httpx.Client(base_url=server.http_url, headers=headers, timeout=30) as client:
        assert client.put(f"/v1/basins/{request.module.BASIN}").status_code in (200, 201)
        yield client
