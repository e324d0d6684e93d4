"""A commit's retry budget (`s2s/kv_retry.py`) is time, not a count of attempts: it keeps
trying while the window lasts, with waits that grow to a cap, and stops once it is over."""

from __future__ import annotations

import time

from s2s.kv_retry import RETRY_DELAY_MAX_S, CommitRetry


async def test_waits_grow_to_their_cap_and_end_with_the_window() -> None:
    window_s = 1.5
    retry = CommitRetry(window_s)
    began = time.monotonic()
    waits: list[float] = []
    while True:
        before = time.monotonic()
        if not await retry.wait():
            break
        waits.append(time.monotonic() - before)
    elapsed = time.monotonic() - began
    assert window_s <= elapsed < window_s + 0.3
    # 10, 20, 40, 80, 160 ms, then 200 ms each: more attempts than any fixed count of 8.
    assert retry.attempts == len(waits) + 1 > 8
    assert waits[0] < 0.05
    assert max(waits) < RETRY_DELAY_MAX_S + 0.1
    assert sum(wait >= RETRY_DELAY_MAX_S * 0.9 for wait in waits) >= 3


async def test_an_ended_window_answers_at_once() -> None:
    retry = CommitRetry(0.0)
    before = time.monotonic()
    assert not await retry.wait()
    assert time.monotonic() - before < 0.01
    assert retry.attempts == 1
