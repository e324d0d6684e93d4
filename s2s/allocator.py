"""glibc allocator settings for processes that move ~1 MiB batches: `s2s serve` applies them at
startup, and so do the load generators (`s2s bench`, `bench/`), which move the same buffers.

An append passes through several buffers of about 1 MiB: the request frame, the decoded
records, the stored batch and its payload. glibc gives every allocation above a threshold
(128 KiB, rising as such buffers are freed) its own mmap, and returns freed memory at the top
of its heap to the kernel once more than 128 KiB is free there. Either way each new 1 MiB
buffer is page-faulted in and zeroed by the kernel again. Encoding one 1000 x 1 KiB batch
took 2.3-2.8 ms like that and 1.2 ms with the settings below (a loop over `encode_batch`).

The cost is memory: up to `TRIM_THRESHOLD_BYTES` of freed heap per arena stays with the
process for reuse instead of going back to the kernel at once. `malloc_usage` tells that
kept memory apart from memory in use (the server exports both on `/metrics`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from dataclasses import dataclass

MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
"""Allocations up to this size come from the heap (glibc's own ceiling for its adaptive
threshold); larger ones, like a lake batch's Arrow input, still get their own mapping."""
TRIM_THRESHOLD_BYTES = 128 * 1024 * 1024
"""Free memory at the top of a heap kept for reuse before it is returned to the kernel."""

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune() -> bool:
    """Apply the settings; False where the C library is not glibc (nothing changes)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    return bool(
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
        and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )


class _MallInfo2(ctypes.Structure):
    """glibc's `struct mallinfo2` (2.33+): totals over every arena, in bytes."""

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


@dataclass(frozen=True)
class MallocUsage:
    """What glibc's allocator holds, summed over its arenas."""

    in_use_bytes: int
    """Allocated and not yet freed: heap chunks in use plus mmapped blocks."""
    free_bytes: int
    """Freed but kept by the allocator for reuse (the cost `TRIM_THRESHOLD_BYTES` allows)."""


def malloc_usage() -> MallocUsage | None:
    """glibc's in-use and free totals (`mallinfo2`); None where it is not available."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        mallinfo2 = ctypes.CDLL(name).mallinfo2
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = _MallInfo2
    info = mallinfo2()
    return MallocUsage(in_use_bytes=info.uordblks + info.hblkhd, free_bytes=info.fordblks)
