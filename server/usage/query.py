"""The S2 metrics API: which sets each level has, how a query is checked, and the metrics each
set answers (S2's `api/src/v1/metrics.rs`, docs/s2-compat.md §4.5).

A query is `set`, `start` and `end` (Unix seconds; `start` inclusive, the bucket holding `end`
included) and an optional `interval`. As S2 answers:

- a missing or unknown `set` (an unknown name, or one of another level), an `interval` that is
  not `minute`/`hour`/`day`, a `start` or `end` that is not a u32: 400 `bad_query`;
- no `start` or no `end`, `start > end`, an `end` more than `END_LEEWAY_S` in the future, a
  range longer than `RANGE_S_MAX`, an interval the set does not take (basin `storage` is
  hourly, stream `storage` per minute), or `estimated-billable-usage` (nothing is billed
  here): 422 `invalid`.

Accumulations omit buckets without counts; gauges have a point per bucket up to now.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from s2s.errors import S2Error
from server.usage.counters import SeriesQuery
from server.usage.layout import Resolution

Level = Literal["account", "basin", "stream"]
Interval = Literal["minute", "hour", "day"]
Unit = Literal["bytes", "operations"]

U32_MAX = 2**32 - 1
RANGE_S_MAX = 30 * 86400
"""S2's limit: "the time period specified should not exceed 30 days"."""
END_LEEWAY_S = 300
"""How far in the future `end` may be, for clocks that differ (S2 refuses 10 minutes)."""

INTERVALS: dict[Interval, Resolution] = {"minute": "m", "hour": "h", "day": "d"}
_INTERVAL_NAMES: dict[str, Interval] = {interval: interval for interval in INTERVALS}


@dataclass(frozen=True)
class SetRule:
    """What a set answers and which intervals it takes (the first is the default)."""

    kind: Literal["label", "accumulation", "gauge"]
    intervals: tuple[Interval, ...]
    unit: Unit = "operations"


SETS: dict[Level, dict[str, SetRule]] = {
    "account": {
        "active-basins": SetRule("label", ("hour", "minute", "day")),
        "account-ops": SetRule("accumulation", ("hour", "minute", "day")),
    },
    "basin": {
        "storage": SetRule("gauge", ("hour",), "bytes"),
        "append-ops": SetRule("accumulation", ("minute", "hour", "day")),
        "read-ops": SetRule("accumulation", ("minute", "hour", "day")),
        "read-throughput": SetRule("accumulation", ("minute", "hour", "day"), "bytes"),
        "append-throughput": SetRule("accumulation", ("minute", "hour", "day"), "bytes"),
        "basin-ops": SetRule("accumulation", ("hour", "minute", "day")),
    },
    "stream": {"storage": SetRule("gauge", ("minute",), "bytes")},
}
UNSUPPORTED_SETS: dict[Level, frozenset[str]] = {
    "account": frozenset({"estimated-billable-usage"}),
    "basin": frozenset(),
    "stream": frozenset(),
}


@dataclass(frozen=True)
class MetricsQuery:
    level: Level
    set: str
    start_s: int
    end_s: int
    interval: Interval

    @property
    def rule(self) -> SetRule:
        return SETS[self.level][self.set]

    def series(self, basin: str, prefix: str) -> SeriesQuery:
        return SeriesQuery(basin, prefix, INTERVALS[self.interval], self.start_s, self.end_s)


@dataclass(frozen=True)
class Accumulation:
    name: str
    unit: Unit
    interval: Interval
    values: list[tuple[int, float]]


@dataclass(frozen=True)
class Gauge:
    name: str
    unit: Unit
    values: list[tuple[int, float]]


@dataclass(frozen=True)
class Label:
    name: str
    values: list[str]


Metric = Accumulation | Gauge | Label


def parse_query(level: Level, params: Mapping[str, str], now_s: int) -> MetricsQuery:
    """The query of a request's parameters, checked as S2 checks it (module docstring)."""
    name = params.get("set")
    if name is None:
        raise S2Error("bad_query", "missing query parameter `set`")
    if name in UNSUPPORTED_SETS[level]:
        raise S2Error("invalid", f"metric set {name!r} is not supported by this server")
    rule = SETS[level].get(name)
    if rule is None:
        known = ", ".join(SETS[level])
        raise S2Error("bad_query", f"unknown {level} metric set {name!r}: one of {known}")
    interval_text = params.get("interval")
    if interval_text is not None and interval_text not in INTERVALS:
        raise S2Error("bad_query", "`interval` must be minute, hour or day")
    start_s = _u32(params, "start")
    end_s = _u32(params, "end")
    if start_s is None or end_s is None:
        raise S2Error("invalid", f"metric set {name!r} needs both `start` and `end`")
    if start_s > end_s:
        raise S2Error("invalid", f"`start` ({start_s}) is after `end` ({end_s})")
    if end_s > now_s + END_LEEWAY_S:
        raise S2Error("invalid", f"`end` ({end_s}) is in the future (now is {now_s})")
    if end_s - start_s > RANGE_S_MAX:
        raise S2Error("invalid", "the time range must not exceed 30 days")
    interval: Interval = rule.intervals[0]
    if interval_text is not None:
        if interval_text not in rule.intervals:
            allowed = ", ".join(rule.intervals)
            raise S2Error("invalid", f"metric set {name!r} takes the interval {allowed}")
        interval = _INTERVAL_NAMES[interval_text]
    return MetricsQuery(level, name, start_s, end_s, interval)


def accumulations(
    query: MetricsQuery, counts: dict[str, dict[int, int]], prefix: str
) -> list[Metric]:
    """One accumulation per series (named by what follows `prefix`), non-zero buckets only."""
    rule = query.rule
    metrics: list[Metric] = []
    for series in sorted(counts):
        values = [(t, float(v)) for t, v in sorted(counts[series].items()) if v]
        if values:
            name = series[len(prefix) :] or query.set
            metrics.append(Accumulation(name, rule.unit, query.interval, values))
    return metrics


def _u32(params: Mapping[str, str], name: str) -> int | None:
    text = params.get(name)
    if text is None:
        return None
    if not (text.isascii() and text.isdigit()) or len(text) > 10 or int(text) > U32_MAX:
        raise S2Error("bad_query", f"`{name}` must be Unix epoch seconds (0 to {U32_MAX})")
    return int(text)
