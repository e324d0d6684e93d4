"""A TCP proxy for tests that can lose a server's answers: between `lose_answers()` and `cut()`
it forwards what clients send but drops what the server sends back, and `cut()` then closes
every connection. To the client, that is a network that failed after its requests arrived and
before their acks came back: the server wrote what it was sent, and the client cannot know.

`upstream_port` may be changed while it runs (a server restarted on another port): new
connections go there.
"""

from __future__ import annotations

import asyncio
import contextlib

CHUNK_BYTES = 64 * 1024


class LossyProxy:
    def __init__(self, upstream_port: int, host: str = "127.0.0.1") -> None:
        self.upstream_port = upstream_port
        self._host = host
        self._losing = False
        self._server: asyncio.Server | None = None
        self._connections: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self.cuts = 0
        self.answer_bytes_lost = 0

    async def start(self) -> int:
        """Listen on a free port of `host`; returns it."""
        self._server = await asyncio.start_server(self._serve, self._host, 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def lose_answers(self) -> None:
        """From now until `cut`, drop every byte the server sends."""
        self._losing = True

    def cut(self) -> None:
        """Close every open connection at once (clients reconnect through the proxy), and
        forward answers again."""
        self.cuts += 1
        for writers in list(self._connections):
            for writer in writers:
                writer.transport.abort()
        self._losing = False

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.cut()
        if self._handlers:
            await asyncio.wait(self._handlers)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(
        self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        try:
            await self._forward(client_in, client_out)
        finally:
            self._handlers.discard(handler)

    async def _forward(
        self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> None:
        try:
            server_in, server_out = await asyncio.open_connection(self._host, self.upstream_port)
        except OSError:  # the server is down: the client sees its connection closed
            client_out.transport.abort()
            return
        writers = (client_out, server_out)
        self._connections.add(writers)
        pumps = [
            asyncio.ensure_future(self._pump(client_in, server_out, answers=False)),
            asyncio.ensure_future(self._pump(server_in, client_out, answers=True)),
        ]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._connections.discard(writers)
            for writer in writers:
                writer.transport.abort()
            await asyncio.gather(*pumps, return_exceptions=True)

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, answers: bool
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while chunk := await source.read(CHUNK_BYTES):
                if answers and self._losing:
                    self.answer_bytes_lost += len(chunk)
                    continue
                sink.write(chunk)
                await sink.drain()
