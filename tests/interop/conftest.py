"""One real `s2s serve` process per test module, driven over HTTP by the official `s2-sdk`."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator

import pytest
from s2_sdk import S2, Compression, Endpoints, Retry

from tests.server_process import ServerProcess

_basin_ids = itertools.count()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(str(tmp_path_factory.mktemp("interop") / "data")).start()
    try:
        yield process
    finally:
        process.stop()


def sdk_client(
    server: ServerProcess,
    compression: Compression = Compression.NONE,
    retry: Retry | None = None,
) -> S2:
    """The SDK in direct mode: both endpoints are our origin, the basin goes in `s2-basin`."""
    endpoints = Endpoints(account=server.http_url, basin=server.http_url)
    client: S2 = S2("unused-token", endpoints=endpoints, compression=compression, retry=retry)
    return client


@pytest.fixture
async def sdk(server: ServerProcess) -> AsyncIterator[S2]:
    async with sdk_client(server) as client:
        yield client


@pytest.fixture
def basin_name(request: pytest.FixtureRequest) -> str:
    """A basin name unique within the module's server (8-48 chars, [a-z0-9-])."""
    return f"it-{next(_basin_ids):04d}-{abs(hash(request.node.name)) % 10**8:08d}"
