"""Fixtures: a real server process per test and a connected client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from client import S2SClient
from tests.server_process import ServerProcess

BASIN = "grpc-basin"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    with ServerProcess(str(tmp_path / "data")).start() as process:
        yield process


@pytest.fixture
async def client(server: ServerProcess) -> AsyncIterator[S2SClient]:
    async with S2SClient(server.target) as connected:
        await connected.create_basin(BASIN)
        yield connected
