"""`s2s.compression`: whole gzip and zstd data only, nothing after it, never past the limit."""

from __future__ import annotations

import contextlib
import gzip
import tracemalloc
import zlib

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from s2s import compression
from s2s.compression import CONCATENATED_PARTS_MAX, Codec, CorruptData, TooLarge, decompress

DATA = b"".join(b"record %05d of the batch, " % i for i in range(2000))


def _zstd_streamed(data: bytes, flush_every: int | None = None, **params: int) -> bytes:
    """A zstd frame that does not declare its size, as streaming compressors write it;
    `flush_every` ends a block every that many bytes of input."""
    compressor = zstandard.ZstdCompressor(
        compression_params=zstandard.ZstdCompressionParameters.from_level(3, **params)
    ).compressobj()
    step = flush_every or len(data) or 1
    parts = []
    for start in range(0, len(data), step):
        parts.append(compressor.compress(data[start : start + step]))
        if flush_every:
            parts.append(compressor.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK))
    parts.append(compressor.flush())
    return b"".join(parts)


ENCODINGS: dict[str, tuple[Codec, bytes]] = {
    "gzip": ("gzip", gzip.compress(DATA)),
    "gzip-level-1": ("gzip", gzip.compress(DATA, compresslevel=1)),
    "zstd": ("zstd", zstandard.ZstdCompressor().compress(DATA)),
    "zstd-checksum": ("zstd", zstandard.ZstdCompressor(write_checksum=True).compress(DATA)),
    "zstd-streamed": ("zstd", _zstd_streamed(DATA)),
    "zstd-streamed-flushed": ("zstd", _zstd_streamed(DATA, flush_every=1000)),
}


@pytest.fixture(params=list(ENCODINGS))
def encoded(request: pytest.FixtureRequest) -> tuple[Codec, bytes]:
    return ENCODINGS[request.param]


def _decompress_both_ways(codec: Codec, data: bytes, limit: int = len(DATA)) -> bytes:
    single = decompress(data, codec, limit, concatenated=False)
    assert decompress(memoryview(data), codec, limit, concatenated=True) == single
    return single


def test_round_trip(encoded: tuple[Codec, bytes]) -> None:
    codec, data = encoded
    assert _decompress_both_ways(codec, data) == DATA


def test_every_cut_point_is_refused(encoded: tuple[Codec, bytes]) -> None:
    codec, data = encoded
    for cut in range(len(data)):
        for concatenated in (False, True):
            with pytest.raises(CorruptData):
                decompress(data[:cut], codec, len(DATA), concatenated=concatenated)


@pytest.mark.parametrize("trailer", [b"\x00", b"garbage", None])
def test_bytes_after_one_part_are_refused_unless_concatenated(
    encoded: tuple[Codec, bytes], trailer: bytes | None
) -> None:
    codec, data = encoded
    after = data if trailer is None else trailer
    with pytest.raises(CorruptData, match=f"{len(after)} bytes follow the"):
        decompress(data + after, codec, 2 * len(DATA), concatenated=False)
    if trailer is None:  # a second whole part
        assert decompress(data + after, codec, 2 * len(DATA), concatenated=True) == DATA * 2
    else:
        with pytest.raises(CorruptData):
            decompress(data + after, codec, 2 * len(DATA), concatenated=True)


def test_too_many_concatenated_parts_are_refused(encoded: tuple[Codec, bytes]) -> None:
    codec, data = encoded
    many = data * CONCATENATED_PARTS_MAX
    limit = len(DATA) * (CONCATENATED_PARTS_MAX + 1)
    assert decompress(many, codec, limit, concatenated=True) == DATA * CONCATENATED_PARTS_MAX
    with pytest.raises(CorruptData, match=f"more than {CONCATENATED_PARTS_MAX}"):
        decompress(many + data, codec, limit, concatenated=True)


def test_the_limit_is_inclusive(encoded: tuple[Codec, bytes]) -> None:
    codec, data = encoded
    assert _decompress_both_ways(codec, data, limit=len(DATA)) == DATA
    for concatenated in (False, True):
        with pytest.raises(TooLarge) as raised:
            decompress(data, codec, len(DATA) - 1, concatenated=concatenated)
        assert raised.value.limit_bytes == len(DATA) - 1
    # The limit is for all parts together.
    with pytest.raises(TooLarge):
        decompress(data + data, codec, 2 * len(DATA) - 1, concatenated=True)


