"""Who makes a gRPC call: the access token in its `authorization` metadata, as a `Principal`,
or as a `ScopedStore` that checks each operation the handler performs and carries the call's
encryption key (`s2-encryption-key` metadata)."""

from __future__ import annotations

from s2s.encryption_key import ENCRYPTION_KEY_HEADER
from server.access.tokens import Principal
from server.grpc_frontend.errors import Context
from server.scoped_store import ScopedStore
from server.streamstore import StreamStore

AUTHORIZATION_KEY = "authorization"


def _metadata(context: Context, name: str) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == name:
            return str(value)
    return None


def principal(store: StreamStore, context: Context) -> Principal:
    """The call's caller; `authn` if its token is missing, unknown, revoked or expired."""
    return store.access_tokens.authenticate(_metadata(context, AUTHORIZATION_KEY))


def caller(store: StreamStore, context: Context) -> ScopedStore:
    """The call's `ScopedStore` (see `principal`)."""
    return ScopedStore(store, principal(store, context), _metadata(context, ENCRYPTION_KEY_HEADER))
