"""RFC 3339 times as the API writes them (`created_at`, `expires_at`), and as it reads them."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime


def format_ms(ms: int) -> str:
    """Milliseconds since the epoch as `2027-01-01T00:00:00.000Z`."""
    moment = datetime.fromtimestamp(ms // 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def parse_ms(text: str) -> int | None:
    """Milliseconds since the epoch of an RFC 3339 time with an offset, or None if `text` is
    not one (a time without an offset names no instant)."""
    moment = None
    with contextlib.suppress(ValueError):
        moment = datetime.fromisoformat(text)
    if moment is None or moment.tzinfo is None:
        return None
    return int(moment.timestamp() * 1000)