def _gzip_bomb(size: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(1024 * 1024)
    return b"".join(
        [*(compressor.compress(zeros) for _ in range(size // len(zeros))), compressor.flush()]
    )


def _zstd_bomb(size: int) -> bytes:
    return _zstd_streamed(bytes(size))


def _zstd_declared_bomb(size: int) -> bytes:
    return zstandard.ZstdCompressor().compress(bytes(size))


def _zstd_flushed_bomb(size: int) -> bytes:
    """More blocks than the headers are read for: measured before it is decoded."""
    return _zstd_streamed(bytes(size), flush_every=16 * 1024)


@pytest.mark.parametrize(
    ("make_bomb", "codec"),
    [
        (_gzip_bomb, "gzip"),
        (_zstd_bomb, "zstd"),
        (_zstd_declared_bomb, "zstd"),
        (_zstd_flushed_bomb, "zstd"),
    ],
)
def test_bombs_are_refused_holding_little_more_than_the_limit(
    make_bomb: object, codec: Codec
) -> None:
    assert callable(make_bomb)
    bomb: bytes = make_bomb(256 * 1024 * 1024)
    limit = 4 * 1024 * 1024
    tracemalloc.start()
    try:
        with pytest.raises(TooLarge):
            decompress(bomb, codec, limit, concatenated=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1.5 * limit + len(bomb)


def test_a_frame_holding_more_than_it_declares_is_refused() -> None:
    frame = bytearray(zstandard.ZstdCompressor().compress(DATA))
    # Single-segment descriptor with a 2-byte content size field (value - 256): declare 1000.
    assert frame[4] >> 6 == 1
    frame[5:7] = (1000 - 256).to_bytes(2, "little")
    for concatenated in (False, True):
        with pytest.raises(CorruptData):
            decompress(bytes(frame), "zstd", len(DATA), concatenated=concatenated)


def test_a_zstd_window_over_the_maximum_is_refused() -> None:
    wide = _zstd_streamed(DATA, window_log=24)
    with pytest.raises(CorruptData, match="corrupt zstd"):
        decompress(wide, "zstd", len(DATA), concatenated=False)
    assert decompress(_zstd_streamed(DATA, window_log=23), "zstd", len(DATA), concatenated=False)


def test_empty_frames_and_skippable_frames() -> None:
    empty = zstandard.ZstdCompressor().compress(b"")
    assert decompress(empty, "zstd", 0, concatenated=False) == b""
    with pytest.raises(CorruptData, match="bytes follow"):
        decompress(empty + b"x", "zstd", 10, concatenated=False)
    skippable = b"\x50\x2a\x4d\x18" + (3).to_bytes(4, "little") + b"abc"
    assert decompress(skippable + empty, "zstd", 0, concatenated=True) == b""
    assert decompress(gzip.compress(b""), "gzip", 0, concatenated=False) == b""


@pytest.mark.parametrize("flush_every", [None, 20, 5000, 50_000])
def test_output_bound_is_an_upper_bound(flush_every: int | None) -> None:
    frame = _zstd_streamed(DATA, flush_every=flush_every)
    # Each compressed block counts as the most it may hold, 128 KiB.
    bound = compression._output_bound(frame, 1 << 30)
    if flush_every == 20:  # more blocks than are read
        assert bound is None
    else:
        assert bound is not None and bound >= len(DATA)
    assert compression._output_bound(frame, len(DATA) // 2) is None


@settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from(list(ENCODINGS)),
    position=st.integers(min_value=0),
    replacement=st.binary(min_size=1, max_size=4),
    concatenated=st.booleans(),
)
def test_damaged_data_is_refused_or_decoded_never_anything_else(
    name: str, position: int, replacement: bytes, concatenated: bool
) -> None:
    codec, data = ENCODINGS[name]
    position %= len(data)
    damaged = data[:position] + replacement + data[position + len(replacement) :]
    try:
        out = decompress(damaged, codec, len(DATA), concatenated=concatenated)
    except (CorruptData, TooLarge):
        return
    # Damage a checksum does not cover can decode; it is still whole and bounded.
    assert len(out) <= len(DATA)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=64), codec=st.sampled_from(["gzip", "zstd"]))
def test_arbitrary_bytes_are_refused_or_decoded(data: bytes, codec: Codec) -> None:
    with contextlib.suppress(CorruptData, TooLarge):
        decompress(data, codec, 1024, concatenated=True)
