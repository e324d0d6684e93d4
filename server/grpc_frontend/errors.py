"""How failures reach gRPC clients: status code and message from the error table
(`s2s.errors`), plus machine-readable trailing metadata:

| key                            | when                          | value                  |
|--------------------------------|-------------------------------|------------------------|
| `s2-error-code`                | always                        | S2 error code          |
| `s2-expected-seq-num`          | `seq_num_mismatch`            | next sequence number   |
| `s2-current-fencing-token-bin` | `fencing_token_mismatch`      | current token (UTF-8)  |
| `s2-tail-seq-num`, `s2-tail-timestamp` | `read_unwritten`      | the stream's tail      |
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias, TypeVar

import grpc
from grpc import aio

from s2s.errors import (
    CURRENT_FENCING_TOKEN_KEY,
    ERROR_CODE_KEY,
    EXPECTED_SEQ_NUM_KEY,
    TAIL_SEQ_NUM_KEY,
    TAIL_TIMESTAMP_KEY,
    FencingTokenMismatch,
    ReadUnwritten,
    S2Error,
    SeqNumMismatch,
)
from server.streamstore import StreamStore

log = logging.getLogger(__name__)

Context: TypeAlias = Any
"""A `grpc.aio.ServicerContext`; grpcio ships no type information."""

Metadata = tuple[tuple[str, str | bytes], ...]


def trailing_metadata(error: S2Error) -> Metadata:
    items: list[tuple[str, str | bytes]] = [(ERROR_CODE_KEY, error.code)]
    if isinstance(error, SeqNumMismatch):
        items.append((EXPECTED_SEQ_NUM_KEY, str(error.expected_seq_num)))
    elif isinstance(error, FencingTokenMismatch):
        items.append((CURRENT_FENCING_TOKEN_KEY, error.current_token.encode()))
    elif isinstance(error, ReadUnwritten):
        items.append((TAIL_SEQ_NUM_KEY, str(error.tail_seq_num)))
        items.append((TAIL_TIMESTAMP_KEY, str(error.tail_timestamp)))
    return tuple(items)


async def abort_with(context: Context, error: S2Error) -> None:
    """End the call with the error's status, message and metadata (raises)."""
    await context.abort(error.kind.grpc_status, error.message, trailing_metadata(error))


def internal_error(exc: Exception) -> S2Error:
    """An unexpected exception, logged here and reported as the retryable `other`."""
    log.exception("unexpected error in gRPC handler", exc_info=exc)
    return S2Error("other", f"internal error: {type(exc).__name__}")


@dataclass(frozen=True)
class Undecodable:
    """A request message that did not decode as `message_type`: what the deserializers of
    `decoding` hand over instead of raising."""

    message_type: str

    def error(self) -> S2Error:
        return S2Error("bad_proto", f"request message is not a valid {self.message_type}")


class _OverStore(Protocol):
    """A servicer of the store: the errors its handlers answer are counted there."""

    _store: StreamStore


Servicer = TypeVar("Servicer", bound=_OverStore)
Req = TypeVar("Req")
Resp = TypeVar("Resp")


def unary(
    handler: Callable[[Servicer, Req, Context], Awaitable[Resp]],
) -> Callable[[Servicer, Req | Undecodable, Context], Awaitable[Resp]]:
    """Wrap a unary handler method so every `S2Error` becomes a proper gRPC status, and a
    request that did not decode `bad_proto`."""

    async def wrapped(self: Servicer, request: Req | Undecodable, context: Context) -> Resp:
        try:
            if isinstance(request, Undecodable):
                raise request.error()
            return await handler(self, request, context)
        except S2Error as error:
            self._store.count_error(error.code)
            await abort_with(context, error)
        except (aio.AbortError, grpc.RpcError, asyncio.CancelledError):
            raise
        except Exception as exc:
            self._store.count_error("other")
            await abort_with(context, internal_error(exc))
        raise AssertionError("abort returned")

    return wrapped


def streaming(
    handler: Callable[[Servicer, Req, Context], AsyncIterator[Resp]],
) -> Callable[[Servicer, Req | Undecodable, Context], AsyncIterator[Resp]]:
    """Wrap a response-streaming handler method so every `S2Error` becomes a gRPC status,
    and a request that did not decode `bad_proto`."""

    async def wrapped(
        self: Servicer, request: Req | Undecodable, context: Context
    ) -> AsyncIterator[Resp]:
        try:
            if isinstance(request, Undecodable):
                raise request.error()
            async for response in handler(self, request, context):
                yield response
        except S2Error as error:
            self._store.count_error(error.code)
            await abort_with(context, error)
        except (aio.AbortError, grpc.RpcError, asyncio.CancelledError):
            raise
        except Exception as exc:
            self._store.count_error("other")
            await abort_with(context, internal_error(exc))

    return wrapped
