"""A bounded run of the workload on the real server under the whole nemesis: every client kind
(the official SDK's S2S sessions and reads among them) on two streams, kill -9 and restarts,
and I/O faults inside LMDB's commits (tests/crash/faulted_server.py), then the checker on the
whole history. The longer, seeded version is `bench/linearizability.py`. Linux x86_64 with
seccomp only, for the faults (skipped with a message elsewhere; test_planted_bugs.py still runs
the workload under kill -9)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.crash.powerloss_mount import power_loss_mount, unavailable
from tests.crash.syscall_faults import seccomp_unavailable
from tests.linearizability.checker import check
from tests.linearizability.history import STORAGE, Acked, Append, NoEffect, Operation
from tests.linearizability.sdk_clients import sdk_reader, sdk_session_appender
from tests.linearizability.workload import CLIENT_KINDS, Fault, Run, run_workload

_UNAVAILABLE = seccomp_unavailable()
pytestmark = pytest.mark.skipif(_UNAVAILABLE is not None, reason=_UNAVAILABLE or "")
_NO_POWER_LOSS = unavailable()

SECONDS = 20.0
KILLS = 3
FAULTS = 6


def _kind(operation: Operation) -> object:
    return CLIENT_KINDS[operation.client % len(CLIENT_KINDS)]


def _resumed(run: Run, fault: Fault) -> bool:
    """Whether an append invoked after the fault was acknowledged by the same process."""
    assert fault.injected_ns is not None
    died = [died for spawned, died in run.lives if spawned <= fault.injected_ns][-1]
    return any(
        isinstance(op.call, Append)
        and isinstance(op.outcome, Acked)
        and op.invoked_ns > fault.injected_ns
        and op.completed_ns is not None
        and (died is None or op.completed_ns < died)
        for op in run.history
    )


@pytest.mark.lmdb_only("its nemesis injects I/O faults inside LMDB's commits")
async def test_histories_with_kills_and_io_faults_are_linearizable(tmp_path: Path) -> None:
    run = await run_workload(tmp_path, seed=1, seconds=SECONDS, kills=KILLS, faults=FAULTS)
    verdict = check(run.history)
    assert verdict.linearizable is True, verdict.describe()
    assert run.kills == KILLS
    # Every fault the nemesis armed was injected, failed its commit, and was followed by an
    # acknowledged append in the same server process: appends resumed without a restart.
    assert len(run.faults) == FAULTS
    assert run.faults_injected_logged == FAULTS
    assert all(fault.injected_ns is not None and fault.commit_failed for fault in run.faults)
    assert all(_resumed(run, fault) for fault in run.faults)
    # The appends those commits held were answered `storage`, and the checker held the server
    # to their having had no effect.
    assert any(op.outcome == NoEffect(STORAGE) for op in run.history)
    # Enough of each kind of call to have checked something, the SDK's among them.
    assert len(run.history) > 1000
    sdk_acks = [op for op in run.history if _kind(op) is sdk_session_appender]
    assert sum(isinstance(op.outcome, Acked) for op in sdk_acks) > 100
    assert sum(op.outcome is not None for op in run.history if _kind(op) is sdk_reader) > 100


POWER_SECONDS = 12.0
POWER_LOSSES = 2


@pytest.mark.skipif(_NO_POWER_LOSS is not None, reason=_NO_POWER_LOSS or "")
@pytest.mark.lmdb_only("power losses of LMDB's data directory (FUSE)")
async def test_histories_with_power_losses_are_linearizable(tmp_path: Path) -> None:
    """The server's data directory on the power-loss filesystem (tests/crash/powerloss_fs.py):
    twice the server is killed and the disk keeps only what was synced, plus a random part of
    what writeback may have written, then the server starts on it; a kill and I/O faults
    besides. Acknowledged appends must have survived every cut."""
    with power_loss_mount(tmp_path / "disk") as disk:
        run = await run_workload(
            disk.mount_point / "data",
            seed=3,
            seconds=POWER_SECONDS,
            kills=1,
            faults=2,
            power_losses=POWER_LOSSES,
            disk=disk,
        )
    verdict = check(run.history)
    assert verdict.linearizable is True, verdict.describe()
    assert len(run.power_losses) == POWER_LOSSES
    assert sum(isinstance(op.outcome, Acked) for op in run.history) > 300
