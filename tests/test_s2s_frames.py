"""`read_frames`: S2S frames are found in a request body however its chunks cut them."""

from __future__ import annotations

import asyncio
import gzip
import zlib
from collections.abc import AsyncIterator

import pytest
import zstandard

from s2s.errors import S2Error
from server.http_frontend.s2s_frames import FRAME_BYTES_MAX, read_frames

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


def _bad_frame_message(data: bytes) -> str:
    with pytest.raises(S2Error) as raised:
        _read(data, 1000)
    assert raised.value.code == "bad_frame"
    return raised.value.message


@pytest.mark.parametrize(
    ("flags", "problem"),
    [
        (0x80, "terminal"),
        (0xA0, "terminal"),
        (0xFF, "terminal"),
        (0x10, "reconnect-advised"),
        (0x30, "reconnect-advised"),
        *((bit, "reserved frame flag bits") for bit in (0x01, 0x02, 0x04, 0x08, 0x0F)),
        (0x21, "reserved frame flag bits are set (flags 0x21)"),
        (0x48, "reserved frame flag bits are set (flags 0x48)"),
        (0x60, "compression bits"),
    ],
)
def test_flags_a_client_may_not_set_are_bad_frames(flags: int, problem: str) -> None:
    assert problem in _bad_frame_message(_frame(zstandard.compress(b"x" * 3000), flags))


@pytest.mark.parametrize("flags", [0x20, 0x40])
def test_every_cut_of_a_compressed_body_is_a_bad_frame(flags: int) -> None:
    whole = zstandard.compress(STREAM) if flags == 0x20 else gzip.compress(STREAM)
    assert _read(_frame(whole, flags), 1000) == [STREAM]
    for cut in range(len(whole)):
        assert "cannot decompress frame" in _bad_frame_message(_frame(whole[:cut], flags))


@pytest.mark.parametrize("flags", [0x20, 0x40])
def test_bytes_after_a_compressed_body_are_a_bad_frame(flags: int) -> None:
    whole = zstandard.compress(b"z" * 3000) if flags == 0x20 else gzip.compress(b"g" * 3000)
    for after in (b"\x00", whole):
        assert f"{len(after)} bytes follow" in _bad_frame_message(_frame(whole + after, flags))


@pytest.mark.parametrize("flags", [0x20, 0x40])
def test_a_body_decompressing_past_the_frame_limit_is_a_bad_frame(flags: int) -> None:
    at_limit = bytes(FRAME_BYTES_MAX)
    compress = zstandard.compress if flags == 0x20 else gzip.compress
    assert _read(_frame(compress(at_limit), flags), 1 << 20) == [at_limit]
    message = _bad_frame_message(_frame(compress(at_limit + b"x"), flags))
    assert f"exceeds {FRAME_BYTES_MAX} bytes" in message
