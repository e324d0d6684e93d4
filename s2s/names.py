"""Name rules for basins and streams, and for the prefixes used to list them.

Validation returns nothing and raises `S2Error("invalid", ...)` naming what to fix; the HTTP
layer re-raises with `bad_path`/`bad_header` where the contract wants those codes
(docs/s2-compat.md §3).
"""

from __future__ import annotations

import re

from s2s.errors import invalid

BASIN_NAME_BYTES_MIN = 8
BASIN_NAME_BYTES_MAX = 48
STREAM_NAME_BYTES_MAX = 512
LIST_LIMIT_MAX = 1000

_BASIN_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")
_BASIN_PREFIX = re.compile(r"([a-z0-9][a-z0-9-]*)?")


def validate_basin_name(name: str) -> None:
    size = len(name.encode())
    if not BASIN_NAME_BYTES_MIN <= size <= BASIN_NAME_BYTES_MAX:
        raise invalid(
            f"basin name must be {BASIN_NAME_BYTES_MIN}-{BASIN_NAME_BYTES_MAX} bytes, got {size}"
        )
    if not _BASIN_NAME.fullmatch(name):
        raise invalid(
            f"basin name {name!r} must use only a-z, 0-9 and '-', and start and end with a-z or 0-9"
        )


def validate_basin_prefix(prefix: str, what: str = "prefix") -> None:
    if len(prefix.encode()) > BASIN_NAME_BYTES_MAX:
        raise invalid(f"basin {what} must be at most {BASIN_NAME_BYTES_MAX} bytes")
    if not _BASIN_PREFIX.fullmatch(prefix):
        raise invalid(
            f"basin {what} {prefix!r} must use only a-z, 0-9 and '-', not starting with '-'"
        )


def validate_stream_name(name: str) -> None:
    size = len(name.encode())
    if not 1 <= size <= STREAM_NAME_BYTES_MAX:
        raise invalid(f"stream name must be 1-{STREAM_NAME_BYTES_MAX} bytes, got {size}")
    if name in (".", ".."):
        raise invalid("stream name must not be '.' or '..'")
    if "\x00" in name:
        raise invalid("stream name must not contain NUL")


def validate_stream_prefix(prefix: str, what: str = "prefix") -> None:
    if len(prefix.encode()) > STREAM_NAME_BYTES_MAX:
        raise invalid(f"stream {what} must be at most {STREAM_NAME_BYTES_MAX} bytes")


def clamp_list_limit(limit: int | None) -> int:
    """Absent, zero or too large limits mean the maximum; listing never fails on a limit."""
    if not limit or limit > LIST_LIMIT_MAX:
        return LIST_LIMIT_MAX
    return limit
