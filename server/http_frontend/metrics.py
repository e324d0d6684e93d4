"""HTTP handlers for metrics: S2's metrics API (`GET /v1/metrics[/{basin}[/{stream}]]`) and
the server's Prometheus text (`GET /metrics`). Routing lives in `app.py`; what the sets mean
and how queries are checked, in server/usage/query.py.
"""

from __future__ import annotations

from typing import Any

from server.http_frontend.exchange import Exchange
from server.lake.scoped import ScopedLake
from server.scoped_store import ScopedStore
from server.usage.prometheus import CONTENT_TYPE, render
from server.usage.query import Accumulation, Gauge, Level, Metric, MetricsQuery, parse_query


class MetricsApi:
    def __init__(self, store: ScopedStore, lake: ScopedLake | None) -> None:
        self._store = store
        self._lake = lake

    async def account(self, exchange: Exchange) -> None:
        metrics = await self._store.account_metrics(self._query("account", exchange))
        await _respond(exchange, metrics)

    async def basin(self, exchange: Exchange, basin: str) -> None:
        metrics = await self._store.basin_metrics(basin, self._query("basin", exchange))
        await _respond(exchange, metrics)

    async def stream(self, exchange: Exchange, basin: str, stream: str) -> None:
        query = self._query("stream", exchange)
        await _respond(exchange, await self._store.stream_metrics(basin, stream, query))

    async def prometheus(self, exchange: Exchange) -> None:
        """The server's families, the process's, and the lake's when there is one."""
        collectors = [self._store.prometheus_collector()]
        if self._lake is not None:
            collectors.append(await self._lake.metrics_collector())
        await exchange.respond(200, render(collectors), CONTENT_TYPE)

    def _query(self, level: Level, exchange: Exchange) -> MetricsQuery:
        return parse_query(level, exchange.query(), self._store.now_s())


async def _respond(exchange: Exchange, metrics: list[Metric]) -> None:
    await exchange.respond_json(200, {"values": [metric_json(m) for m in metrics]})


def metric_json(metric: Metric) -> dict[str, Any]:
    """S2's `Metric`: an object with one key naming its kind."""
    if isinstance(metric, Accumulation):
        return {
            "accumulation": {
                "name": metric.name,
                "unit": metric.unit,
                "interval": metric.interval,
                "values": [[t, v] for t, v in metric.values],
            }
        }
    if isinstance(metric, Gauge):
        return {
            "gauge": {
                "name": metric.name,
                "unit": metric.unit,
                "values": [[t, v] for t, v in metric.values],
            }
        }
    return {"label": {"name": metric.name, "values": metric.values}}
