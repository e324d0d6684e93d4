"""Stopping a background task that a component owns (the jobs, key-value compaction)."""

from __future__ import annotations

import asyncio


async def cancel_and_wait(task: asyncio.Task[None] | None) -> None:
    """Cancel `task` and wait until it has ended. The task's own cancellation is swallowed;
    if the caller is being cancelled too, that cancellation goes on up."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
