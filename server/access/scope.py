"""What an access token may do: S2's token scope, its JSON form, and the checks built on it.

A scope names resources (basins, streams, access tokens; each by exact name or by prefix, or
none) and operations (S2's 24 operation names, granted one by one or by group). An operation is
permitted when it is granted and every resource it acts on is in the scope. The groups follow
the API's three levels, as S2's clients are split (docs/security.md has the table):

- account: basins as a whole, access tokens, account metrics and locations;
- basin: the streams of a basin (list, create, delete, their configs) and basin metrics;
- stream: a stream's records and tail (read, append, trim, fence, check-tail), stream metrics.

Within a group, `read` grants the operations that change nothing, `write` the others.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Literal

from s2s import names
from s2s.errors import S2Error

Group = Literal["account", "basin", "stream"]
GROUPS: tuple[Group, ...] = ("account", "basin", "stream")

OPERATION_GROUPS: dict[str, tuple[Group, bool]] = {
    # operation: (group, writes)
    "list-basins": ("account", False),
    "create-basin": ("account", True),
    "delete-basin": ("account", True),
    "reconfigure-basin": ("account", True),
    "get-basin-config": ("account", False),
    "issue-access-token": ("account", True),
    "revoke-access-token": ("account", True),
    "list-access-tokens": ("account", False),
    "account-metrics": ("account", False),
    "list-locations": ("account", False),
    "get-default-location": ("account", False),
    "set-default-location": ("account", True),
    "list-streams": ("basin", False),
    "create-stream": ("basin", True),
    "delete-stream": ("basin", True),
    "get-stream-config": ("basin", False),
    "reconfigure-stream": ("basin", True),
    "basin-metrics": ("basin", False),
    "check-tail": ("stream", False),
    "append": ("stream", True),
    "read": ("stream", False),
    "trim": ("stream", True),
    "fence": ("stream", True),
    "stream-metrics": ("stream", False),
}
"""S2's operations (API `access.rs`, kebab-case) and the group permission that grants each."""

OPERATIONS = frozenset(OPERATION_GROUPS)

ACCESS_TOKEN_ID_BYTES_MAX = 96


@dataclass(frozen=True)
class ResourceSet:
    """The names a scope covers for one kind of resource: one exact name or every name with a
    prefix. `exact ""` covers nothing (S2's way to say "none"), `prefix ""` everything."""

    exact: str | None = None
    prefix: str | None = None

    def __post_init__(self) -> None:
        assert (self.exact is None) != (self.prefix is None), "exactly one of exact, prefix"

    def covers(self, name: str) -> bool:
        if self.exact is not None:
            return self.exact != "" and name == self.exact
        assert self.prefix is not None
        return name.startswith(self.prefix)

    def within(self, other: ResourceSet | None) -> bool:
        """Whether every name this set covers, `other` covers too."""
        if self.exact == "":
            return True
        if other is None:
            return False
        if self.exact is not None:
            return other.covers(self.exact)
        assert self.prefix is not None
        return other.prefix is not None and self.prefix.startswith(other.prefix)

    def to_json(self) -> dict[str, str]:
        return {"exact": self.exact} if self.exact is not None else {"prefix": self.prefix or ""}


NOTHING = ResourceSet(exact="")
EVERYTHING = ResourceSet(prefix="")


@dataclass(frozen=True)
class Scope:
    """Resources and operations. An unset resource set covers nothing."""

    basins: ResourceSet | None
    streams: ResourceSet | None
    access_tokens: ResourceSet | None
    op_groups: frozenset[tuple[Group, bool]]
    """The granted (group, writes) pairs: ("stream", False) is the stream group's `read`."""
    ops: frozenset[str]

    @functools.cached_property
    def operations(self) -> frozenset[str]:
        """Every operation granted, one by one or through a group (computed once: every call
        checks it)."""
        return self.ops | frozenset(
            op for op, group in OPERATION_GROUPS.items() if group in self.op_groups
        )

    def covers_basin(self, name: str) -> bool:
        return self.basins is not None and self.basins.covers(name)

    def covers_stream(self, name: str) -> bool:
        return self.streams is not None and self.streams.covers(name)

    def covers_access_token(self, token_id: str) -> bool:
        return self.access_tokens is not None and self.access_tokens.covers(token_id)

    def within(self, other: Scope) -> bool:
        """Whether this scope grants nothing `other` does not: the rule for issuing a token."""
        return (
            self.operations <= other.operations
            and _within(self.basins, other.basins)
            and _within(self.streams, other.streams)
            and _within(self.access_tokens, other.access_tokens)
        )


def _within(mine: ResourceSet | None, theirs: ResourceSet | None) -> bool:
    return mine is None or mine.within(theirs)


