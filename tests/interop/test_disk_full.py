"""A full disk under a real server: appends fail with a storage-full `unavailable` (503), change
nothing, and succeed again, at every size, once space is freed, without a restart.

The data directory is on a size-limited tmpfs that the test mounts (root only; skipped with a
message elsewhere), and a filler file takes whatever room is left, as another program on the
same disk would.
"""

from __future__ import annotations

import errno
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from s2s.v1 import records_pb2 as pb
from s2s.v1 import services_pb2 as spb
from s2s.v1 import services_pb2_grpc as services
from tests.server_process import ServerProcess

# The lake's DuckDB extension alone takes ~35 MiB of the data directory.
_TMPFS_BYTES = 96 << 20
_BASIN = {"s2-basin": "disk-full"}
_RECORD_BYTES = (1, 1024, 100 * 1024, 700 * 1024)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root")
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={_TMPFS_BYTES}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.fixture
def server(small_disk: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(str(small_disk / "data")).start()
    try:
        yield process
    finally:
        process.stop()


def _fill(path: Path) -> None:
    """Write `path` until the filesystem has no room left (the last write is cut short)."""
    chunk = b"\0" * (1 << 20)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        while True:
            os.write(fd, chunk)
    except OSError as error:
        assert error.errno == errno.ENOSPC, error
    finally:
        os.close(fd)


def _append(http: httpx.Client, size: int) -> httpx.Response:
    record = {"body": "x" * size}
    return http.post("/v1/streams/s/records", json={"records": [record]}, headers=_BASIN)


def _tail(http: httpx.Client) -> int:
    response = http.get("/v1/streams/s/records/tail", headers=_BASIN)
    assert response.status_code == 200, response.text
    seq_num: int = response.json()["tail"]["seq_num"]
    return seq_num


@pytest.mark.lmdb_only("a full data directory, where the LMDB log is")
def test_appends_fail_cleanly_while_the_disk_is_full_and_resume_once_it_is_freed(
    server: ServerProcess, small_disk: Path
) -> None:
    assert server.process is not None
    with httpx.Client(base_url=server.http_url, timeout=30) as http:
        assert http.post("/v1/basins", json={"basin": "disk-full"}).status_code == 201
        assert http.post("/v1/streams", json={"stream": "s"}, headers=_BASIN).status_code == 201
        assert _append(http, 10).status_code == 200
        declared = http.post(
            "/v1/lake/materializations",
            json={"name": "full", "table": "bronze.full", "create_table": True},
        )
        assert declared.status_code == 201, declared.text
        filler = small_disk / "filler"
        _fill(filler)

        refused = _append(http, _RECORD_BYTES[-1])
        assert refused.status_code == 503, refused.text
        body = refused.json()
        assert body["code"] == "unavailable"
        assert "disk" in body["message"] and "full" in body["message"]
        assert _tail(http) == 1, "a refused append changed the stream"

        with grpc.insecure_channel(server.target) as channel:
            stub = services.StreamServiceStub(channel)
            request = spb.AppendRequest(
                basin="disk-full",
                stream="s",
                input=pb.AppendInput(records=[pb.AppendRecord(body=b"y" * (700 * 1024))]),
            )
            with pytest.raises(grpc.RpcError) as raised:
                stub.Append(request, timeout=30)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "full" in (raised.value.details() or "")
        assert _tail(http) == 1

        ingest = http.post(
            "/v2/stream",
            json={"data": [{"id": 1, "note": "z" * 700_000}], "config": {"table": "bronze.full"}},
        )
        assert ingest.status_code == 503, ingest.text
        assert [e["code"] for e in ingest.json()["errors"]] == ["unavailable"], ingest.text

        filler.unlink()
        for size in _RECORD_BYTES:
            response = _append(http, size)
            assert response.status_code == 200, (size, response.text)
        assert _tail(http) == 1 + len(_RECORD_BYTES)
        read = http.get("/v1/streams/s/records", params={"seq_num": 1}, headers=_BASIN)
        assert [len(r["body"]) for r in read.json()["records"]] == list(_RECORD_BYTES)

    assert server.process.poll() is None, "the server exited"
    log = "".join(server.log)
    assert "Traceback" not in log, log
    # One line for the operator, not one per refused commit.
    assert log.count("disk holding the stream log is full") == 1, log
    assert "commits succeed again" in log


def test_a_materialization_reports_a_full_disk_and_catches_up_once_it_is_freed(
    small_disk: Path, tmp_path: Path
) -> None:
    """The lake's Parquet files on a full disk: the materialization's status says so within
    seconds (it stayed "running" with no error while its source was quiet), and it applies
    every record exactly once when space is freed."""
    server = ServerProcess(
        str(tmp_path / "data"),
        extra_args=["--lake-data-path", str(small_disk / "lake"), "--lake-linger-ms", "50"],
    ).start()
    try:
        with httpx.Client(base_url=server.http_url, timeout=30) as http:
            declared = http.post(
                "/v1/lake/materializations",
                json={"name": "t", "table": "bronze.t", "create_table": True},
            )
            assert declared.status_code == 201, declared.text
            first = {"data": [{"id": 0}], "config": {"table": "bronze.t", "wait": True}}
            assert http.post("/v2/stream", json=first).json()["success"] is True
            filler = small_disk / "filler"
            _fill(filler)
            rows = [{"id": i, "text": os.urandom(600).hex()} for i in range(1, 2001)]
            accepted = http.post("/v2/stream", json={"data": rows, "config": {"table": "bronze.t"}})
            assert accepted.status_code == 200, accepted.text

            status = _await_status(http, lambda s: s["state"] == "error", timeout_s=15)
            assert "space" in status["last_error"], status
            filler.unlink()
            status = _await_status(http, lambda s: s["rows_applied"] == 2001, timeout_s=90)
            counted = http.post(
                "/v1/lake/query", json={"sql": "SELECT count(*) AS n FROM bronze.t"}
            )
            assert counted.json()["rows"] == [[2001]], counted.text
        log = "".join(server.log)
        assert "Traceback" not in log, log
        assert "materialization t failed, retrying" in log
    finally:
        server.stop()


def _await_status(
    http: httpx.Client, done: Callable[[dict[str, Any]], bool], timeout_s: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        status: dict[str, Any] = http.get("/v1/lake/materializations/t").json()
        if done(status) or time.monotonic() > deadline:
            assert done(status), status
            return status
        time.sleep(0.1)
