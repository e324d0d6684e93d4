"""`read_frames`: S2S frames are found in a request body however its chunks cut them."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator

import pytest
import zstandard

from s2s.errors import S2Error
from server.http_frontend.s2s_frames import read_frames

BODIES = [b"a" * 70_000, b"", b"b" * 5, b"c" * 300]


def _frame(body: bytes, flags: int = 0) -> bytes:
    return (1 + len(body)).to_bytes(3, "big") + bytes([flags]) + body


STREAM = b"".join(_frame(body) for body in BODIES)


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def _read(data: bytes, size: int) -> list[bytes]:
    async def collect() -> list[bytes]:
        return [frame async for frame in read_frames(_chunks(data, size))]

    return asyncio.run(collect())


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7, 1000, 70_003, 70_004, 70_010, len(STREAM)])
def test_frames_are_found_whatever_the_chunk_size(size: int) -> None:
    assert _read(STREAM, size) == BODIES


def test_compressed_frames_are_decompressed() -> None:
    gzipped = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
    gzip_body = gzipped.compress(b"g" * 3000) + gzipped.flush()
    data = _frame(zstandard.compress(b"z" * 3000), 0x20) + _frame(gzip_body, 0x40)
    assert _read(data, 100) == [b"z" * 3000, b"g" * 3000]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (STREAM[:-1], "ended inside a frame"),
        (b"\x00\x00\x00\x00", "out of range"),
        (_frame(b"x", 0x80), "terminal"),
    ],
)
def test_malformed_streams_are_bad_frames(data: bytes, message: str) -> None:
    with pytest.raises(S2Error) as raised:
        _read(data, 3)
    assert raised.value.code == "bad_frame"
    assert message in raised.value.message
