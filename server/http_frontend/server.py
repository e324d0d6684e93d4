"""Serves `HttpApp` with Hypercorn: HTTP/1.1 and cleartext HTTP/2 (prior knowledge) on one port.

The caller binds the listening socket (`server.binding`), so the port is known, and a port in
use is reported, before serving starts.
"""

from __future__ import annotations

import asyncio
import logging
import socket

from hypercorn.asyncio import serve
from hypercorn.config import Config

from server.http_frontend import h2_late_data, h2_tuning
from server.http_frontend.app import HttpApp
from server.lake.service import Lake
from server.streamstore import StreamStore

KEEP_ALIVE_TIMEOUT_S = 75.0
"""Idle connections are closed after this long; SDK connections are pooled and reused."""
KEEP_ALIVE_REQUESTS_MAX = 2**62
"""Effectively unlimited. Hypercorn's default (1000) closes an HTTP/2 connection after its
1000th request; the official SDK's request sent just after the GOAWAY then stalled for 5 s
before its retry (bench: every 1000th unary append at 500/s)."""


def start_http_server(
    store: StreamStore,
    sock: socket.socket,
    shutdown: asyncio.Event,
    grace_s: float,
    lake: Lake | None = None,
) -> asyncio.Task[None]:
    """Start serving on the listening socket `sock`, which the server then owns; returns the
    serving task.

    Setting `shutdown` stops accepting; in-flight requests get `grace_s` to finish (open
    sessions end at once when the store drains, see `StreamStore.drain`).
    """
    h2_tuning.install()
    # Any route may answer before its request body has arrived; over HTTP/2 that must not
    # cost the client its connection.
    h2_late_data.install()
    config = Config()
    # Hypercorn wraps the descriptor in its own socket object and closes it on shutdown.
    config.bind = [f"fd://{sock.detach()}"]
    config.keep_alive_timeout = KEEP_ALIVE_TIMEOUT_S
    config.keep_alive_max_requests = KEEP_ALIVE_REQUESTS_MAX
    config.graceful_timeout = grace_s
    config.accesslog = None
    # A Logger (not a path) makes Hypercorn log through our handlers, once.
    config.errorlog = logging.getLogger("hypercorn.error")
    app = HttpApp(store, lake)
    return asyncio.create_task(
        serve(app, config, shutdown_trigger=shutdown.wait)  # type: ignore[arg-type]
    )
