"""Access tokens (`/v1/access-tokens`) as JSON: S2's v1 shapes (`AccessTokenInfo`,
`IssueAccessTokenRequest`, `ListAccessTokensResponse`; docs/security.md)."""

from __future__ import annotations

from typing import Any

from s2s.errors import S2Error
from s2s.rfc3339 import parse_ms
from server.access.limits import limits_from_json
from server.access.scope import scope_from_json, scope_to_json
from server.access.tokens import IssueRequest, TokenInfo
from server.http_frontend.control import list_query, query_errors, rfc3339
from server.http_frontend.exchange import Exchange
from server.scoped_store import ScopedStore


def token_info_json(info: TokenInfo) -> dict[str, Any]:
    """S2's `AccessTokenInfo`, plus `limits` (an s2s extension) when the token has any."""
    body: dict[str, Any] = {
        "id": info.id,
        "expires_at": rfc3339(info.expires_at_ms),
        "auto_prefix_streams": info.auto_prefix_streams,
        "scope": scope_to_json(info.scope),
    }
    if info.limits is not None:
        body["limits"] = info.limits.to_json()
    return body


def issue_request_from_json(value: Any) -> IssueRequest:
    if not isinstance(value, dict):
        raise S2Error("bad_json", "request body must be a JSON object")
    token_id = value.get("id")
    if not isinstance(token_id, str):
        raise S2Error("bad_json", "`id` must be a string")
    auto_prefix = value.get("auto_prefix_streams")
    if auto_prefix is not None and not isinstance(auto_prefix, bool):
        raise S2Error("bad_json", "`auto_prefix_streams` must be true or false")
    if "scope" not in value:
        raise S2Error("bad_json", "`scope` is required")
    return IssueRequest(
        id=token_id,
        scope=scope_from_json(value["scope"]),
        expires_at_ms=_timestamp_ms(value.get("expires_at")),
        auto_prefix_streams=bool(auto_prefix),
        limits=limits_from_json(value.get("limits")),
    )


def _timestamp_ms(value: Any) -> int | None:
    if value is None:
        return None
    ms = parse_ms(value) if isinstance(value, str) else None
    if ms is None:
        raise S2Error(
            "bad_json",
            "`expires_at` must be an RFC 3339 time with an offset, e.g. 2027-01-01T00:00:00Z",
        )
    return ms


class AccessTokensApi:
    def __init__(self, store: ScopedStore) -> None:
        self._store = store

    async def list(self, exchange: Exchange) -> None:
        prefix, start_after, limit = list_query(exchange)
        with query_errors():
            tokens, has_more = self._store.list_access_tokens(prefix, start_after, limit)
        await exchange.respond_json(
            200, {"access_tokens": [token_info_json(t) for t in tokens], "has_more": has_more}
        )

    async def issue(self, exchange: Exchange) -> None:
        request = issue_request_from_json(await exchange.json_body())
        secret = await self._store.issue_access_token(request)
        await exchange.respond_json(201, {"access_token": secret})

    async def whoami(self, exchange: Exchange) -> None:
        """`GET /v1/whoami`, an s2s extension (docs/security.md): the calling token's own
        `AccessTokenInfo`, and whether access control is on. Any valid token may ask: it
        tells its holder only what the token already lets them do, so the console can hide
        what the token may not (the server refuses it regardless)."""
        info, access_control = self._store.whoami()
        await exchange.respond_json(
            200, {"access_control": access_control, "token": token_info_json(info)}
        )

    async def revoke(self, exchange: Exchange, token_id: str) -> None:
        await self._store.revoke_access_token(token_id)
        await exchange.respond(204)
