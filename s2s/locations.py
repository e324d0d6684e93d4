"""Locations: where basins are placed (docs/s2-compat.md §4.2, ADR 0009).

S2 places each basin in a location (a cloud region such as `aws:us-east-1`, or a private
placement) fixed at its creation, and an account has a default for basins created without one.
An s2s server is one place, so it has exactly one location, `local`: every basin is there, it is
always the default, and naming any other location is refused, so a client that asks for a
placement learns at once that it does not get it. With one location there is no default to
store: it is `local` before and after every restart.
"""

from __future__ import annotations

import re
from typing import Any

from s2s.errors import S2Error, invalid

LOCAL = "local"
LOCATION_NAME_CHARS_MAX = 64

_LOCATION_NAME = re.compile(r"[A-Za-z0-9:.-]+")
"""S2's location name alphabet (ASCII letters and digits, `:`, `-`, `.`)."""


def validate_location(value: Any) -> None:
    """Refuses a location a request names unless it is `local`.

    A value that is not a location name at all is a JSON error (`bad_json`, as S2 answers when
    its request type does not deserialize); a well-formed name of another location is
    `invalid`.
    """
    if not isinstance(value, str):
        raise S2Error("bad_json", f"location must be a string such as {LOCAL!r}")
    if not (len(value) <= LOCATION_NAME_CHARS_MAX and _LOCATION_NAME.fullmatch(value)):
        raise S2Error(
            "bad_json",
            f"location name must be 1-{LOCATION_NAME_CHARS_MAX} characters of ASCII letters, "
            "digits, ':', '-' and '.'",
        )
    if value != LOCAL:
        raise invalid(f"unknown location {value!r}: this server has one location, {LOCAL!r}")
