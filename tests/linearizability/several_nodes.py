"""The workload of `workload.py` against several `s2s serve` nodes sharing one PostgreSQL
database (`--shared-storage`, ADR 0013): the clients of each stream spread over the nodes, so
one stream is appended to, fenced, trimmed, read and checked through every node at once, while
a nemesis kill -9s one node (and restarts it) and freezes another (SIGSTOP) for longer than
its leadership lease, then lets it go on (SIGCONT) with what it held in memory.

Each node has a recorder of its own: an operation whose outcome is unknown could have taken
effect only through the node that received it, so its deadline is that node's death. A killed
node's last statement may still be running in PostgreSQL when the process is gone, so a death
is recorded `COMMIT_SETTLE_S` after the kill. A frozen node does not die: its operations in
flight stay open, and may take effect after it is let go.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass

from client import S2SClient
from tests.linearizability.clients import BASIN, StreamView, Workload
from tests.linearizability.history import Operation
from tests.linearizability.recorder import Recorder
from tests.linearizability.workload import CLIENT_KINDS, DOWN_S
from tests.server_process import ServerProcess

COMMIT_SETTLE_S = 1.0
"""After a node's kill, how long its last commit may still be running in the database."""


@dataclass(frozen=True)
class NodesRun:
    history: list[Operation]
    killed_node: int
    frozen_node: int
    frozen_s: float
    thawed_ns: int
    """When the frozen node was let go (SIGCONT), in monotonic ns."""
    clients: list[set[int]]
    """The clients of each node."""
    logs: list[list[str]]
    """Each node's log, across its restarts."""


async def run_nodes_workload(
    nodes: Sequence[ServerProcess],
    seed: int,
    seconds: float,
    frozen_s: float,
    streams: int = 2,
) -> NodesRun:
    """Drive `streams` streams through `nodes` (started, on one database) for `seconds`: node
    0 is killed and restarted at about a quarter of the run, node 1 frozen from about a third
    for `frozen_s`. Every node is stopped at the end, so every unknown outcome has a
    deadline."""
    assert len(nodes) >= 2
    rng = random.Random(seed)
    recorders = [Recorder() for _ in nodes]
    for recorder in recorders:
        recorder.spawned()  # the nodes run already: nothing was invoked before now
    names = [f"stream-{index}" for index in range(streams)]
    async with S2SClient(nodes[0].target) as setup:
        await setup.create_basin(BASIN)
        for name in names:
            await setup.create_stream(BASIN, name)
    stop = asyncio.Event()
    views = {name: StreamView() for name in names}
    works = [
        Workload(recorder, node.target, node.http_url, asyncio.Event(), stop, views)
        for recorder, node in zip(recorders, nodes, strict=True)
    ]
    for work in works:
        work.up.set()
    tasks = []
    clients: list[set[int]] = [set() for _ in nodes]
    for stream_index, name in enumerate(names):
        for kind_index, kind in enumerate(CLIENT_KINDS):
            client = len(CLIENT_KINDS) * stream_index + kind_index
            node_index = (kind_index + stream_index) % len(works)
            clients[node_index].add(client)
            work = works[node_index]
            tasks.append(asyncio.create_task(kind(work, client, name, rng.randrange(2**32))))
    killed, frozen = nodes[0], nodes[1]
    try:
        started = time.monotonic()
        await asyncio.sleep(seconds * rng.uniform(0.2, 0.3))
        works[0].up.clear()
        await asyncio.to_thread(killed.kill)
        await asyncio.sleep(COMMIT_SETTLE_S)
        recorders[0].died()
        await asyncio.sleep(DOWN_S)
        recorders[0].spawned()
        await asyncio.to_thread(killed.start)
        works[0].up.set()

        await asyncio.sleep(
            max(0.0, seconds * rng.uniform(0.3, 0.4) - (time.monotonic() - started))
        )
        works[1].up.clear()
        os.kill(frozen.pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(frozen_s)
        finally:
            os.kill(frozen.pid, signal.SIGCONT)
        thawed_ns = time.monotonic_ns()
        works[1].up.set()
        await asyncio.sleep(max(0.0, seconds - (time.monotonic() - started)))
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        for recorder, node in zip(recorders, nodes, strict=True):
            if node.process is not None and node.process.poll() is None:
                await asyncio.to_thread(node.stop)
            recorder.died()
    for task in tasks:
        task.result()  # a client's own bug fails the run instead of thinning the history
    history = [operation for recorder in recorders for operation in recorder.history()]
    logs = [list(node.log) for node in nodes]
    return NodesRun(history, 0, 1, frozen_s, thawed_ns, clients, logs)
