"""A workload against a real `s2s serve`: clients of every kind on a few streams while a
nemesis kill -9s the server (and restarts it on the same data directory) and injects I/O
faults into its storage commits; the result is the recorded history, ready for the checker.

The server runs as `tests/crash/faulted_server.py` (the real server; a signal makes its next
LMDB commit fail inside LMDB: a data-page write with EIO or ENOSPC, the fdatasync, or the
meta-page write, which panics LMDB). The nemesis arms a fault of a random kind at random
moments and waits for the server to say it was injected before its next move, so faults and
kills never overlap and each armed fault is accounted for. The server is never restarted for a
fault: the appends after it succeed in the same process, which the history shows.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from client import S2SClient
from tests.crash.faulted_server import COMMIT_FAILED, FAULT_SIGNALS, FAULTED_SERVER
from tests.crash.powerloss_mount import Mount
from tests.crash.syscall_faults import SyscallFault
from tests.linearizability.clients import (
    BASIN,
    StreamView,
    Workload,
    http_appender,
    reader,
    session_appender,
    unary_appender,
)
from tests.linearizability.history import Operation
from tests.linearizability.recorder import Recorder
from tests.linearizability.sdk_clients import sdk_reader, sdk_session_appender
from tests.server_process import ServerProcess

CLIENT_KINDS = (
    unary_appender,
    session_appender,
    http_appender,
    sdk_session_appender,
    reader,
    sdk_reader,
)
"""Per stream: one client of each appending kind, a gRPC reader and an SDK reader."""
DOWN_S = 0.3
"""How long the server stays dead after a kill."""
FAULT_INJECTED_WAIT_S = 10.0
"""How long the nemesis waits for an armed fault's commit (clients append every few ms)."""
_INJECTED = "fault injected: "


@dataclass(frozen=True)
class Fault:
    """A fault the nemesis armed, and what the server said became of it."""

    kind: SyscallFault
    armed_ns: int
    injected_ns: int | None
    """When the server said the faulted commit ran; None: it never said so in time."""
    commit_failed: bool


@dataclass(frozen=True)
class PowerLoss:
    """A power loss the nemesis caused: the server killed, then the disk left with only what
    was synced, plus what writeback reached it first (`PowerLossFs.persist_some`)."""

    pending_bytes: int
    """Written but not synced when the power went."""
    sectors_kept: int
    names_kept: int


@dataclass(frozen=True)
class Run:
    history: list[Operation]
    kills: int
    faults: list[Fault]
    power_losses: list[PowerLoss]
    faults_injected_logged: int
    """`fault injected` lines in the server's log over the whole run (every process)."""
    lives: list[tuple[int, int | None]]
    """(spawned, died) of each server process, in monotonic ns (`Recorder.lives`)."""


async def run_workload(
    data_dir: Path,
    seed: int,
    seconds: float,
    kills: int,
    streams: int = 2,
    command: Sequence[str] = FAULTED_SERVER,
    faults: int = 0,
    power_losses: int = 0,
    disk: Mount | None = None,
    writeback: bool = True,
) -> Run:
    """Drive `streams` streams for `seconds`, killing the server `kills` times, injecting
    `faults` I/O faults (they need `command` to be `FAULTED_SERVER` or one built on it) and
    cutting the power `power_losses` times (they need `data_dir` on `disk`, a power-loss
    mount; with `writeback`, a random part of what was pending reaches the disk first), at
    random moments; the server is stopped at the end, so every unknown outcome has a
    deadline."""
    assert not power_losses or (disk is not None and disk.mount_point in data_dir.parents)
    rng = random.Random(seed)
    recorder = Recorder()
    recorder.spawned()
    # `start` keeps the ports it learned, so every restart listens where the clients connect.
    server = await asyncio.to_thread(ServerProcess(str(data_dir), command=command).start)
    names = [f"stream-{index}" for index in range(streams)]
    async with S2SClient(server.target) as setup:
        await setup.create_basin(BASIN)
        for name in names:
            await setup.create_stream(BASIN, name)
    work = Workload(recorder, server.target, server.http_url, asyncio.Event(), asyncio.Event())
    work.views = {name: StreamView() for name in names}
    work.up.set()
    tasks = [
        asyncio.create_task(kind(work, client, name, rng.randrange(2**32)))
        for name in names
        for client, kind in enumerate(CLIENT_KINDS, start=len(CLIENT_KINDS) * names.index(name))
    ]
    injected: list[Fault] = []
    cuts: list[PowerLoss] = []
    try:
        moves = sorted(
            [(rng.uniform(0.15, 0.85) * seconds, "kill") for _ in range(kills)]
            + [(rng.uniform(0.05, 0.95) * seconds, "fault") for _ in range(faults)]
            + [(rng.uniform(0.15, 0.85) * seconds, "power") for _ in range(power_losses)]
        )
        started = time.monotonic()
        for at, move in moves:
            await asyncio.sleep(max(0.0, at - (time.monotonic() - started)))
            if move == "fault":
                kind = rng.choice(list(SyscallFault))
                injected.append(await _inject(server, kind))
                continue
            work.up.clear()
            await asyncio.to_thread(server.kill)
            recorder.died()
            if move == "power":
                assert disk is not None
                written = random.Random(rng.random()) if writeback else None
                cut = await asyncio.to_thread(_cut_power, disk, written)
                cuts.append(cut)
            await asyncio.sleep(DOWN_S)
            recorder.spawned()
            await asyncio.to_thread(server.start)
            work.up.set()
        await asyncio.sleep(max(0.0, seconds - (time.monotonic() - started)))
    finally:
        work.stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        if server.process is not None and server.process.poll() is None:
            await asyncio.to_thread(server.kill)
        recorder.died()
    for task in tasks:
        task.result()  # a client's own bug fails the run instead of thinning the history
    logged = sum(line.startswith(_INJECTED) for line in server.log)
    return Run(recorder.history(), kills, injected, cuts, logged, list(recorder.lives))


def _cut_power(disk: Mount, writeback: random.Random | None) -> PowerLoss:
    """The server is dead: let writeback reach the disk in part (`writeback`), cut the power,
    and bring it back with what the disk holds."""
    assert disk.fs is not None
    pending = disk.fs.pending_bytes()
    sectors, names = disk.fs.persist_some(writeback) if writeback is not None else (0, 0)
    disk.power_loss()
    disk.power_on()
    return PowerLoss(pending, sectors, names)


async def _inject(server: ServerProcess, kind: SyscallFault) -> Fault:
    """Arm `kind` in the running server and wait until its next commit ran under it."""
    seen = len(server.log)
    armed_ns = time.monotonic_ns()
    os.kill(server.pid, FAULT_SIGNALS[kind])
    expected = f"{_INJECTED}{kind.name} "
    deadline = time.monotonic() + FAULT_INJECTED_WAIT_S
    while time.monotonic() < deadline:
        for line in server.log[seen:]:
            if line.startswith(expected):
                return Fault(kind, armed_ns, time.monotonic_ns(), COMMIT_FAILED in line)
        await asyncio.sleep(0.01)
    return Fault(kind, armed_ns, None, False)
