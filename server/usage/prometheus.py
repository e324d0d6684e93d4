"""The server's Prometheus metrics (`GET /metrics`), through `prometheus_client`.

The server's counts live in `Usage` as plain integers, updated per batch; this collector turns
them into the library's metric families only when scraped, so the hot paths never touch the
library. Each server has its own `CollectorRegistry` (never the process-global one), with the
library's process, platform and garbage-collector collectors and the allocators' totals
(`memory.py`) beside this one.

Basin labels are bounded: the first `UsageSettings.basin_labels_max` basins seen get their own
`basin` label, the rest are summed under `basin="_other"`. No metric has a stream label.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from server.usage.accounting import BasinTotals, Usage
from server.usage.memory import MemoryCollector

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

_BASIN_COUNTERS: tuple[tuple[str, str, Callable[[BasinTotals], int]], ...] = (
    ("s2s_appends", "Appended batches (durable), per basin.", lambda t: t.appends),
    ("s2s_append_records", "Appended records (durable), per basin.", lambda t: t.append_records),
    ("s2s_append_bytes", "Appended metered bytes (durable), per basin.", lambda t: t.append_bytes),
    ("s2s_reads", "Batches of records read, per basin.", lambda t: t.reads),
    ("s2s_read_records", "Records read, per basin.", lambda t: t.read_records),
    ("s2s_read_bytes", "Metered bytes read, per basin.", lambda t: t.read_bytes),
    (
        "s2s_append_retries",
        "Retried batches of idempotent producers answered with their original ack, and not "
        "written again, per basin.",
        lambda t: t.append_retries,
    ),
)


class ServerCollector:
    """The server's own families, read from `Usage` at each scrape."""

    def __init__(self, usage: Usage) -> None:
        self._usage = usage

    def collect(self) -> Iterable[Metric]:
        usage = self._usage
        labelled = sorted(usage.labelled.items())
        for name, documentation, value in _BASIN_COUNTERS:
            family = CounterMetricFamily(name, documentation, labels=["basin"])
            for label, totals in labelled:
                family.add_metric([label], value(totals))
            yield family
        storage = GaugeMetricFamily(
            "s2s_storage_bytes", "Metered bytes stored, per basin.", labels=["basin"]
        )
        for label, stored in sorted(usage.storage_by_label().items()):
            storage.add_metric([label], stored)
        yield storage
        sessions = GaugeMetricFamily(
            "s2s_open_sessions", "Open sessions, by kind (append, read).", labels=["kind"]
        )
        for kind in ("append", "read"):
            sessions.add_metric([kind], usage.open_sessions[kind])
        yield sessions
        errors = CounterMetricFamily(
            "s2s_errors", "Errors answered to clients, by S2 error code.", labels=["code"]
        )
        for code, count in sorted(usage.errors.items()):
            errors.add_metric([code], count)
        yield errors
        for histogram in (
            usage.ack_latency,
            usage.commit_latency,
            usage.group_jobs,
            usage.group_bytes,
        ):
            yield histogram.family()


def server_registry(usage: Usage) -> CollectorRegistry:
    """A registry of this server's collectors and the library's process metrics."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(ServerCollector(usage))
    registry.register(MemoryCollector())
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


class _Scrape:
    def __init__(self, collectors: Iterable[Collector]) -> None:
        self._collectors = collectors

    def collect(self) -> Iterable[Metric]:
        for collector in self._collectors:
            yield from collector.collect()


def render(collectors: Iterable[Collector]) -> bytes:
    """The Prometheus text format of every family of `collectors`."""
    return generate_latest(_Scrape(collectors))
