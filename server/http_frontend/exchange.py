"""One HTTP exchange as the handlers see it: the request's parts and ways to answer.

Bodies are read whole only for unary calls (bounded by `REQUEST_BODY_BYTES_MAX`) and are
decompressed per `content-encoding`; S2S sessions read the body as a stream instead.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

from s2s import compression
from s2s.errors import S2Error
from s2s.wire import U64_MAX
from server.http_frontend.json_body import parse_json

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

REQUEST_BODY_BYTES_MAX = 8 * 1024 * 1024
"""Largest unary request body, before and after decompression: a 1 MiB batch in JSON base64
with per-record overhead fits well inside."""
_CODECS: dict[str, compression.Codec] = {"gzip": "gzip", "zstd": "zstd"}


class Exchange:
    """A request (method, lower-cased headers, query, body) and its response, over ASGI."""

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        self.method: str = scope["method"]
        self.headers: dict[str, str] = {}
        for name, value in scope["headers"]:
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            # Repeated headers are joined as HTTP allows; only `accept` lists matter here.
            self.headers[key] = f"{self.headers[key]},{text}" if key in self.headers else text
        self.query_string: bytes = scope.get("query_string", b"")
        self.response_started = False

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def query(self) -> dict[str, str]:
        try:
            pairs = parse_qsl(
                self.query_string.decode("utf-8"), keep_blank_values=True, strict_parsing=False
            )
        except UnicodeDecodeError:
            raise S2Error("bad_query", "query string is not valid UTF-8") from None
        return dict(pairs)

    async def body_chunks(self) -> AsyncIterator[bytes]:
        """The raw request body as it arrives (for S2S sessions)."""
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                return
            chunk: bytes = message.get("body", b"")
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                return

    async def body(self) -> bytes:
        """The whole request body, decompressed per `content-encoding`."""
        parts: list[bytes] = []
        size = 0
        async for chunk in self.body_chunks():
            size += len(chunk)
            if size > REQUEST_BODY_BYTES_MAX:
                raise S2Error("invalid", f"request body exceeds {REQUEST_BODY_BYTES_MAX} bytes")
            parts.append(chunk)
        return decompress(b"".join(parts), self.header("content-encoding"))

    async def json_body(self, allow_empty: bool = False, *, checked: bool = True) -> Any:
        """The body as JSON (see `json_body.parse_json` for `checked`); `None` for an empty
        body when allowed."""
        data = await self.body()
        if not data.strip() and allow_empty:
            return None
        content_type = media_type(self.header("content-type"))
        if content_type != "application/json" and not (
            content_type.startswith("application/") and content_type.endswith("+json")
        ):
            raise S2Error("bad_json", "expected content-type: application/json")
        return parse_json(data, checked=checked)

    async def start(self, status: int, headers: list[tuple[str, str]]) -> None:
        self.response_started = True
        await self.send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
            }
        )

    async def write(self, data: bytes, more_body: bool = True) -> None:
        await self.send({"type": "http.response.body", "body": data, "more_body": more_body})

    async def respond(
        self,
        status: int,
        body: bytes = b"",
        content_type: str | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        all_headers = list(headers or [])
        if content_type is not None:
            all_headers.append(("content-type", content_type))
        all_headers.append(("content-length", str(len(body))))
        await self.start(status, all_headers)
        await self.write(body, more_body=False)

    async def respond_json(
        self, status: int, value: Any, headers: list[tuple[str, str]] | None = None
    ) -> None:
        body = json.dumps(value, separators=(",", ":")).encode()
        await self.respond(status, body, "application/json", headers)


def media_type(value: str | None) -> str:
    """The media type of a content-type value, lower-cased, without parameters."""
    if not value:
        return ""
    return value.split(";", 1)[0].strip().lower()


def first_accept(value: str | None) -> str:
    """Only the first type of `accept` selects a response encoding (docs/s2-compat.md §6.1)."""
    if not value:
        return ""
    return media_type(value.split(",", 1)[0])


def parse_uint(text: str, maximum: int = U64_MAX) -> int | None:
    """A plain decimal integer from 0 to `maximum` (no sign, space, `_` or non-ASCII digit),
    or None. Its length is checked first: `int` refuses more than 4,300 digits by raising."""
    if not (text.isascii() and text.isdigit()) or len(text) > len(str(maximum)):
        return None
    value = int(text)
    return value if value <= maximum else None


def decompress(data: bytes, encoding: str | None) -> bytes:
    """The body decoded per `content-encoding`: whole (`s2s.compression`), concatenated
    members or frames allowed as in RFC 1952 and RFC 8878, at most `REQUEST_BODY_BYTES_MAX`."""
    if not encoding or encoding.strip().lower() == "identity":
        return data
    codec = _CODECS.get(encoding.strip().lower())
    if codec is None:
        raise S2Error("bad_header", f"unsupported content-encoding {encoding!r}")
    try:
        return compression.decompress(data, codec, REQUEST_BODY_BYTES_MAX, concatenated=True)
    except compression.CorruptData as error:
        raise S2Error("bad_header", f"cannot decode {codec} body: {error}") from None
    except compression.TooLarge:
        raise S2Error("invalid", f"request body exceeds {REQUEST_BODY_BYTES_MAX} bytes") from None