ROOT_SCOPE = Scope(
    basins=EVERYTHING,
    streams=EVERYTHING,
    access_tokens=EVERYTHING,
    op_groups=frozenset((group, writes) for group in GROUPS for writes in (False, True)),
    ops=frozenset(),
)
"""Everything, for the root token the server creates at first start."""


# --- JSON (S2's v1 `AccessTokenScope`) --------------------------------------------------------


def scope_from_json(value: Any) -> Scope:
    """A request's scope; a shape S2 would not accept is `bad_json`, a value it would refuse
    (an unknown operation, a name too long) `invalid`."""
    body = _object(value, "scope")
    return Scope(
        basins=_resource_set(body.get("basins"), "scope.basins", names.validate_basin_prefix),
        streams=_resource_set(body.get("streams"), "scope.streams", names.validate_stream_prefix),
        access_tokens=_resource_set(
            body.get("access_tokens"), "scope.access_tokens", validate_access_token_prefix
        ),
        op_groups=_op_groups(body.get("op_groups")),
        ops=_ops(body.get("ops")),
    )


def scope_to_json(scope: Scope) -> dict[str, Any]:
    return {
        "basins": _set_json(scope.basins),
        "streams": _set_json(scope.streams),
        "access_tokens": _set_json(scope.access_tokens),
        "op_groups": {
            group: {
                "read": (group, False) in scope.op_groups,
                "write": (group, True) in scope.op_groups,
            }
            for group in GROUPS
        },
        "ops": sorted(scope.ops, key=list(OPERATION_GROUPS).index),
    }


def _set_json(resources: ResourceSet | None) -> dict[str, str] | None:
    return None if resources is None else resources.to_json()


def validate_access_token_id(token_id: str) -> None:
    """S2's rule: 1-96 bytes, not `.` or `..`; NUL is refused too (it cannot be a name)."""
    size = len(token_id.encode())
    if not 1 <= size <= ACCESS_TOKEN_ID_BYTES_MAX:
        raise S2Error(
            "invalid", f"access token id must be 1-{ACCESS_TOKEN_ID_BYTES_MAX} bytes, got {size}"
        )
    if token_id in (".", ".."):
        raise S2Error("invalid", 'access token id must not be "." or ".."')
    if "\x00" in token_id:
        raise S2Error("invalid", "access token id must not contain NUL")


def validate_access_token_prefix(prefix: str, what: str = "prefix") -> None:
    if len(prefix.encode()) > ACCESS_TOKEN_ID_BYTES_MAX:
        raise S2Error(
            "invalid", f"access token {what} must be at most {ACCESS_TOKEN_ID_BYTES_MAX} bytes"
        )
    if "\x00" in prefix:
        raise S2Error("invalid", f"access token {what} must not contain NUL")


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise S2Error("bad_json", f"{what} must be a JSON object")
    return value


def _resource_set(value: Any, what: str, validate: Any) -> ResourceSet | None:
    if value is None:
        return None
    body = _object(value, what)
    if len(body) != 1 or next(iter(body)) not in ("exact", "prefix"):
        raise S2Error("bad_json", f'{what} must be {{"exact": name}} or {{"prefix": prefix}}')
    ((kind, name),) = body.items()
    if not isinstance(name, str):
        raise S2Error("bad_json", f"{what}.{kind} must be a string")
    # An exact name is checked as a prefix: "" (nothing) must pass, and a name that could never
    # exist is harmless in a scope, as long as it is no longer than any name can be.
    validate(name, f"{what}.{kind}")
    return ResourceSet(exact=name) if kind == "exact" else ResourceSet(prefix=name)


def _op_groups(value: Any) -> frozenset[tuple[Group, bool]]:
    if value is None:
        return frozenset()
    body = _object(value, "scope.op_groups")
    granted: set[tuple[Group, bool]] = set()
    for group, permissions in body.items():
        if group not in GROUPS:
            raise S2Error("bad_json", f"scope.op_groups: unknown group {group!r}")
        if permissions is None:
            continue
        for key, allowed in _object(permissions, f"scope.op_groups.{group}").items():
            if key not in ("read", "write"):
                raise S2Error("bad_json", f"scope.op_groups.{group}: unknown key {key!r}")
            if allowed is None:
                continue
            if not isinstance(allowed, bool):
                raise S2Error("bad_json", f"scope.op_groups.{group}.{key} must be true or false")
            if allowed:
                granted.add((group, key == "write"))
    return frozenset(granted)


def _ops(value: Any) -> frozenset[str]:
    if value is None:
        return frozenset()
    if not isinstance(value, list) or not all(isinstance(op, str) for op in value):
        raise S2Error("bad_json", "scope.ops must be a list of operation names")
    unknown = sorted(set(value) - OPERATIONS)
    if unknown:
        raise S2Error("bad_json", f"scope.ops: unknown operation {unknown[0]!r}")
    return frozenset(value)
