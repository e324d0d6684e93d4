"""A real server whose storage fails inside LMDB's commit: it keeps serving, and writes again
without a restart.

`tests/crash/faulted_server.py` runs `s2s serve` with a signal-armed fault in its LMDB commits
(a seccomp filter on the writer's commit thread; nothing of ours is replaced). Over HTTP: the
append whose commit fails (its meta-page write: LMDB's `MDB_PANIC`; or its fdatasync) gets
`500 storage` and no ack; reads and check-tail keep answering with exactly the acknowledged
records; the next append succeeds with the next sequence number, without a restart; and after a
restart the stream holds exactly the acknowledged records. Linux x86_64 with seccomp only
(skipped with a message elsewhere).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.crash.faulted_server import FAULTED_SERVER
from tests.crash.syscall_faults import seccomp_unavailable
from tests.server_process import ServerProcess

_UNAVAILABLE = seccomp_unavailable()
pytestmark = [
    pytest.mark.skipif(_UNAVAILABLE is not None, reason=_UNAVAILABLE or ""),
    pytest.mark.lmdb_only("seccomp faults in the system calls of LMDB's own commit"),
]

_BASIN = {"s2-basin": "storage-faults"}


def _append(http: httpx.Client, *bodies: str) -> httpx.Response:
    records = [{"body": body} for body in bodies]
    return http.post("/v1/streams/s/records", json={"records": records}, headers=_BASIN)


def _bodies(http: httpx.Client) -> list[str]:
    tail = http.get("/v1/streams/s/records/tail", headers=_BASIN)
    assert tail.status_code == 200, tail.text
    read = http.get("/v1/streams/s/records", params={"seq_num": 0}, headers=_BASIN)
    assert read.status_code == 200, read.text
    records = read.json()["records"]
    assert [record["seq_num"] for record in records] == list(range(len(records)))
    assert tail.json()["tail"]["seq_num"] == len(records)
    return [record["body"] for record in records]


def _wait_for_line(server: ServerProcess, line: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(logged.startswith(line) for logged in server.log):
            return
        time.sleep(0.01)
    raise AssertionError(f"the server never said {line!r}:\n{''.join(server.log)}")


def test_server_survives_a_panic_and_a_failed_fsync_inside_lmdb(tmp_path: Path) -> None:
    data_dir = str(tmp_path / "data")
    server = ServerProcess(data_dir, command=FAULTED_SERVER).start()
    acked: list[str] = []
    try:
        with httpx.Client(base_url=server.http_url, timeout=30) as http:
            assert http.post("/v1/basins", json={"basin": "storage-faults"}).status_code == 201
            assert http.post("/v1/streams", json={"stream": "s"}, headers=_BASIN).status_code == 201
            assert _append(http, "a0", "a1").status_code == 200
            acked += ["a0", "a1"]

            for signum, fault in (
                (signal.SIGUSR1, "META_WRITE_EIO"),
                (signal.SIGUSR2, "FSYNC_EIO"),
            ):
                os.kill(server.pid, signum)
                _wait_for_line(server, f"fault armed: {fault}")
                failed = _append(http, "lost", "lost")
                _wait_for_line(server, f"fault injected: {fault}")
                assert failed.status_code == 500, failed.text
                assert failed.json()["code"] == "storage"
                assert _bodies(http) == acked, "a failed append became visible"

                appended = _append(http, f"after {fault}")
                assert appended.status_code == 200, appended.text
                assert appended.json()["start"]["seq_num"] == len(acked)
                acked.append(f"after {fault}")
                assert _bodies(http) == acked
        assert server.process is not None and server.process.poll() is None
        log = "".join(server.log)
        assert "storage environment reopened" in log, log
        assert "Traceback" not in log, log
    finally:
        server.stop()

    restarted = ServerProcess(data_dir).start()
    try:
        with httpx.Client(base_url=restarted.http_url, timeout=30) as http:
            assert _bodies(http) == acked
    finally:
        restarted.stop()
