"""The process's memory as its allocators see it, for `/metrics`: what RSS alone cannot tell.

A resident set that grows may be objects kept alive (a leak) or freed memory the C allocator
keeps for reuse (`s2s/allocator.py` lets it keep up to 128 MiB per arena). These gauges tell
them apart from outside, at scrape time only: Python's allocated blocks (every live object
and buffer of its allocator), glibc's bytes in use, and glibc's bytes freed but kept.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

from prometheus_client.core import GaugeMetricFamily, Metric

from s2s import allocator


class MemoryCollector:
    """Python's and glibc's allocation totals, read when scraped."""

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            "s2s_python_allocated_blocks",
            "Memory blocks currently allocated by Python's allocator (sys.getallocatedblocks).",
            value=sys.getallocatedblocks(),
        )
        usage = allocator.malloc_usage()
        if usage is None:
            return
        yield GaugeMetricFamily(
            "s2s_malloc_in_use_bytes",
            "Bytes allocated through glibc malloc and not freed, over every arena (mallinfo2).",
            value=usage.in_use_bytes,
        )
        yield GaugeMetricFamily(
            "s2s_malloc_free_bytes",
            "Bytes freed but kept by glibc malloc for reuse, over every arena (mallinfo2).",
            value=usage.free_bytes,
        )
