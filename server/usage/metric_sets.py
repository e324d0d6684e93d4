"""What each S2 metric set answers, from the counters and the storage samples of `Usage`.

| level   | set                 | metrics                                    | counted at      |
|---------|---------------------|--------------------------------------------|-----------------|
| account | `active-basins`     | label: the basins that had a stream        | hourly samples  |
| account | `account-ops`       | accumulation per account operation         | each operation  |
| basin   | `storage`           | gauge of stored metered bytes, per hour    | storage samples |
| basin   | `append-ops`        | accumulation per storage class             | durable appends |
| basin   | `read-ops`          | `unary` per read, `streaming` per minute   | each read       |
| basin   | `read-throughput`   | accumulation of metered bytes read         | each batch read |
| basin   | `append-throughput` | accumulation of metered bytes appended     | durable appends |
| basin   | `basin-ops`         | accumulation per basin operation           | each operation  |
| stream  | `storage`           | gauge of stored metered bytes, per minute  | storage samples |

A streaming read counts one op for each minute in which its session sent something, as S2
meters "up to one minute" of a session as one op.
"""

from __future__ import annotations

from server.usage.accounting import ACCOUNT, Usage
from server.usage.query import Gauge, Label, Metric, MetricsQuery, accumulations

_SERIES_PREFIXES = {
    "account-ops": "account-ops/",
    "append-ops": "append-ops/",
    "read-ops": "read-ops/",
    "read-throughput": "read-throughput",
    "append-throughput": "append-throughput",
    "basin-ops": "basin-ops/",
}


async def account_metrics(usage: Usage, query: MetricsQuery) -> list[Metric]:
    if query.set == "active-basins":
        basins = await usage.active_basins(query.start_s, query.end_s)
        return [Label("active-basins", basins)]
    return await _counted(usage, query, ACCOUNT)


async def basin_metrics(usage: Usage, query: MetricsQuery, basin: str) -> list[Metric]:
    if query.set == "storage":
        points = await usage.basin_storage(basin, query.start_s, query.end_s)
        return [Gauge("storage", "bytes", [(t, float(v)) for t, v in points])]
    return await _counted(usage, query, basin)


async def stream_metrics(usage: Usage, query: MetricsQuery, sid: int) -> list[Metric]:
    points = await usage.stream_storage(sid, query.start_s, query.end_s)
    return [Gauge("storage", "bytes", [(t, float(v)) for t, v in points])]


async def _counted(usage: Usage, query: MetricsQuery, basin: str) -> list[Metric]:
    prefix = _SERIES_PREFIXES[query.set]
    counts = await usage.series(query.series(basin, prefix))
    return accumulations(query, counts, prefix)
