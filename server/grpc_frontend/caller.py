"""Who makes a gRPC call: the access token in its `authorization` metadata, as a `Principal`,
or as a `ScopedStore` that checks each operation the handler performs."""

from __future__ import annotations

from server.access.tokens import Principal
from server.grpc_frontend.errors import Context
from server.scoped_store import ScopedStore
from server.streamstore import StreamStore

AUTHORIZATION_KEY = "authorization"


def principal(store: StreamStore, context: Context) -> Principal:
    """The call's caller; `authn` if its token is missing, unknown, revoked or expired."""
    authorization = None
    for key, value in context.invocation_metadata() or ():
        if key == AUTHORIZATION_KEY:
            authorization = value
            break
    return store.access_tokens.authenticate(authorization)


def caller(store: StreamStore, context: Context) -> ScopedStore:
    """The call's `ScopedStore` (see `principal`)."""
    return ScopedStore(store, principal(store, context))
