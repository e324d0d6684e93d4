"""Per-token rate limits: appends per second and metered MiB per second, as token buckets.

A token may carry limits (an s2s extension of S2's issue request, `"limits"`). Each bucket
holds up to one second of its rate, so a client may burst that much, then is held to the rate.
A unary append over the limit is refused with `rate_limited` (429, which S2's clients retry
with backoff); an append session is paced instead: it waits for the bucket before it
sequences the batch, and the transport's flow control slows the client down. Either way one
client cannot take the server from the others.

Limits are per token, not shared with the tokens it issues; a token can issue only limits no
looser than its own (`within`).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from s2s.errors import S2Error

MIB = 1024 * 1024


@dataclass(frozen=True)
class RateLimits:
    appends_per_s: float | None = None
    mib_per_s: float | None = None

    def within(self, other: RateLimits | None) -> bool:
        """Whether these limits are no looser than `other`'s (None: unlimited)."""
        if other is None:
            return True
        return _no_looser(self.appends_per_s, other.appends_per_s) and _no_looser(
            self.mib_per_s, other.mib_per_s
        )

    def to_json(self) -> dict[str, float | None]:
        return {"appends_per_s": self.appends_per_s, "mib_per_s": self.mib_per_s}


def _no_looser(mine: float | None, theirs: float | None) -> bool:
    return theirs is None or (mine is not None and mine <= theirs)


def limits_from_json(value: Any) -> RateLimits | None:
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) - {"appends_per_s", "mib_per_s"}:
        raise S2Error("bad_json", '`limits` must be {"appends_per_s": n, "mib_per_s": n}')
    rates = []
    for key in ("appends_per_s", "mib_per_s"):
        rate = value.get(key)
        if rate is not None and (
            isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate < 1e12
        ):
            raise S2Error("invalid", f"limits.{key} must be a positive number")
        rates.append(None if rate is None else float(rate))
    return RateLimits(*rates)


class _Bucket:
    def __init__(self, rate: float) -> None:
        self._rate = rate
        self._capacity = rate  # one second's worth
        self._level = rate
        self._updated = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self._level = min(self._capacity, self._level + (now - self._updated) * self._rate)
        self._updated = now

    def wait_s(self, amount: float) -> float:
        """How long until `amount` is available (a batch larger than the bucket waits until
        the bucket is full, then takes it all)."""
        self._refill()
        needed = min(amount, self._capacity)
        return max(0.0, (needed - self._level) / self._rate)

    def take(self, amount: float) -> None:
        self._refill()
        self._level -= min(amount, self._capacity)


class RateLimiter:
    """The buckets of one token."""

    def __init__(self, limits: RateLimits) -> None:
        self._buckets: list[tuple[_Bucket, bool]] = []
        """Each bucket, and whether it counts bytes (else appends)."""
        if limits.appends_per_s is not None:
            self._buckets.append((_Bucket(limits.appends_per_s), False))
        if limits.mib_per_s is not None:
            self._buckets.append((_Bucket(limits.mib_per_s * MIB), True))

    def _wait_s(self, metered_bytes: int) -> float:
        return max(
            (
                bucket.wait_s(metered_bytes if counts_bytes else 1)
                for bucket, counts_bytes in self._buckets
            ),
            default=0.0,
        )

    def _take(self, metered_bytes: int) -> None:
        for bucket, counts_bytes in self._buckets:
            bucket.take(metered_bytes if counts_bytes else 1)

    def admit(self, metered_bytes: int) -> None:
        """Take one append of `metered_bytes` now, or refuse it with `rate_limited`."""
        wait_s = self._wait_s(metered_bytes)
        if wait_s > 0:
            raise S2Error(
                "rate_limited",
                f"this access token's rate limit is reached; retry in {wait_s:.3f} s",
            )
        self._take(metered_bytes)

    async def pace(self, metered_bytes: int) -> None:
        """Wait until one append of `metered_bytes` fits the limits, then take it."""
        while (wait_s := self._wait_s(metered_bytes)) > 0:
            await asyncio.sleep(wait_s)
        self._take(metered_bytes)
