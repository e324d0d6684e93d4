"""Shutdown: `StreamStore.close()` must finish promptly whatever was just requested.

A close that hangs turns every restart into a kill -9, so it belongs with the crash tests.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from server.jobs import JobSettings
from server.streamstore import StreamStore
from tests.conftest import BASIN, ManualClock, make_batch
from tests.storage_mode import storage_for

CLOSE_SECONDS_MAX = 2.0


async def timed_close(store: StreamStore) -> float:
    started = time.monotonic()
    # A bound instead of a hang; on expiry, close() still finishes (the jobs' stop() swallows
    # the cancellation), so the store is closed either way and the elapsed time tells.
    async with asyncio.timeout(CLOSE_SECONDS_MAX):
        await store.close()
    return time.monotonic() - started


async def test_close_right_after_deleting_a_stream_finishes(
    tmp_path: Path, clock: ManualClock
) -> None:
    # Deleting kicks the background jobs; closing in the same breath must not hang.
    store = await StreamStore.open(
        str(tmp_path), clock, JobSettings(interval_s=3600), storage=storage_for(tmp_path)
    )
    await store.create_basin(BASIN)
    await store.create_stream(BASIN, "s")
    await store.append(BASIN, "s", make_batch(b"x"))
    await store.delete_stream(BASIN, "s")
    assert await timed_close(store) < CLOSE_SECONDS_MAX, "close() hung after delete_stream"


async def test_close_right_after_deleting_a_basin_finishes(
    tmp_path: Path, clock: ManualClock
) -> None:
    store = await StreamStore.open(
        str(tmp_path), clock, JobSettings(interval_s=3600), storage=storage_for(tmp_path)
    )
    await store.create_basin(BASIN)
    await store.delete_basin(BASIN)
    assert await timed_close(store) < CLOSE_SECONDS_MAX, "close() hung after delete_basin"
