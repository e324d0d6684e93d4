"""CORS for browser clients (S2's TypeScript SDK runs in browsers): an ASGI wrapper around the
HTTP app, applied only when `--cors-origins` names some origins.

A request whose `Origin` is allowed gets CORS headers; any other request (no `Origin`, as from
the SDKs outside a browser, or an origin not allowed) passes through untouched, at no cost.
A preflight (`OPTIONS` with `Access-Control-Request-Method`) from an allowed origin is answered
here, 204, and never reaches the app: browsers send it without the `authorization` header, so
it must not be asked for a token.

No `access-control-allow-credentials`: the API authenticates with a bearer token in a header,
never with cookies, so `*` is a valid answer for "any origin".
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from server.http_frontend.exchange import Message, Receive, Scope, Send

Asgi = Callable[[Scope, Receive, Send], Awaitable[None]]

ANY_ORIGIN = "*"
DEFAULT_PORTS = {"http": 80, "https": 443}

ALLOWED_METHODS = b"GET, POST, PUT, PATCH, DELETE"
"""Every method a route of the API takes (server/http_frontend/app.py)."""
ALLOWED_HEADERS = frozenset(
    {
        "accept",
        "accept-encoding",
        "authorization",
        "content-encoding",
        "content-type",
        "last-event-id",
        "s2-basin",
        "s2-encryption-key",
        "s2-format",
        "s2-request-token",
        "s2-stream-config",
    }
)
"""The request headers of the API that a browser would ask to send: those S2's TypeScript SDK
sets (its fetch transport: `authorization`, `accept`, `content-type`, `s2-basin`, `s2-format`,
`s2-request-token`, `s2-encryption-key`), and the others this server reads."""
EXPOSED_HEADERS = b"s2-provision-result"
"""Response headers a browser script may read beyond the safelisted ones (`content-type`,
`content-length` ...): the SDK's `ensure_basin`/`ensure_stream` read this one."""
PREFLIGHT_MAX_AGE_S = 7200
"""How long a browser may cache a preflight's answer: Chromium's cap (Firefox allows a day)."""


def parse_origins(text: str) -> frozenset[str]:
    """`--cors-origins`: origins separated by commas, each `scheme://host[:port]` as a browser
    sends it in `Origin`, or `*` alone for any origin; ValueError says what is wrong."""
    # Browsers send the scheme and host in lower case.
    given = {part.strip().lower() for part in text.split(",")}
    if given == {ANY_ORIGIN}:
        return frozenset(given)
    if ANY_ORIGIN in given:
        raise ValueError("'*' allows every origin: give it alone")
    return frozenset(_origin(origin) for origin in given)


def _origin(text: str) -> str:
    """`text` as a browser serializes the origin: without the scheme's default port, which
    a browser never sends, so that `https://a.example:443` still matches."""
    try:
        parts = urlsplit(text)
        port = parts.port  # raises ValueError if out of range or not a number
    except ValueError:
        parts, port = None, None
    if (
        parts is None
        or not (parts.scheme and parts.hostname)
        or "@" in parts.netloc
        or parts.netloc.endswith(":")
        or text != f"{parts.scheme}://{parts.netloc}"
    ):
        raise ValueError(
            f"{text!r} is not an origin: give scheme://host[:port] such as "
            "https://app.example.com or http://localhost:3000, with no path"
        )
    if DEFAULT_PORTS.get(parts.scheme) == port:
        return text.removesuffix(f":{port}")
    return text


class Cors:
    """The ASGI app `app`, answering CORS preflights and adding CORS headers to the responses
    of requests from `origins` (or any origin, with `*`)."""

    def __init__(self, app: Asgi, origins: frozenset[str]) -> None:
        self._app = app
        self._any_origin = ANY_ORIGIN in origins
        self._origins = frozenset(origin.encode() for origin in origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        origin = _header(headers, b"origin")
        if origin is None or not (self._any_origin or origin in self._origins):
            await self._app(scope, receive, send)
            return
        allow_origin = b"*" if self._any_origin else origin
        if scope["method"] == "OPTIONS" and _header(headers, b"access-control-request-method"):
            await _answer_preflight(headers, allow_origin, send)
            return
        cors_headers = [
            (b"access-control-allow-origin", allow_origin),
            (b"access-control-expose-headers", EXPOSED_HEADERS),
            (b"vary", b"origin"),
        ]

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *cors_headers]
            await send(message)

        await self._app(scope, receive, send_with_cors)


async def _answer_preflight(
    headers: list[tuple[bytes, bytes]], allow_origin: bytes, send: Send
) -> None:
    """204 with what the browser asked about; a requested header not in ALLOWED_HEADERS is left
    out of the answer, so the browser refuses the request rather than the server."""
    requested = b",".join(
        value for name, value in headers if name == b"access-control-request-headers"
    )
    names = [name.strip().lower() for name in requested.decode("latin-1").split(",")]
    allowed = [name for name in names if name in ALLOWED_HEADERS]
    response_headers = [
        (b"access-control-allow-origin", allow_origin),
        (b"access-control-allow-methods", ALLOWED_METHODS),
        (b"access-control-max-age", str(PREFLIGHT_MAX_AGE_S).encode()),
        (b"vary", b"origin, access-control-request-headers"),
    ]
    if allowed:
        response_headers.append((b"access-control-allow-headers", ", ".join(allowed).encode()))
    await send({"type": "http.response.start", "status": 204, "headers": response_headers})
    await send({"type": "http.response.body", "body": b""})


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of header `name` (ASGI names are lower case)."""
    for key, value in headers:
        if key == name:
            return value
    return None
