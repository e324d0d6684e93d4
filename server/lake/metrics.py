"""The lake's metrics: ingest counters per table, and the Prometheus text (`GET /metrics`) of
those and of each materialization's progress.

A table gets counters only once a request for it reached the lake and found it (`track`):
names a client made up must not grow the metrics without bound.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

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

    def render(self, materializations: list[MaterializationStatus]) -> str:
        """Every family in Prometheus text format."""
        return "".join(self._families(materializations))

    def _families(self, materializations: list[MaterializationStatus]) -> Iterable[str]:
        tables = sorted(self._tables.items())
        for metric, counter, help_text in _TABLE_COUNTERS:
            samples = [({"table": table}, counter(counters)) for table, counters in tables]
            yield from _family(metric, "counter", help_text, samples)
        codes = sorted(self._error_codes.items())
        yield from _family(
            "s2s_lake_ingest_error_codes_total",
            "counter",
            "Ingest requests refused as a whole, per table (empty if unknown) and error code.",
            [({"table": table, "code": code}, count) for (table, code), count in codes],
        )
        for metric, kind, value, help_text in _MATERIALIZATION_METRICS:
            samples = [({"name": s.definition.name}, value(s)) for s in materializations]
            yield from _family(metric, kind, help_text, samples)


_TABLE_COUNTERS: tuple[tuple[str, Callable[[TableCounters], float], str], ...] = (
    ("s2s_lake_ingest_requests_total", lambda c: c.requests, "Ingest requests per table."),
    (
        "s2s_lake_ingest_rows_accepted_total",
        lambda c: c.rows_accepted,
        "Rows accepted into a table's ingest stream.",
    ),
    (
        "s2s_lake_ingest_rows_rejected_total",
        lambda c: c.rows_rejected,
        "Rows rejected by validation or by the table's column types.",
    ),
    (
        "s2s_lake_ingest_errors_total",
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
        "s2s_lake_materialization_rows_applied_total",
        "counter",
        lambda s: s.progress.rows_applied,
        "Rows written to the table.",
    ),
    (
        "s2s_lake_materialization_rows_rejected_total",
        "counter",
        lambda s: s.progress.rows_rejected,
        "Records sent to the dead-letter table.",
    ),
    (
        "s2s_lake_materialization_records_skipped_total",
        "counter",
        lambda s: s.progress.records_skipped,
        "Records trimmed or expired from the source before they were applied (lost).",
    ),
)


def _family(
    name: str, kind: str, help_text: str, samples: list[tuple[dict[str, str], float]]
) -> Iterable[str]:
    yield f"# HELP {name} {help_text}\n"
    yield f"# TYPE {name} {kind}\n"
    for labels, value in samples:
        rendered = ",".join(f'{key}="{_label_value(text)}"' for key, text in labels.items())
        yield f"{name}{{{rendered}}} {value}\n"


def _label_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
