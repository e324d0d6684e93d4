"""Decompression of untrusted gzip and zstd data: whole, bounded, and nothing after it.

Every compressed input the server accepts (HTTP request bodies, S2S frame bodies, lake ingest
bodies) is decoded here, so one set of rules holds everywhere:

- The input must be complete: a gzip member that ends before its trailer or a zstd frame cut
  short is refused, never taken for the data decoded so far (issue 12 item 3: a truncated
  frame used to be appended and acknowledged as if it were whole).
- Nothing may follow the compressed data unless the caller accepts concatenated members or
  frames, as RFC 1952 and RFC 8878 allow; then each must be whole, and at most
  `CONCATENATED_PARTS_MAX` of them.
- The output is bounded by the caller's limit and is refused before more than that is held:
  gzip is inflated a chunk at a time with `max_length`; a zstd frame that declares its size
  is checked before decoding (libzstd itself refuses to produce more than a frame declares);
  for one that does not, its block headers bound its size, and when they cannot it is first
  decoded by a bounded reader, then decoded again to find where it ends.

Callers map `CorruptData` and `TooLarge` to their own error codes.
"""

from __future__ import annotations

import contextlib
import zlib
from typing import Literal

import zstandard

Codec = Literal["gzip", "zstd"]

CONCATENATED_PARTS_MAX = 64
"""Most gzip members or zstd frames in one input. Each part after the first costs a copy of
the rest of the input (zlib and zstandard hand back what follows a part as a new `bytes`), so
this bounds that copying to 64 times the input (at most ~0.6 GiB of memcpy, ~60 ms, for a
10 MiB ingest body), while `cat a.gz b.gz` and parallel compressors stay well inside it."""

ZSTD_WINDOW_BYTES_MAX = 8 * 1024 * 1024
"""Largest zstd window accepted: libzstd allocates the window for a frame that does not
declare its size, up to 128 MiB by default. 8 MiB covers every level up to 19 (`--ultra` and
`--long` need more), and the inputs here decompress to at most 10 MiB anyway."""

_GZIP_WBITS = 16 + zlib.MAX_WBITS
_GZIP_CHUNK_BYTES = 1024 * 1024
_MEASURE_CHUNK_BYTES = 256 * 1024
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_DICTIONARY_ID_BYTES = (0, 1, 2, 4)
_RLE_BLOCK = 1
_COMPRESSED_BLOCK = 2
_RESERVED_BLOCK = 3
_ZSTD_BLOCK_BYTES_MAX = 128 * 1024
_BOUND_BLOCKS_MAX = 1024
"""Block headers read for `_output_bound` (~0.3 ms at most); a frame of more blocks, as a
streaming compressor that flushes often writes, is measured first instead."""


class CorruptData(Exception):
    """The input is not complete, well-formed compressed data (corrupt, truncated, followed
    by other bytes, or too many parts); the message says which."""


class TooLarge(Exception):
    """The decompressed data would exceed `limit_bytes`."""

    def __init__(self, limit_bytes: int) -> None:
        super().__init__(f"decompressed data exceeds {limit_bytes} bytes")
        self.limit_bytes = limit_bytes


def decompress(
    data: bytes | memoryview, codec: Codec, limit_bytes: int, *, concatenated: bool
) -> bytes:
    """The whole decompressed `data`, at most `limit_bytes` long.

    `concatenated`: several gzip members or zstd frames may follow each other (their outputs
    are joined); otherwise exactly one, and any byte after it is refused.
    """
    if codec == "gzip":
        parts = _gunzip(data, limit_bytes, concatenated)
    else:
        parts = _unzstd(data, limit_bytes, concatenated)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _gunzip(data: bytes | memoryview, limit_bytes: int, concatenated: bool) -> list[bytes]:
    parts: list[bytes] = []
    produced = 0
    rest: bytes | memoryview = data
    try:
        while True:
            member = zlib.decompressobj(_GZIP_WBITS)
            out = _inflate_member(member, rest, limit_bytes - produced, limit_bytes)
            produced += len(out)
            parts.append(out)
            rest = member.unused_data
            if not rest:
                return parts
            _check_next_part(len(parts), len(rest), "gzip member", concatenated)
    except zlib.error as error:
        raise CorruptData(f"corrupt gzip data ({error})") from None


