"""StreamService: appends (unary and pipelined sessions) and reads (unary and following).

Sessions are the core's (`server.append_session`, `server.read_session`): their handlers
decode requests into its input and encode its acks and batches.

Read responses are assembled from stored record bytes and append responses by hand
(`s2s.wire`), so those handlers return encoded messages and are registered with an identity
serializer (`handlers`). Requests are decoded by `decoding`'s deserializers, so a message
that does not decode reaches the handler as `Undecodable` and fails with `bad_proto`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import grpc
from google.protobuf.message import Message

from s2s.errors import S2Error
from s2s.records import validate_append_input
from s2s.v1 import records_pb2 as pb
from s2s.v1 import services_pb2 as spb
from s2s.wire import append_response_bytes, read_response_bytes, request_input_size
from server.append_session import (
    DiscardAfterFailure,
    StreamBatch,
    append_session,
    refuse_session,
)
from server.grpc_frontend.caller import caller
from server.grpc_frontend.decoding import decoder, tolerant
from server.grpc_frontend.errors import Context, Undecodable, streaming, unary
from server.read_session import read_session
from server.reader import ReadLimits, ReadOutput, ReadStart
from server.streamstore import StreamStore

DRAIN_QUIET_S = 0.05
DRAIN_S_MAX = 1.0
DISCARD_AFTER_FAILURE = DiscardAfterFailure(quiet_s=DRAIN_QUIET_S, s_max=DRAIN_S_MAX)
"""After a failure, an append session reads and discards the client's further batches until
the client half-closes, is quiet for DRAIN_QUIET_S, or DRAIN_S_MAX passes; then it ends."""

_SERVICE = "s2s.v1.StreamService"


def read_arguments(
    request: spb.ReadRequest | spb.ReadSessionRequest,
) -> tuple[ReadStart, ReadLimits]:
    which = request.WhichOneof("start")
    start = ReadStart(**{which: getattr(request, which)}) if which else ReadStart()
    limits = ReadLimits(
        count=request.count if request.HasField("count") else None,
        bytes=request.bytes if request.HasField("bytes") else None,
        until=request.until if request.HasField("until") else None,
        clamp=request.clamp,
        wait_secs=request.wait if request.HasField("wait") else None,
    )
    return start, limits


def output_bytes(output: ReadOutput) -> bytes:
    tail = None if output.tail is None else (output.tail.seq_num, output.tail.timestamp)
    records = b"" if output.records is None else output.records.payload
    return read_response_bytes(records, tail)


def _stream_names(basin: str, stream: str) -> tuple[str, str]:
    if not basin or not stream:
        raise S2Error("invalid", "basin and stream must be set")
    return basin, stream


class StreamServicer:
    def __init__(self, store: StreamStore) -> None:
        self._store = store

    @unary
    async def CheckTail(
        self, request: spb.CheckTailRequest, context: Context
    ) -> spb.CheckTailResponse:
        tail = await caller(self._store, context).check_tail(
            *_stream_names(request.basin, request.stream)
        )
        return spb.CheckTailResponse(
            tail=pb.StreamPosition(seq_num=tail.seq_num, timestamp=tail.timestamp)
        )

    @unary
    async def Append(self, sized: SizedRequest[spb.AppendRequest], context: Context) -> bytes:
        request, input_size = sized
        basin, stream = _stream_names(request.basin, request.stream)
        batch = validate_append_input(request.input, input_size)
        ack = await caller(self._store, context).append(basin, stream, batch)
        return append_response_bytes(ack.encode())

    @streaming
    async def AppendSession(
        self,
        requests: AsyncIterator[SizedRequest[spb.AppendSessionRequest] | Undecodable],
        context: Context,
    ) -> AsyncIterator[bytes]:
        """Acks in order, then the session's one failure as the call's status (the session
        itself is `server.append_session`'s).

        After a failure the session reads what the client is still sending before it ends
        (`DISCARD_AFTER_FAILURE`): a client write that races the end of the call makes grpc
        report INTERNAL instead of our status, and the client would lose the typed error.
        """
        try:
            store = caller(self._store, context)
        except S2Error as refused:  # no valid token: the same discarding, then the status
            await refuse_session(requests, refused, DISCARD_AFTER_FAILURE)
        acks = append_session(store, requests, _SessionRequests(), discard=DISCARD_AFTER_FAILURE)
        async with contextlib.aclosing(acks):
            async for ack in acks:
                yield append_response_bytes(ack.encode())

    @unary
    async def Read(self, request: spb.ReadRequest, context: Context) -> bytes:
        basin, stream = _stream_names(request.basin, request.stream)
        start, limits = read_arguments(request)
        return output_bytes(await caller(self._store, context).read(basin, stream, start, limits))

    @streaming
    async def ReadSession(
        self, request: spb.ReadSessionRequest, context: Context
    ) -> AsyncIterator[bytes]:
        basin, stream = _stream_names(request.basin, request.stream)
        start, limits = read_arguments(request)
        session = read_session(caller(self._store, context), basin, stream, start, limits, None)
        async with contextlib.aclosing(session):
            async for output in session:
                yield output_bytes(output)


class _SessionRequests:
    """Decodes an append session's requests: the first names the stream, and each later one
    names the same stream or leaves the names empty."""

    def __init__(self) -> None:
        self._names: tuple[str, str] | None = None

    def __call__(self, sized: SizedRequest[spb.AppendSessionRequest] | Undecodable) -> StreamBatch:
        if isinstance(sized, Undecodable):
            raise sized.error()
        request, input_size = sized
        names = self._names
        if names is None:
            names = self._names = _stream_names(request.basin, request.stream)
        elif (request.basin or names[0], request.stream or names[1]) != names:
            raise S2Error("invalid", "an append session appends to one stream")
        return StreamBatch(*names, validate_append_input(request.input, input_size))


Request = TypeVar("Request", bound=Message)
SizedRequest = tuple[Request, int | None]
"""An append request and the encoded size of its input (see `validate_append_input`)."""


def _with_input_size(
    message_class: type[Request],
) -> Callable[[bytes], SizedRequest[Request] | Undecodable]:
    def parse(data: bytes) -> SizedRequest[Request]:
        return message_class.FromString(data), request_input_size(data)

    return tolerant(parse, message_class.DESCRIPTOR.full_name)


def _identity(data: bytes) -> bytes:
    return data


def handlers(servicer: StreamServicer) -> grpc.GenericRpcHandler:
    """Register StreamService; appends and reads return messages already encoded."""
    return grpc.method_handlers_generic_handler(
        _SERVICE,
        {
            "CheckTail": grpc.unary_unary_rpc_method_handler(
                servicer.CheckTail,
                request_deserializer=decoder(spb.CheckTailRequest),
                response_serializer=spb.CheckTailResponse.SerializeToString,
            ),
            "Append": grpc.unary_unary_rpc_method_handler(
                servicer.Append,
                request_deserializer=_with_input_size(spb.AppendRequest),
                response_serializer=_identity,
            ),
            "AppendSession": grpc.stream_stream_rpc_method_handler(
                servicer.AppendSession,
                request_deserializer=_with_input_size(spb.AppendSessionRequest),
                response_serializer=_identity,
            ),
            "Read": grpc.unary_unary_rpc_method_handler(
                servicer.Read,
                request_deserializer=decoder(spb.ReadRequest),
                response_serializer=_identity,
            ),
            "ReadSession": grpc.unary_stream_rpc_method_handler(
                servicer.ReadSession,
                request_deserializer=decoder(spb.ReadSessionRequest),
                response_serializer=_identity,
            ),
        },
    )
