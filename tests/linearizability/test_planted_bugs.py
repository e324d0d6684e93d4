"""The checker catches each bug planted in a server (tests/linearizability/broken_server.py),
on histories the workload records from it (one of them under the I/O fault nemesis), and passes
the same workload on the real server."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from client import S2SClient
from tests.crash.syscall_faults import seccomp_unavailable
from tests.linearizability.checker import check
from tests.linearizability.clients import BASIN
from tests.linearizability.history import Acked, Append, CheckTail, Tail
from tests.linearizability.recorder import Recorder
from tests.linearizability.workload import run_workload
from tests.server_process import SOURCE_TREE_S2S, ServerProcess

SECONDS = 3.0
_UNAVAILABLE = seccomp_unavailable()


def broken(bug: str) -> tuple[str, ...]:
    return (sys.executable, "-m", "tests.linearizability.broken_server", bug)


@pytest.mark.parametrize(
    ("bug", "kills"),
    [
        # Acks before the commit: readers miss acked records, and the kill loses some.
        ("early-ack", 1),
        ("stale-tail", 0),
        ("mismatch-appended", 0),
    ],
)
async def test_a_planted_bug_is_caught(tmp_path: Path, bug: str, kills: int) -> None:
    run = await run_workload(tmp_path, seed=16, seconds=SECONDS, kills=kills, command=broken(bug))
    verdict = check(run.history)
    assert verdict.linearizable is False, verdict.describe()


@pytest.mark.skipif(_UNAVAILABLE is not None, reason=_UNAVAILABLE or "")
async def test_an_ack_of_a_failed_commit_is_caught_under_the_fault_nemesis(tmp_path: Path) -> None:
    """The server acknowledges the appends of a commit that failed (an I/O fault inside LMDB):
    those records are not stored, which readers see once the kill has emptied its memory."""
    run = await run_workload(
        tmp_path, seed=17, seconds=4.0, kills=1, faults=3, command=broken("ack-failed-commit")
    )
    assert [fault.commit_failed for fault in run.faults] == [True] * 3
    verdict = check(run.history)
    assert verdict.linearizable is False, verdict.describe()


async def test_the_real_server_passes_the_same_workload(tmp_path: Path) -> None:
    run = await run_workload(tmp_path, seed=16, seconds=SECONDS, kills=1, command=SOURCE_TREE_S2S)
    verdict = check(run.history)
    assert verdict.linearizable is True, verdict.describe()
    assert len(run.history) > 200


async def test_an_early_ack_that_a_kill_loses_is_caught(tmp_path: Path) -> None:
    """The acked batch is still waiting for its commit when the server is killed: after the
    restart, the tail does not include it."""
    recorder = Recorder()
    recorder.spawned()
    server = ServerProcess(str(tmp_path), command=broken("early-ack")).start()
    try:
        async with S2SClient(server.target) as client:
            await client.create_basin(BASIN)
            await client.create_stream(BASIN, "s")
            stream = client.stream(BASIN, "s")
            invoked = time.monotonic_ns()
            ack = await stream.append([b"lost"])
            recorder.completed(0, "s", Append((b"lost",)), invoked, Acked(0, ack.end.seq_num))
            server.kill()
            recorder.died()
            recorder.spawned()
            server.start()
            invoked = time.monotonic_ns()
            tail = (await stream.check_tail()).seq_num
            recorder.completed(1, "s", CheckTail(), invoked, Tail(tail))
    finally:
        if server.process is not None and server.process.poll() is None:
            server.kill()
    recorder.died()
    assert tail == 0
    assert check(recorder.history()).linearizable is False
