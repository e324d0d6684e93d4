"""Access tokens: issued, listed and revoked, and recognized from the secret a call presents.

A token is stored as its id, scope, expiry and the SHA-256 digest of its secret, never the
secret itself, which only the issuing call sees. The secrets are 256 random bits, so a fast
digest is enough: there is nothing to guess that a slow one would protect. All tokens are held
in memory, by id and by digest; a call's secret is found by its digest and compared with
`hmac.compare_digest`, in constant time.

Issuing and revoking are durable (group-committed) before they are answered. A revoked or
expired token's `Principal.ended` is set, which ends the sessions opened with it. Where several
nodes share the store, a token another node issues or revokes is read back on its notice
(`reload`), so a revocation holds on every node within the notice's latency.

The root token (`ROOT_TOKEN_ID`, every permission, no expiry) is created at first start; its
secret is written to a file in the data directory readable only by its owner
(`bootstrap_root`). Deleting that file and restarting replaces the root secret (on a server
that shares its store with other nodes, a root one of them made is kept: copy its file).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path

from s2s import names
from s2s.errors import S2Error
from server.access.limits import RateLimiter, RateLimits, limits_from_json
from server.access.scope import (
    EVERYTHING,
    ROOT_SCOPE,
    Group,
    Scope,
    scope_from_json,
    scope_to_json,
    validate_access_token_id,
    validate_access_token_prefix,
)
from server.clock import Clock
from server.durable_file import replace_durably
from server.storage.committer import CommitConflict, GroupCommitter
from server.storage.kv import Delete, Expect, KeyValueStore, Put, Table, Write

log = logging.getLogger(__name__)

ROOT_TOKEN_ID = "root"
ROOT_TOKEN_FILE = "root.token"
"""In the data directory: the root token's secret, mode 0600."""
SECRET_PREFIX = "s2s_"
EXPIRES_AT_MS_MAX = 253_402_300_799_999
"""9999-12-31T23:59:59.999Z: the last time RFC 3339 (and Python's datetime) can write."""
BEARER = "bearer "


@dataclass(frozen=True)
class TokenInfo:
    """A token as listed: everything but its secret."""

    id: str
    expires_at_ms: int | None
    auto_prefix_streams: bool
    scope: Scope
    limits: RateLimits | None = None


@dataclass(frozen=True)
class IssueRequest:
    id: str
    scope: Scope
    expires_at_ms: int | None = None
    auto_prefix_streams: bool = False
    limits: RateLimits | None = None
    """None: the issuer's own limits, if it has any."""


@dataclass(eq=False)
class Principal:
    """Who makes a call: the token it presented, and an event set once that token is revoked
    or expires (sessions opened with it end then)."""

    info: TokenInfo
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    limiter: RateLimiter | None = field(init=False)

    def __post_init__(self) -> None:
        limits = self.info.limits
        self.limiter = None if limits is None else RateLimiter(limits)

    def require(
        self,
        operation: str,
        *,
        basin: str | None = None,
        stream: str | None = None,
        access_token: str | None = None,
    ) -> None:
        """Raise `permission_denied` unless the token permits `operation` on these resources
        (`stream` as stored, with any auto-prefix already applied)."""
        refusal = self._refusal(operation, basin, stream, access_token)
        if refusal is not None:
            raise S2Error("permission_denied", refusal)

    def permits(self, operation: str, *, basin: str, stream: str) -> bool:
        """`require` as a question: no exception raised and caught on a path taken per batch."""
        return self._refusal(operation, basin, stream, None) is None

    def _refusal(
        self, operation: str, basin: str | None, stream: str | None, access_token: str | None
    ) -> str | None:
        """Why the token does not permit `operation` on these resources, or None if it does."""
        scope = self.info.scope
        if operation not in scope.operations:
            return f"this access token does not permit {operation!r}"
        if basin is not None and not scope.covers_basin(basin):
            return f"basin {basin!r} is outside this access token's scope"
        if stream is not None and not scope.covers_stream(stream):
            return f"stream {stream!r} is outside this access token's scope"
        if access_token is not None and not scope.covers_access_token(access_token):
            return f"access token {access_token!r} is outside this access token's scope"
        return None

    def require_group(self, group: Group, writes: bool, purpose: str) -> None:
        """Raise `permission_denied` unless the token holds a group permission itself (the
        lake's operations are not S2 operations; they are granted by group)."""
        if (group, writes) not in self.info.scope.op_groups:
            permission = "write" if writes else "read"
            raise S2Error(
                "permission_denied",
                f"{purpose} needs the {group} {permission} permission (op_groups.{group}."
                f"{permission}), which this access token does not have",
            )

    def require_everything(self, purpose: str) -> None:
        """Raise `permission_denied` unless the token's scope covers every basin and stream."""
        scope = self.info.scope
        if scope.basins != EVERYTHING or scope.streams != EVERYTHING:
            raise S2Error(
                "permission_denied",
                f"{purpose} reaches data of every stream: it needs a token whose basins and "
                'streams are both {"prefix": ""}',
            )

    @property
    def stream_prefix(self) -> str:
        """What this token's stream names are relative to: its stream scope's prefix with
        `auto_prefix_streams`, else nothing."""
        streams = self.info.scope.streams
        if self.info.auto_prefix_streams and streams is not None and streams.prefix:
            return streams.prefix
        return ""