def _inflate_member(
    member: zlib._Decompress, data: bytes | memoryview, budget_bytes: int, limit_bytes: int
) -> bytes:
    """One whole gzip member from the start of `data`, at most `budget_bytes` of output.

    Inflated `_GZIP_CHUNK_BYTES` at a time: zlib assembles one call's output in blocks and
    joins them, holding it twice, so a bomb inflated in one call would hold twice the limit
    before being refused. Most bodies take one chunk and are returned without a copy.
    """
    chunks: list[bytes] = []
    produced = 0
    while True:
        wanted = min(budget_bytes + 1 - produced, _GZIP_CHUNK_BYTES)
        chunk = member.decompress(data, wanted)
        produced += len(chunk)
        if produced > budget_bytes:
            raise TooLarge(limit_bytes)
        chunks.append(chunk)
        if member.eof:
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if len(chunk) < wanted:  # zlib stopped for want of input, not of room
            raise CorruptData("gzip data is truncated")
        data = member.unconsumed_tail


def _unzstd(data: bytes | memoryview, limit_bytes: int, concatenated: bool) -> list[bytes]:
    decompressor = zstandard.ZstdDecompressor(max_window_size=ZSTD_WINDOW_BYTES_MAX)
    parts: list[bytes] = []
    produced = 0
    rest: bytes | memoryview = data
    try:
        while True:
            budget = limit_bytes - produced
            try:
                declared = zstandard.frame_content_size(rest)
            except zstandard.ZstdError:
                raise CorruptData("zstd frame header is missing, cut short or invalid") from None
            if declared > budget:
                raise TooLarge(limit_bytes)
            if declared > 0 and not concatenated:
                # One call into a buffer of the declared size, refusing any byte after the
                # frame: ~10% faster than the streaming object, which copies its output out
                # of its own buffer. (It returns b"" for a declared size of 0 unchecked.)
                with contextlib.suppress(zstandard.ZstdError):
                    return [decompressor.decompress(rest, allow_extra_data=False)]
                # The streaming object below fails too, and says precisely why.
            if declared < 0 and _output_bound(rest, budget) is None:
                _measure_frame(decompressor, rest, budget, limit_bytes)
            frame = decompressor.decompressobj()
            out = frame.decompress(rest)
            if not frame.eof:
                raise CorruptData("zstd data is truncated")
            produced += len(out)
            parts.append(out)
            rest = frame.unused_data
            if not rest:
                return parts
            _check_next_part(len(parts), len(rest), "zstd frame", concatenated)
    except zstandard.ZstdError as error:
        raise CorruptData(f"corrupt zstd data ({error})") from None


def _output_bound(frame: bytes | memoryview, budget_bytes: int) -> int | None:
    """An upper bound of the size of a zstd frame that does not declare it, when its block
    headers show it is at most `budget_bytes` (RFC 8878: a raw or RLE block holds its stated
    size, a compressed one at most 128 KiB); None when they do not, or cannot be read cheaply.

    Only an optimization: such a frame is then decoded once instead of being measured first.
    libzstd still decides whether the frame is whole and well formed.
    """
    if len(frame) < 6 or frame[:4] != _ZSTD_MAGIC:
        return None
    # Magic, descriptor, window descriptor (a frame without a size is not single-segment),
    # dictionary id; there is no content size field.
    position = 6 + _DICTIONARY_ID_BYTES[frame[4] & 3]
    bound = 0
    for _ in range(_BOUND_BLOCKS_MAX):
        header = int.from_bytes(frame[position : position + 3], "little")
        block_type = (header >> 1) & 3
        size = header >> 3
        bound += _ZSTD_BLOCK_BYTES_MAX if block_type == _COMPRESSED_BLOCK else size
        position += 3 + (1 if block_type == _RLE_BLOCK else size)
        if bound > budget_bytes or position > len(frame) or block_type == _RESERVED_BLOCK:
            return None
        if header & 1:  # the last block
            return bound
    return None


def _measure_frame(
    decompressor: zstandard.ZstdDecompressor,
    data: bytes | memoryview,
    budget_bytes: int,
    limit_bytes: int,
) -> None:
    """Decode the first frame of `data` holding at most `_MEASURE_CHUNK_BYTES` of it at a
    time; `TooLarge` past `budget_bytes`."""
    size = 0
    with decompressor.stream_reader(data, read_across_frames=False) as reader:
        while True:
            chunk = reader.read(_MEASURE_CHUNK_BYTES)
            size += len(chunk)
            if size > budget_bytes:
                raise TooLarge(limit_bytes)
            # A short read is the end of the frame (or of the input): reading on would decode
            # what follows the frame as another one.
            if len(chunk) < _MEASURE_CHUNK_BYTES:
                return


def _check_next_part(parts: int, rest_bytes: int, part: str, concatenated: bool) -> None:
    if not concatenated:
        raise CorruptData(f"{rest_bytes} bytes follow the {part}")
    if parts >= CONCATENATED_PARTS_MAX:
        raise CorruptData(f"more than {CONCATENATED_PARTS_MAX} concatenated {part}s")
