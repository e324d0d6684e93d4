"""Request messages that do not decode: `INVALID_ARGUMENT` (`bad_proto`), never UNKNOWN.

grpc decodes a request with the method's deserializer before the handler sees it. When that
raises, grpc logs a traceback and answers UNKNOWN; in a request stream the exception comes
out of the handler's `async for` instead, which ended an append session's intake and left
the call open until the client's deadline (issue 12 item 5). So the deserializers made here
never raise: bytes that do not decode become an `errors.Undecodable`, which the handler
wrappers of `errors` and the append session turn into a `bad_proto` error like any other.

StreamService registers these deserializers itself. Services registered by generated code
(AccountService, BasinService, LakeService, health, reflection) are registered through a
`GuardedRegistry`, which hands the server each of their methods with a tolerant deserializer.
It works when the services are registered, not on each call: an interceptor would add a
coroutine hop to every call, appends included, for what only needs doing once.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message
from grpc import aio

from server.grpc_frontend.errors import Context, Undecodable, abort_with

Request = TypeVar("Request")
Parsed = TypeVar("Parsed", bound=Message)

_TOLERANT = "_s2s_tolerant"
"""Marks a deserializer made here, so that `guarded` leaves its method alone."""


def tolerant(
    parse: Callable[[bytes], Request], message_type: str
) -> Callable[[bytes], Request | Undecodable]:
    """`parse` (a message class's `FromString`), answering `Undecodable` instead of raising."""
    undecodable = Undecodable(message_type)

    def deserialize(data: bytes) -> Request | Undecodable:
        try:
            return parse(data)
        except DecodeError:
            return undecodable

    setattr(deserialize, _TOLERANT, True)
    return deserialize


def decoder(message_class: type[Parsed]) -> Callable[[bytes], Parsed | Undecodable]:
    """A tolerant deserializer for a generated message class."""
    return tolerant(message_class.FromString, message_class.DESCRIPTOR.full_name)


def guarded(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """The same method with a tolerant deserializer and a behavior that answers `bad_proto`
    for a request that did not decode (left as it is if its deserializer is one of ours)."""
    deserialize = handler.request_deserializer
    if deserialize is None or getattr(deserialize, _TOLERANT, False):
        return handler
    message_class = getattr(deserialize, "__self__", None)
    message_type = getattr(getattr(message_class, "DESCRIPTOR", None), "full_name", "message")
    field = ("stream_" if handler.request_streaming else "unary_") + (
        "stream" if handler.response_streaming else "unary"
    )
    behavior = getattr(handler, field)
    guard = _stream_request_guard if handler.request_streaming else _unary_request_guard
    method: Any = handler  # grpc's handlers are named tuples; grpcio ships no types
    replaced: grpc.RpcMethodHandler = method._replace(
        request_deserializer=tolerant(deserialize, message_type), **{field: guard(behavior)}
    )
    return replaced


def _unary_request_guard(behavior: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(behavior):

        async def streamed(request: Any, context: Context) -> AsyncIterator[Any]:
            if isinstance(request, Undecodable):
                await abort_with(context, request.error())
            async for response in behavior(request, context):
                yield response

        return streamed

    async def answered(request: Any, context: Context) -> Any:
        if isinstance(request, Undecodable):
            await abort_with(context, request.error())
        return await behavior(request, context)

    return answered


def _stream_request_guard(behavior: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(behavior):

        async def streamed(requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
            async for response in behavior(_decoded(requests, context), context):
                yield response

        return streamed

    async def answered(requests: AsyncIterator[Any], context: Context) -> Any:
        return await behavior(_decoded(requests, context), context)

    return answered


async def _decoded(requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
    """The requests of a stream, ending the call with `bad_proto` at one that did not decode."""
    async for request in requests:
        if isinstance(request, Undecodable):
            await abort_with(context, request.error())
        yield request


class GuardedRegistry:
    """What generated `add_*Servicer_to_server` functions register on: it passes each
    service's methods on to `server`, guarded (`guarded`).

    Generated code registers a service twice, as a generic handler and by method name; both
    carry the same method handlers, so the name registration alone is taken and both are
    made from it.
    """

    def __init__(self, server: aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        """The generic form of a service, which `add_registered_method_handlers` rebuilds."""

    def add_registered_method_handlers(
        self, service: str, method_handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        guarded_handlers = {name: guarded(h) for name, h in method_handlers.items()}
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, guarded_handlers),)
        )
        self._server.add_registered_method_handlers(service, guarded_handlers)
