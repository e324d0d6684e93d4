"""`s2s serve --storage postgres:...`: the stream log in a real PostgreSQL server (durable: fsync
on) started by the test. A kill -9 during a session flood loses no acknowledged batch and the
numbering continues after the restart; HTTP and gRPC see the same records; a second server on
the same database is refused in one line while the first runs; bad `--storage` values are
usage errors, an unreachable database or one with fsync off one line each, none with a
traceback."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from client import S2SClient
from tests.grpc_api.conftest import BASIN
from tests.grpc_api.test_sessions import (
    assert_acked_batches_whole,
    flood_until_server_stops,
    read_bodies,
)
from tests.postgres import PostgresServer, running_postgres
from tests.server_process import SOURCE_TREE_S2S, ServerProcess

pytestmark = pytest.mark.xdist_group("postgres-storage")


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with running_postgres(dbname="s2s_log", durable=True) as server:
        yield server


def _storage(server: PostgresServer) -> list[str]:
    return ["--storage", f"postgres:{server.libpq()}"]


async def test_kill9_during_a_flood_loses_no_acknowledged_batch(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    server = ServerProcess(str(tmp_path / "a"), extra_args=_storage(postgres)).start()
    assert any("storage open: PostgreSQL (" in line for line in server.log), server.log
    acked = await flood_until_server_stops(
        server.target, "flood", lambda batch_id: 1 + batch_id % 50, server.kill
    )
    # Another data directory: everything the stream log holds is in the database.
    restarted = ServerProcess(str(tmp_path / "b"), extra_args=_storage(postgres)).start()
    try:
        async with S2SClient(restarted.target) as client:
            bodies = await read_bodies(client, "flood")
            assert_acked_batches_whole(bodies, acked)
            ack = await client.stream(BASIN, "flood").append([b"after-restart"])
            assert ack.start.seq_num == len(bodies)
        with httpx.Client(base_url=restarted.http_url, timeout=30) as http:
            tail = http.get("/v1/streams/flood/records/tail", headers={"s2-basin": BASIN})
            assert tail.json()["tail"]["seq_num"] == len(bodies) + 1, tail.text

        second = ServerProcess(str(tmp_path / "c"), extra_args=_storage(postgres))
        with pytest.raises(RuntimeError) as refused:
            second.start()
        log = "".join(second.log) + str(refused.value)
        assert "another s2s server is writing to this PostgreSQL database" in log
        assert "Traceback" not in log
    finally:
        restarted.stop()
    assert "Traceback" not in "".join(restarted.log)


def _serve(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *SOURCE_TREE_S2S,
            *("serve", "--data-dir", str(tmp_path / "d"), "--no-auth"),
            *("--grpc-port", "0", "--http-port", "0", *args),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("value", ["", "sqlite", "postgres:", "postgres:   ", "postgres:=x"])
def test_a_bad_storage_value_is_a_usage_error(tmp_path: Path, value: str) -> None:
    result = _serve(tmp_path, "--storage", value)
    assert result.returncode == 2, result.stderr
    assert "--storage" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2, result.stderr


def test_an_unreachable_database_is_one_line(tmp_path: Path) -> None:
    result = _serve(tmp_path, "--storage", "postgres:host=127.0.0.1 port=1 connect_timeout=2")
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: cannot connect to PostgreSQL"), result.stderr
    assert "Traceback" not in result.stderr


def test_a_database_without_fsync_is_refused(tmp_path: Path) -> None:
    with running_postgres(durable=False) as unsafe:
        result = _serve(tmp_path, *_storage(unsafe))
    assert result.returncode == 1, result.stderr
    assert "fsync off" in result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr
