"""The lake's metrics: ingest counters per table, and the Prometheus families (`GET /metrics`,
through `prometheus_client`) of those and of each materialization's progress.

A table gets counters only once a request for it reached the lake and found it (`track`):
names a client made up must not grow the metrics without bound.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from server.lake.materializations import MaterializationStatus


@dataclass
class TableCounters:
    requests: int = 0
    rows_accepted: int = 0
    rows_rejected: int = 0
    errors: int = 0


class IngestMetrics:
    def __init__(self) -> None:
        self._tables: dict[str, TableCounters] = {}
        self._error_codes: Counter[tuple[str, str]] = Counter()
        """Refused requests by (table, or "" if unknown; error code)."""

    def track(self, table: str) -> None:
        """A request found `table`: it is counted from now on."""
        self._tables.setdefault(table.lower(), TableCounters())

    def count_ingested(self, table: str, rows_accepted: int, rows_rejected: int) -> None:
        """A request for a tracked table was answered."""
        counters = self._tables[table.lower()]
        counters.requests += 1
        counters.rows_accepted += rows_accepted
        counters.rows_rejected += rows_rejected

    def count_refused(self, table: str | None, code: str) -> None:
        """A request was refused as a whole; counted against its table if that is tracked."""
        key = "" if table is None else table.lower()
        counters = self._tables.get(key)
        if counters is None:
            key = ""
        else:
            counters.requests += 1
            counters.errors += 1
        self._error_codes[(key, code)] += 1

    def collector(
        self,
        materializations: list[MaterializationStatus],
        duckdb_memory: dict[str, int],
        reopens: int,
    ) -> Collector:
        """Every family, with the materializations' progress, DuckDB's memory by tag
        (`duckdb_memory()`) and how often its instance was reopened, as they are now."""
        return _Families(list(self._families(materializations, duckdb_memory, reopens)))

    def _families(
        self,
        materializations: list[MaterializationStatus],
        duckdb_memory: dict[str, int],
        reopens: int,
    ) -> Iterable[Metric]:
        tables = sorted(self._tables.items())
        for name, counter, help_text in _TABLE_COUNTERS:
            family = CounterMetricFamily(name, help_text, labels=["table"])
            for table, counters in tables:
                family.add_metric([table], counter(counters))
            yield family
        codes = CounterMetricFamily(
            "s2s_lake_ingest_error_codes",
            "Ingest requests refused as a whole, per table (empty if unknown) and error code.",
            labels=["table", "code"],
        )
        for (table, code), count in sorted(self._error_codes.items()):
            codes.add_metric([table, code], count)
        yield codes
        for name, kind, value, help_text in _MATERIALIZATION_METRICS:
            progress: CounterMetricFamily | GaugeMetricFamily = (
                CounterMetricFamily(name, help_text, labels=["name"])
                if kind == "counter"
                else GaugeMetricFamily(name, help_text, labels=["name"])
            )
            for status in materializations:
                progress.add_metric([status.definition.name], value(status))
            yield progress
        memory = GaugeMetricFamily(
            "s2s_lake_duckdb_memory_bytes",
            "Memory DuckDB accounts to each tag (duckdb_memory()). TRANSACTION holds the undo "
            "data of recent commits: it grows without end while a transaction stays open.",
            labels=["tag"],
        )
        for tag, used in sorted(duckdb_memory.items()):
            memory.add_metric([tag], used)
        yield memory
        yield CounterMetricFamily(
            "s2s_lake_duckdb_reopens",
            "Times the lake's DuckDB instance was closed and opened again to return the memory "
            "DuckLake keeps per commit (--lake-reopen-commits).",
            value=reopens,
        )


class _Families:
    """Families computed once, for one scrape."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


_TABLE_COUNTERS: tuple[tuple[str, Callable[[TableCounters], float], str], ...] = (
    ("s2s_lake_ingest_requests", lambda c: c.requests, "Ingest requests per table."),
    (
        "s2s_lake_ingest_rows_accepted",
        lambda c: c.rows_accepted,
        "Rows accepted into a table's ingest stream.",
    ),
    (
        "s2s_lake_ingest_rows_rejected",
        lambda c: c.rows_rejected,
        "Rows rejected by validation or by the table's column types.",
    ),
    (
        "s2s_lake_ingest_errors",
        lambda c: c.errors,
        "Ingest requests refused as a whole, per table.",
    ),
)

_MATERIALIZATION_METRICS: tuple[
    tuple[str, str, Callable[[MaterializationStatus], float], str], ...
] = (
    (
        "s2s_lake_materialization_lag_records",
        "gauge",
        lambda s: s.lag_records,
        "Records in the source stream not yet applied.",
    ),
    (
        "s2s_lake_materialization_lag_seconds",
        "gauge",
        lambda s: s.lag_seconds,
        "Age of the oldest record not yet applied.",
    ),
    (
        "s2s_lake_materialization_rows_applied",
        "counter",
        lambda s: s.progress.rows_applied,
        "Rows written to the table.",
    ),
    (
        "s2s_lake_materialization_rows_rejected",
        "counter",
        lambda s: s.progress.rows_rejected,
        "Records sent to the dead-letter table.",
    ),
    (
        "s2s_lake_materialization_records_skipped",
        "counter",
        lambda s: s.progress.records_skipped,
        "Records trimmed or expired from the source before they were applied (lost).",
    ),
)
