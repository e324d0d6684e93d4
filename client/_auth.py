"""The access token on every call: gRPC client interceptors that add `authorization: Bearer`
metadata, for plain-text channels as well as TLS ones (gRPC's own call credentials refuse
plain text)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from grpc import aio

AUTHORIZATION_KEY = "authorization"


def _with_token(details: aio.ClientCallDetails, header: str) -> aio.ClientCallDetails:
    metadata = aio.Metadata(*(details.metadata or ()))
    metadata[AUTHORIZATION_KEY] = header
    return aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


class _UnaryUnary(aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, header: str) -> None:
        self._header = header

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(_with_token(details, self._header), request)


class _UnaryStream(aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, header: str) -> None:
        self._header = header

    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], details: aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(_with_token(details, self._header), request)


class _StreamStream(aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, header: str) -> None:
        self._header = header

    async def intercept_stream_stream(
        self,
        continuation: Callable[..., Any],
        details: aio.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        return await continuation(_with_token(details, self._header), request_iterator)


def bearer_token_interceptors(access_token: str) -> list[aio.ClientInterceptor]:
    """Interceptors for every kind of call the client makes (none is client-streaming only)."""
    header = f"Bearer {access_token}"
    return [_UnaryUnary(header), _UnaryStream(header), _StreamStream(header)]
