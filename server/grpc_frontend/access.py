"""Access tokens in protobuf form (`s2s/v1/access.proto`): conversions to and from the scope
model of `server.access`, so both frontends validate scopes alike (through its JSON rules)."""

from __future__ import annotations

from typing import Any

from s2s.v1 import access_pb2 as apb
from server.access.limits import RateLimits, limits_from_json
from server.access.scope import GROUPS, ResourceSet, Scope, scope_from_json
from server.access.tokens import IssueRequest, TokenInfo


def issue_request_from_proto(info: apb.AccessTokenInfo) -> IssueRequest:
    return IssueRequest(
        id=info.id,
        scope=scope_from_proto(info.scope),
        expires_at_ms=info.expires_at_ms if info.HasField("expires_at_ms") else None,
        auto_prefix_streams=info.auto_prefix_streams,
        limits=_limits_from_proto(info) if info.HasField("limits") else None,
    )


def _limits_from_proto(info: apb.AccessTokenInfo) -> RateLimits | None:
    """Through the JSON form, whose parser holds the rules."""
    limits = info.limits
    return limits_from_json(
        {
            key: getattr(limits, key) if limits.HasField(key) else None
            for key in ("appends_per_s", "mib_per_s")
        }
    )


def scope_from_proto(scope: apb.AccessTokenScope) -> Scope:
    """Through the JSON form, whose parser holds every rule (names, operations)."""
    groups = scope.op_groups
    return scope_from_json(
        {
            "basins": _set_json(scope, "basins"),
            "streams": _set_json(scope, "streams"),
            "access_tokens": _set_json(scope, "access_tokens"),
            "op_groups": {
                group: {
                    "read": getattr(groups, group).read,
                    "write": getattr(groups, group).write,
                }
                for group in GROUPS
            },
            "ops": list(scope.ops),
        }
    )


def _set_json(scope: apb.AccessTokenScope, field: str) -> dict[str, str] | None:
    if not scope.HasField(field):
        return None
    resources: apb.ResourceSet = getattr(scope, field)
    kind = resources.WhichOneof("matcher")
    if kind is None:
        return None
    return {kind: getattr(resources, kind)}


def token_info_to_proto(info: TokenInfo) -> apb.AccessTokenInfo:
    scope = info.scope
    message = apb.AccessTokenInfo(
        id=info.id,
        expires_at_ms=info.expires_at_ms,
        auto_prefix_streams=info.auto_prefix_streams,
        scope=apb.AccessTokenScope(
            basins=_set_proto(scope.basins),
            streams=_set_proto(scope.streams),
            access_tokens=_set_proto(scope.access_tokens),
            op_groups=apb.PermittedOperationGroups(
                **{
                    group: apb.ReadWritePermissions(
                        read=(group, False) in scope.op_groups,
                        write=(group, True) in scope.op_groups,
                    )
                    for group in GROUPS
                }
            ),
            ops=sorted(scope.ops),
        ),
    )
    if info.limits is not None:
        message.limits.CopyFrom(apb.RateLimits(**info.limits.to_json()))
    return message


def _set_proto(resources: ResourceSet | None) -> Any:
    """None leaves the field unset (the constructor's rule)."""
    if resources is None:
        return None
    return apb.ResourceSet(**resources.to_json())
