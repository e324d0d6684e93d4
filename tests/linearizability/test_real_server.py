"""A bounded run of the workload on the real server, with kill -9 and restarts: every client
kind on two streams, then the checker on the whole history. The longer, seeded version is
`bench/linearizability.py`."""

from __future__ import annotations

from pathlib import Path

from tests.linearizability.checker import check
from tests.linearizability.workload import run_workload

SECONDS = 20.0
KILLS = 3


async def test_histories_with_kills_are_linearizable(tmp_path: Path) -> None:
    run = await run_workload(tmp_path, seed=1, seconds=SECONDS, kills=KILLS)
    verdict = check(run.history)
    assert verdict.linearizable is True, verdict.describe()
    assert run.kills == KILLS
    # Enough of each kind of call to have checked something.
    assert len(run.history) > 1000
