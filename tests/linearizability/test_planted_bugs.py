"""The checker catches each bug planted in a server (tests/linearizability/broken_server.py),
on histories the workload records from it (one of them under the I/O fault nemesis), and passes
the same workload on the real server."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from client import S2SClient
from tests.crash.powerloss_mount import power_loss_mount, unavailable
from tests.crash.syscall_faults import seccomp_unavailable
from tests.linearizability.checker import check
from tests.linearizability.clients import BASIN
from tests.linearizability.history import Acked, Append, CheckTail, Tail
from tests.linearizability.recorder import Recorder
from tests.linearizability.workload import run_workload
from tests.server_process import SOURCE_TREE_S2S, ServerProcess

SECONDS = 3.0
_UNAVAILABLE = seccomp_unavailable()
_NO_POWER_LOSS = unavailable()


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
@pytest.mark.lmdb_only("its nemesis injects I/O faults inside LMDB's commits")
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
    assert len(run.history) > 100  # enough to have checked something, even on a loaded machine


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


@pytest.mark.skipif(_NO_POWER_LOSS is not None, reason=_NO_POWER_LOSS or "")
@pytest.mark.lmdb_only("plants LMDB commits without a sync, then a power loss of its directory")
async def test_lazy_syncing_is_caught_by_a_power_loss_and_not_by_a_kill(tmp_path: Path) -> None:
    """A server that acknowledges appends before syncing them passes kill -9,
    because the kernel keeps its writes, and loses acknowledged appends at a power loss."""
    killed = await run_workload(
        tmp_path / "killed", seed=18, seconds=SECONDS, kills=1, command=broken("lazy-sync")
    )
    assert check(killed.history).linearizable is True
    with power_loss_mount(tmp_path / "disk") as disk:
        cut = await run_workload(
            disk.mount_point / "data",
            seed=18,
            seconds=2 * SECONDS,
            kills=0,
            power_losses=1,
            disk=disk,
            writeback=False,
            command=broken("lazy-sync"),
        )
    assert cut.power_losses[0].pending_bytes > 0
    verdict = check(cut.history)
    assert verdict.linearizable is False, verdict.describe()
