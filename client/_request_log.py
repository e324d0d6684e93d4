"""One debug log line per call the client makes: the method, its outcome and how long it took.

Installed on a client's channel only when this module's logger is enabled for debug at the
client's creation (`s2s ... --log-level debug`): an aio interceptor costs 50-300 us a call.
A unary call is logged when its answer arrives; a session or a read stream when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterable, Callable
from typing import Any

import grpc
from grpc import aio

from s2s.logs import fields

log = logging.getLogger(__name__)


def enabled() -> bool:
    return log.isEnabledFor(logging.DEBUG)


def _report(details: aio.ClientCallDetails, code: grpc.StatusCode, started: float) -> None:
    method = details.method.decode() if isinstance(details.method, bytes) else details.method
    took_ms = (time.perf_counter() - started) * 1e3
    log.debug(
        "request %s: %s in %.1f ms",
        method.rpartition("/")[2],
        code.name,
        took_ms,
        extra=fields(method=method, status=code.name, duration_ms=round(took_ms, 2)),
    )


# grpc has no type hints: its classes are Any to mypy.
class RequestLog(
    aio.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    aio.UnaryStreamClientInterceptor,  # type: ignore[misc]
    aio.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    """Logs each call at debug as it completes."""

    def __init__(self) -> None:
        self._reports: set[asyncio.Task[None]] = set()
        """Reports of ended streams, waiting for their status (already there: one loop turn)."""

    async def intercept_unary_unary(
        self,
        continuation: Callable[[aio.ClientCallDetails, Any], Any],
        client_call_details: aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        started = time.perf_counter()
        call = await continuation(client_call_details, request)
        # The caller gets a failure from `call`; here it is only reported.
        with contextlib.suppress(grpc.RpcError):
            await call
        _report(client_call_details, await call.code(), started)
        return call

    async def intercept_unary_stream(
        self,
        continuation: Callable[[aio.ClientCallDetails, Any], Any],
        client_call_details: aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        return self._on_end(await continuation(client_call_details, request), client_call_details)

    async def intercept_stream_stream(
        self,
        continuation: Callable[[aio.ClientCallDetails, Any], Any],
        client_call_details: aio.ClientCallDetails,
        request_iterator: AsyncIterable[Any] | None,
    ) -> Any:
        return self._on_end(
            await continuation(client_call_details, request_iterator), client_call_details
        )

    def _on_end(self, call: Any, details: aio.ClientCallDetails) -> Any:
        started = time.perf_counter()

        async def report(ended: Any) -> None:
            _report(details, await ended.code(), started)

        def done(ended: Any) -> None:
            task = asyncio.ensure_future(report(ended))
            self._reports.add(task)
            task.add_done_callback(self._reports.discard)

        call.add_done_callback(done)
        return call
