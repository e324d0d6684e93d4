"""S2S framing (docs/s2-compat.md §9): `length(3, big-endian) | flags(1) | body`.

`length` counts the flags byte and the body. Flags: `0x80` terminal, `0x60` compression
(`0x20` zstd, `0x40` gzip), `0x10` reconnect advised, low bits reserved. A terminal body is a
2-byte HTTP status followed by the JSON error body.

A client frame may set only the compression bits: terminal and reconnect-advised frames are
the server's to send, and the reserved bits must be zero. A compressed body is exactly one
gzip member or zstd frame, whole (`s2s.compression`); anything else is `bad_frame`.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator
from typing import Any

import zstandard

from s2s import compression
from s2s.errors import S2Error

FRAME_BYTES_MAX = 2 * 1024 * 1024
"""Largest frame (flags and body) accepted or sent, as in S2's reference server."""
COMPRESSION_THRESHOLD_BYTES = 1024
"""Bodies smaller than this are sent uncompressed even when compression was negotiated."""

_TERMINAL = 0x80
_ZSTD = 0x20
_GZIP = 0x40
_RECONNECT_ADVISED = 0x10
_RESERVED = 0x0F
_CODECS: dict[int, compression.Codec] = {_ZSTD: "zstd", _GZIP: "gzip"}
"""The flags of a compressed client frame: a client sets no other bit."""


def negotiate_compression(accept_encoding: str | None) -> str | None:
    """zstd over gzip over none, from the request's `accept-encoding`."""
    offered = {part.split(";", 1)[0].strip().lower() for part in (accept_encoding or "").split(",")}
    if "zstd" in offered:
        return "zstd"
    if "gzip" in offered:
        return "gzip"
    return None


def encode_frame(body: bytes, compression: str | None) -> bytes:
    flags = 0
    if compression is not None and len(body) >= COMPRESSION_THRESHOLD_BYTES:
        if compression == "zstd":
            body = zstandard.ZstdCompressor().compress(body)
            flags = _ZSTD
        else:
            body = gzip.compress(body)
            flags = _GZIP
    return (1 + len(body)).to_bytes(3, "big") + bytes([flags]) + body


def encode_terminal(status: int, error_body: dict[str, Any]) -> bytes:
    body = status.to_bytes(2, "big") + json.dumps(error_body, separators=(",", ":")).encode()
    return (1 + len(body)).to_bytes(3, "big") + bytes([_TERMINAL]) + body


def terminal_for(error: S2Error) -> bytes:
    return encode_terminal(error.kind.http_status, error.body())


def _client_frame_body(flags: int, body: memoryview) -> bytes:
    """The decompressed body of a frame a client sent; `bad_frame` for flags it may not set."""
    if flags == 0:
        return bytes(body)
    codec = _CODECS.get(flags)
    if codec is None:
        raise S2Error("bad_frame", _flags_problem(flags))
    try:
        return compression.decompress(body, codec, FRAME_BYTES_MAX, concatenated=False)
    except compression.CorruptData as error:
        raise S2Error("bad_frame", f"cannot decompress frame: {error}") from None
    except compression.TooLarge:
        raise S2Error("bad_frame", f"decompressed frame exceeds {FRAME_BYTES_MAX} bytes") from None


def _flags_problem(flags: int) -> str:
    if flags & _TERMINAL:
        return "clients may not send terminal frames"
    if flags & _RECONNECT_ADVISED:
        return "clients may not set the reconnect-advised flag (0x10)"
    if flags & _RESERVED:
        return f"reserved frame flag bits are set (flags 0x{flags:02x})"
    return "invalid compression bits in frame flags"


async def read_frames(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Decompressed bodies of the frames in a byte stream; `bad_frame` on anything malformed.

    Each body is copied out of the chunks once. A frame usually arrives in one chunk (the
    official SDK sends one HTTP/2 DATA frame per S2S frame); the chunks of one that spans
    several are joined once, when it is complete, so a frame cut into many small chunks is
    not copied again with each.
    """
    parts: list[bytes] = []
    buffered = 0
    needed = 4
    async for chunk in chunks:
        parts.append(chunk)
        buffered += len(chunk)
        if buffered < needed:
            continue
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        view = memoryview(data)
        position = 0
        needed = 4
        while len(data) - position >= 4:
            length = int.from_bytes(view[position : position + 3], "big")
            if length < 1 or length > FRAME_BYTES_MAX:
                raise S2Error("bad_frame", f"frame length {length} out of range")
            if len(data) - position < 3 + length:
                needed = 3 + length
                break
            body = view[position + 4 : position + 3 + length]
            yield _client_frame_body(data[position + 3], body)
            position += 3 + length
        rest = data[position:] if position else data
        parts = [rest] if rest else []
        buffered = len(rest)
    if buffered:
        raise S2Error("bad_frame", "request body ended inside a frame")
