"""Serves `HttpApp` with Hypercorn: HTTP/1.1 and HTTP/2 on one port, in clear text (HTTP/2 by
prior knowledge) or over TLS only (HTTP/2 chosen by ALPN), with CORS when origins are allowed.

The caller binds the listening socket (`server.binding`), so the port is known, and a port in
use is reported, before serving starts. With TLS, Hypercorn serves the `fd://` socket as a
secure one: a client that does not speak TLS fails its handshake and is never served.
"""

from __future__ import annotations

import asyncio
import logging
import socket

from hypercorn.asyncio import serve
from hypercorn.config import Config

from server.http_frontend import h2_late_data, h2_tuning
from server.http_frontend.app import HttpApp
from server.http_frontend.cors import Asgi, Cors
from server.lake.service import Lake
from server.streamstore import StreamStore
from server.tls import ServerTls

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
    *,
    tls: ServerTls | None = None,
    cors_origins: frozenset[str] | None = None,
    open_metrics: bool = False,
) -> asyncio.Task[None]:
    """Start serving on the listening socket `sock`, which the server then owns; returns the
    serving task.

    Setting `shutdown` stops accepting; in-flight requests get `grace_s` to finish (open
    sessions end at once when the store drains, see `StreamStore.drain`). With `tls`, only TLS;
    with `cors_origins`, CORS for browsers from those origins (`server.http_frontend.cors`);
    with `open_metrics`, `/metrics` needs no token from loopback addresses.
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
    if tls is not None:
        # Files checked by server.tls just before; Hypercorn loads them into its SSL context.
        config.certfile = str(tls.cert_path)
        config.keyfile = str(tls.key_path)
        # The official SDKs speak HTTP/2 only and require it by ALPN over TLS.
        config.alpn_protocols = ["h2", "http/1.1"]
    app: Asgi = HttpApp(store, lake, open_metrics=open_metrics)
    if cors_origins:
        app = Cors(app, cors_origins)
    return asyncio.create_task(
        serve(app, config, shutdown_trigger=shutdown.wait)  # type: ignore[arg-type]
    )