@dataclass(eq=False)
class _Stored:
    principal: Principal
    digest: bytes
    expiry_timer: asyncio.TimerHandle | None = None

    @property
    def info(self) -> TokenInfo:
        return self.principal.info

    def encode(self) -> bytes:
        return json.dumps(
            {
                "digest": self.digest.hex(),
                "expires_at_ms": self.info.expires_at_ms,
                "auto_prefix_streams": self.info.auto_prefix_streams,
                "scope": scope_to_json(self.info.scope),
                "limits": None if self.info.limits is None else self.info.limits.to_json(),
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, token_id: str, data: bytes) -> _Stored:
        obj = json.loads(data)
        info = TokenInfo(
            id=token_id,
            expires_at_ms=obj["expires_at_ms"],
            auto_prefix_streams=obj["auto_prefix_streams"],
            scope=scope_from_json(obj["scope"]),
            limits=limits_from_json(obj.get("limits")),
        )
        return cls(Principal(info), bytes.fromhex(obj["digest"]))


def _same(held: _Stored | None, new: _Stored | None) -> bool:
    if held is None or new is None:
        return held is new
    return (held.info, held.digest) == (new.info, new.digest)


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


OPEN_ACCESS = TokenInfo(id="", expires_at_ms=None, auto_prefix_streams=False, scope=ROOT_SCOPE)
"""Whoever calls a server run without access control (`s2s serve --no-auth`)."""


class AccessTokens:
    """Every token of the server, loaded at start; issue, list, revoke and authenticate.

    `required` is true unless the server runs with `--no-auth`: then every call is made with
    every permission (`OPEN_ACCESS`), whatever token it carries.
    """

    def __init__(self, kv: KeyValueStore, committer: GroupCommitter, clock: Clock) -> None:
        self._kv = kv
        self._committer = committer
        self._clock = clock
        self.required = True
        self.anyone = Principal(OPEN_ACCESS)
        """The caller with every permission: every caller without access control."""
        self._by_id: dict[str, _Stored] = {}
        self._by_digest: dict[bytes, _Stored] = {}
        self._issuing: set[str] = set()
        """Ids being issued, whose records are not yet durable."""
        self._changes = 0
        """Counts the changes made here (`_add`, `_remove`), for `_reload`."""
        self._reloading: set[asyncio.Future[None]] = set()
        """Reads of other nodes' changes under way: the loop holds only weak references."""

    def load(self) -> None:
        for key, value in self._kv.scan(Table.ACCESS_TOKENS, b"", None, sys.maxsize):
            self._add(_Stored.decode(key.decode(), value))

    def reload(self, ids: list[bytes] | None) -> None:
        """Another node issued or revoked these tokens (ACCESS_TOKENS keys; None: perhaps
        any): read them back, so a token revoked there stops working here too and its
        sessions end."""
        task = asyncio.ensure_future(self._reload(ids))
        self._reloading.add(task)
        task.add_done_callback(self._reloading.discard)

    async def _reload(self, ids: list[bytes] | None) -> None:
        while True:
            changes = self._changes
            found = await self._read_back(ids)
            if found is None:
                return
            if changes == self._changes:
                break
            # A change made here meanwhile: the read may predate it.
        stored, changed = found
        for token_id in changed - self._issuing:
            self._follow(token_id, stored.get(token_id))

    async def _read_back(self, ids: list[bytes] | None) -> tuple[dict[str, bytes], set[str]] | None:
        """The stored tokens among `ids` (None: all) and the ids to follow; None if the store
        could not be read."""
        try:
            if ids is None:
                rows = await asyncio.to_thread(
                    self._kv.scan, Table.ACCESS_TOKENS, b"", None, sys.maxsize
                )
                stored = {key.decode(): value for key, value in rows}
                changed = set(self._by_id) | set(stored)
            else:
                values = await asyncio.to_thread(
                    lambda: [self._kv.get(Table.ACCESS_TOKENS, key) for key in ids]
                )
                pairs = zip(ids, values, strict=True)
                stored = {key.decode(): value for key, value in pairs if value is not None}
                changed = {key.decode() for key in ids}
        except Exception as error:  # the next notice, or reconnection, reads them again
            log.warning(
                "could not read access tokens back after another node changed them: %s", error
            )
            return None
        return stored, changed

    def _follow(self, token_id: str, value: bytes | None) -> None:
        """Hold the token as stored: `value` None if it is not (revoked)."""
        held = self._by_id.get(token_id)
        new = None if value is None else _Stored.decode(token_id, value)
        if _same(held, new):
            return  # unchanged: its sessions, expiry timer and rate limiter carry on
        if held is not None:
            self._remove(held)
        if new is not None:
            self._add(new)

    # --- authentication ------------------------------------------------------------------

    def authenticate(self, authorization: str | None) -> Principal:
        """The caller of a request with this `authorization` header value; `authn` if it
        carries no token, or one that is unknown, revoked or expired."""
        if not self.required:
            return self.anyone
        if not authorization:
            raise S2Error(
                "authn", "missing access token: send the header `authorization: Bearer <token>`"
            )
        if authorization[: len(BEARER)].lower() != BEARER:
            raise S2Error("authn", "malformed authorization header: expected `Bearer <token>`")
        secret = authorization[len(BEARER) :].strip()
        digest = _digest(secret)
        stored = self._by_digest.get(digest)
        if stored is None or not hmac.compare_digest(stored.digest, digest):
            raise S2Error("authn", "unknown or revoked access token")
        expires_at_ms = stored.info.expires_at_ms
        if expires_at_ms is not None and self._clock.now_ms() >= expires_at_ms:
            stored.principal.ended.set()
            raise S2Error("authn", "access token expired")
        self._arm_expiry(stored)
        return stored.principal

    def _arm_expiry(self, stored: _Stored) -> None:
        """End the token's sessions when it expires (armed at first use)."""
        expires_at_ms = stored.info.expires_at_ms
        if expires_at_ms is None or stored.expiry_timer is not None:
            return
        delay_s = max(0.0, (expires_at_ms - self._clock.now_ms()) / 1000)
        stored.expiry_timer = asyncio.get_running_loop().call_later(
            delay_s, stored.principal.ended.set
        )

    # --- the API ---------------------------------------------------------------------------

    async def issue(self, requester: Principal, request: IssueRequest) -> str:
        """A new token's secret, shown this once. The token can do nothing its issuer cannot,
        and expires no later (without `expires_at`, exactly when its issuer does)."""
        validate_access_token_id(request.id)
        requester.require("issue-access-token", access_token=request.id)
        scope = request.scope
        if not scope.operations:
            raise S2Error("invalid", "the scope permits no operation: grant ops or op_groups")
        streams = scope.streams
        if request.auto_prefix_streams and (streams is None or streams.prefix is None):
            raise S2Error(
                "invalid", 'auto_prefix_streams needs a stream scope by prefix: {"prefix": ...}'
            )
        if not scope.within(requester.info.scope):
            raise S2Error("permission_denied", "the scope is broader than the issuing token's own")
        ceiling = requester.info.expires_at_ms
        expires_at_ms = request.expires_at_ms if request.expires_at_ms is not None else ceiling
        if expires_at_ms is not None and expires_at_ms <= self._clock.now_ms():
            raise S2Error("invalid", "expires_at is in the past")
        if expires_at_ms is not None and expires_at_ms > EXPIRES_AT_MS_MAX:
            raise S2Error("invalid", "expires_at must be before the year 10000")
        if ceiling is not None and (expires_at_ms is None or expires_at_ms > ceiling):
            raise S2Error(
                "permission_denied", "expires_at is later than the issuing token's own expiry"
            )
        limits = request.limits or requester.info.limits
        if limits is not None and not limits.within(requester.info.limits):
            raise S2Error("permission_denied", "the limits are looser than the issuing token's own")
        if request.id in self._by_id or request.id in self._issuing:
            raise S2Error("resource_already_exists", f"access token {request.id!r} already exists")
        secret = new_secret()
        info = TokenInfo(request.id, expires_at_ms, request.auto_prefix_streams, scope, limits)
        stored = _Stored(Principal(info), _digest(secret))
        # The id is taken from now: a concurrent issue of it must fail here, not write its own
        # record over this one on disk while this one is being answered.
        self._issuing.add(request.id)
        try:
            await self._committer.commit(
                [Put(Table.ACCESS_TOKENS, request.id.encode(), stored.encode())]
            )
            self._add(stored)
        finally:
            self._issuing.discard(request.id)
        return secret

    def list(
        self, requester: Principal, prefix: str = "", start_after: str = "", limit: int = 1000
    ) -> tuple[list[TokenInfo], bool]:
        """The tokens whose ids start with `prefix`, after `start_after`, that the requester's
        scope covers, in id order."""
        requester.require("list-access-tokens")
        validate_access_token_prefix(prefix)
        validate_access_token_prefix(start_after, "start_after")
        scope = requester.info.scope
        visible = sorted(
            token_id
            for token_id in self._by_id
            if token_id.startswith(prefix)
            and token_id > start_after
            and scope.covers_access_token(token_id)
        )
        count = names.clamp_list_limit(limit)
        return [self._by_id[token_id].info for token_id in visible[:count]], len(visible) > count

    async def revoke(self, requester: Principal, token_id: str) -> None:
        """Forget the token: calls with it fail from now on, and its open sessions end."""
        validate_access_token_id(token_id)
        requester.require("revoke-access-token", access_token=token_id)
        stored = self._by_id.get(token_id)
        if stored is None:
            raise S2Error("access_token_not_found", f"access token {token_id!r} does not exist")
        if token_id == ROOT_TOKEN_ID:
            raise S2Error(
                "permission_denied",
                f"the root token cannot be revoked: to replace its secret, delete "
                f"{ROOT_TOKEN_FILE} in the data directory and restart the server",
            )
        await self._committer.commit([Delete(Table.ACCESS_TOKENS, token_id.encode())])
        if self._by_id.get(token_id) is stored:
            self._remove(stored)

    # --- the root token --------------------------------------------------------------------

    async def bootstrap_root(self, data_dir: str, shared: bool = False) -> Path | None:
        """Make sure the root token exists and its secret is in `ROOT_TOKEN_FILE`; returns the
        file's path. A missing or foreign file gets a new root secret.

        `shared`: other nodes serve the same store. A root token one of them made is kept
        (replacing it would lock out every holder of its file): None if this data directory
        does not hold its secret. Two nodes making the first root at once make one."""
        path = Path(data_dir) / ROOT_TOKEN_FILE
        stored = self._by_id.get(ROOT_TOKEN_ID)
        if stored is not None and self._file_holds(path, stored.digest):
            return path
        if shared and stored is not None:
            return None
        secret = new_secret()
        info = TokenInfo(ROOT_TOKEN_ID, None, False, ROOT_SCOPE)
        root = _Stored(Principal(info), _digest(secret))
        key = ROOT_TOKEN_ID.encode()
        writes: list[Write] = [Put(Table.ACCESS_TOKENS, key, root.encode())]
        if shared:
            writes.insert(0, Expect(Table.ACCESS_TOKENS, key, None))
        # The file first: a crash between the two leaves a file that does not match, which
        # the next start replaces.
        replace_durably(path, f"{secret}\n".encode(), mode=0o600)
        try:
            await self._committer.commit(writes)
        except CommitConflict:  # another node made the root first: its notice brings it
            path.unlink()
            return None
        if stored is not None:
            self._remove(stored)
        self._add(root)
        return path

    @staticmethod
    def _file_holds(path: Path, digest: bytes) -> bool:
        try:
            secret = path.read_text().strip()
        except (OSError, UnicodeDecodeError):
            return False
        return hmac.compare_digest(_digest(secret), digest)

    def _add(self, stored: _Stored) -> None:
        self._changes += 1
        self._by_id[stored.info.id] = stored
        self._by_digest[stored.digest] = stored

    def _remove(self, stored: _Stored) -> None:
        self._changes += 1
        del self._by_id[stored.info.id]
        del self._by_digest[stored.digest]
        if stored.expiry_timer is not None:
            stored.expiry_timer.cancel()
        stored.principal.ended.set()
