"""S2S sessions over one HTTP exchange (docs/s2-compat.md §9): full duplex append and
following read.

Both answer `200` as soon as the stream is known to exist (or was auto-created), before any
frame is exchanged; after that, failures are reported as one terminal frame. Errors found
while opening (404, 409, 416, 422) are ordinary HTTP error responses. What the sessions do is
the core's (`server.append_session`, `server.read_session`); here frames are decoded into its
input and its output is encoded into frames.
"""

from __future__ import annotations

from collections.abc import Callable

from google.protobuf.message import DecodeError

from s2s.errors import S2Error
from s2s.records import validate_append_input
from s2s.v1 import records_pb2 as pb
from server.append_session import StreamBatch, append_session
from server.http_frontend.exchange import Exchange
from server.http_frontend.lifecycle import serve_read, write_outputs
from server.http_frontend.records import create_config, read_arguments, read_batch_proto
from server.http_frontend.s2s_frames import (
    encode_frame,
    negotiate_compression,
    read_frames,
    terminal_for,
)
from server.read_session import read_session
from server.scoped_store import ScopedStore

S2S_CONTENT_TYPE = "s2s/proto"

_SESSION_HEADERS = [
    ("content-type", S2S_CONTENT_TYPE),
    ("cache-control", "no-cache, no-transform"),
    ("x-accel-buffering", "no"),
]


class SessionsApi:
    def __init__(self, store: ScopedStore) -> None:
        self._store = store

    async def append_session(self, exchange: Exchange, basin: str, stream: str) -> None:
        """Each frame's batch is acknowledged by a frame, in order; the session's one failure
        (including `server_draining` on shutdown) is the terminal frame."""
        await self._store.require_stream(basin, stream, "append", create_config(exchange))
        compression = negotiate_compression(exchange.header("accept-encoding"))
        await exchange.start(200, _SESSION_HEADERS)
        acks = append_session(
            self._store,
            read_frames(exchange.body_chunks()),
            _frame_decoder(basin, stream),
        )
        await write_outputs(
            exchange,
            acks,
            lambda ack: encode_frame(ack.encode(), compression),
            b"",
            self._terminal,
        )

    async def read_session(self, exchange: Exchange, basin: str, stream: str) -> None:
        """Catch up, then follow with heartbeats, one frame per batch."""
        start, limits = read_arguments(exchange)
        compression = negotiate_compression(exchange.header("accept-encoding"))
        session = read_session(
            self._store,
            basin,
            stream,
            start,
            limits,
            create_config(exchange),
        )
        await serve_read(
            exchange,
            session,
            _SESSION_HEADERS,
            lambda output: encode_frame(read_batch_proto(output), compression),
            b"",
            self._terminal,
        )

    def _terminal(self, error: S2Error) -> bytes:
        self._store.count_error(error.code)
        return terminal_for(error)


def _frame_decoder(basin: str, stream: str) -> Callable[[bytes], StreamBatch]:
    def decode(body: bytes) -> StreamBatch:
        try:
            message = pb.AppendInput.FromString(body)
        except DecodeError as error:
            raise S2Error("bad_frame", f"cannot decode AppendInput: {error}") from None
        return StreamBatch(basin, stream, validate_append_input(message, len(body)))

    return decode
