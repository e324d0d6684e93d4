"""Fixtures: a real server process and clients of it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from client import S2SClient, SyncClient
from tests.server_process import ServerProcess


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    with ServerProcess(str(tmp_path / "data")).start() as process:
        yield process


@pytest.fixture
async def client(server: ServerProcess) -> AsyncIterator[S2SClient]:
    async with S2SClient(server.target) as connected:
        yield connected


@pytest.fixture
def sync_client(server: ServerProcess) -> Iterator[SyncClient]:
    with SyncClient(server.target) as connected:
        yield connected
