"""The S2S frame decoder under generated input: frames it encodes come back whole however the
byte stream is cut, and any other bytes end in `bad_frame`, never in another exception.

How many inputs: `tests/fuzz/budget.py`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from hypothesis import given
from hypothesis import strategies as st

from s2s.errors import S2Error
from server.http_frontend.s2s_frames import encode_frame, read_frames
from tests.fuzz.budget import fuzzed


async def _chunks(data: bytes, cuts: list[int]) -> AsyncIterator[bytes]:
    start = 0
    for cut in sorted(set(cuts)):
        if start < cut < len(data):
            yield data[start:cut]
            start = cut
    yield data[start:]


def _decode(data: bytes, cuts: list[int]) -> list[bytes] | S2Error:
    async def collect() -> list[bytes]:
        return [bytes(body) async for body in read_frames(_chunks(data, cuts))]

    try:
        return asyncio.run(collect())
    except S2Error as error:
        assert error.code == "bad_frame", error
        return error


# Compressible bodies (repeated text) cross the compression threshold; random ones do not shrink.
_bodies = st.one_of(
    st.binary(min_size=1, max_size=300),
    st.tuples(st.binary(min_size=1, max_size=8), st.integers(1, 800)).map(lambda p: p[0] * p[1]),
)
_cuts = st.lists(st.integers(min_value=0, max_value=20_000), max_size=8)


@fuzzed()
@given(
    frames=st.lists(
        st.tuples(_bodies, st.sampled_from([None, "gzip", "zstd"])), min_size=1, max_size=4
    ),
    cuts=_cuts,
)
def test_encoded_frames_come_back_whole_however_they_are_cut(
    frames: list[tuple[bytes, str | None]], cuts: list[int]
) -> None:
    data = b"".join(encode_frame(body, compression) for body, compression in frames)
    assert _decode(data, cuts) == [body for body, _ in frames]


@fuzzed()
@given(data=st.binary(max_size=400), cuts=_cuts)
def test_arbitrary_bytes_decode_or_fail_with_bad_frame(data: bytes, cuts: list[int]) -> None:
    _decode(data, cuts)


_compressible = st.tuples(st.binary(min_size=1, max_size=8), st.integers(1024, 4000)).map(
    lambda p: p[0] * p[1]
)


def _frame(flags: int, body: bytes) -> bytes:
    return (1 + len(body)).to_bytes(3, "big") + bytes([flags]) + body


@fuzzed()
@given(
    body=_compressible,
    compression=st.sampled_from(["gzip", "zstd"]),
    keep=st.floats(min_value=0, max_value=1, exclude_max=True),
    trailing=st.binary(min_size=1, max_size=16),
    cuts=_cuts,
)
def test_a_compressed_body_cut_short_or_with_bytes_after_it_is_refused(
    body: bytes, compression: str, keep: float, trailing: bytes, cuts: list[int]
) -> None:
    """Issue 12 item 3: a prefix of a compressed stream decoded to a prefix of the records,
    which were appended and acknowledged as if whole."""
    encoded = encode_frame(body, compression)
    flags, packed = encoded[3], encoded[4:]
    assert flags & 0x60, "the body should have been compressed"
    cut = packed[: max(1, int(len(packed) * keep))]
    assert isinstance(_decode(_frame(flags, cut), cuts), S2Error)
    assert isinstance(_decode(_frame(flags, packed + trailing), cuts), S2Error)
