"""A workload against a real `s2s serve`: clients of every kind on a few streams while a
nemesis kill -9s the server and restarts it on the same data directory; the result is the
recorded history, ready for the checker."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from client import S2SClient
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
from tests.server_process import SOURCE_TREE_S2S, ServerProcess

CLIENT_KINDS = (unary_appender, session_appender, http_appender, reader, reader)
"""Per stream: one client of each appending kind and two readers."""
DOWN_S = 0.3
"""How long the server stays dead after a kill."""


@dataclass(frozen=True)
class Run:
    history: list[Operation]
    kills: int


async def run_workload(
    data_dir: Path,
    seed: int,
    seconds: float,
    kills: int,
    streams: int = 2,
    command: Sequence[str] = SOURCE_TREE_S2S,
) -> Run:
    """Drive `streams` streams for `seconds`, killing the server `kills` times at random
    moments; the server is stopped at the end, so every unknown outcome has a deadline."""
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
    try:
        kill_times = sorted(rng.uniform(0.15, 0.85) * seconds for _ in range(kills))
        elapsed = 0.0
        for at in kill_times:
            await asyncio.sleep(at - elapsed)
            work.up.clear()
            await asyncio.to_thread(server.kill)
            recorder.died()
            await asyncio.sleep(DOWN_S)
            recorder.spawned()
            await asyncio.to_thread(server.start)
            work.up.set()
            elapsed = at + DOWN_S
        await asyncio.sleep(max(0.0, seconds - elapsed))
    finally:
        work.stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        if server.process is not None and server.process.poll() is None:
            await asyncio.to_thread(server.kill)
        recorder.died()
    for task in tasks:
        task.result()  # a client's own bug fails the run instead of thinning the history
    return Run(recorder.history(), kills)
