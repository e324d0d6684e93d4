"""The S2 metrics API through the official SDK, and the server's Prometheus `/metrics`, after
known traffic: values are checked, not only shapes. Bad queries get S2's statuses and codes."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from s2_sdk import (
    S2,
    AccountMetricSet,
    Accumulation,
    AppendInput,
    BasinConfig,
    BasinMetricSet,
    Encryption,
    Gauge,
    Label,
    MetricUnit,
    ReadLimit,
    Record,
    S2ServerError,
    SeqNum,
    SeqNumMismatchError,
    StreamMetricSet,
    TimeseriesInterval,
)

from tests.server_process import ServerProcess

BODIES = (b"a" * 10, b"b" * 100, b"c" * 1000)
"""One record per append; each record's metered size is 8 + its body."""
METERED = [8 + len(body) for body in BODIES]


def _minute(t: float) -> int:
    return int(t) - int(t) % 60


def _hour_range() -> dict[str, int]:
    now = int(time.time())
    return {"start": now - 3600, "end": now}


def _only(metrics: list[Any], kind: type, name: str) -> Any:
    found = [m for m in metrics if isinstance(m, kind) and getattr(m, "name", None) == name]
    assert len(found) == 1, metrics
    return found[0]


async def _traffic(sdk: S2, basin_name: str) -> tuple[int, int]:
    """3 appends of known sizes and 2 unary reads; the minutes the traffic started and ended."""
    await sdk.create_basin(basin_name)
    basin = sdk.basin(basin_name)
    await basin.create_stream("events")
    stream = basin.stream("events")
    first = _minute(time.time())
    for body in BODIES:
        await stream.append(AppendInput(records=[Record(body=body)]))
    everything = await stream.read(start=SeqNum(0))
    assert [r.body for r in everything.records] == list(BODIES)
    first_two = await stream.read(start=SeqNum(0), limit=ReadLimit(count=2))
    assert len(first_two.records) == 2
    return first, _minute(time.time())


async def test_basin_sets_count_the_traffic_in_its_minutes(sdk: S2, basin_name: str) -> None:
    first, last = await _traffic(sdk, basin_name)

    async def basin_set(set_: BasinMetricSet) -> list[Any]:
        metrics: list[Any] = await sdk.basin_metrics(basin_name, set=set_, **_hour_range())
        return metrics

    appends = _only(await basin_set(BasinMetricSet.APPEND_OPS), Accumulation, "express")
    assert (appends.unit, appends.interval) == (MetricUnit.OPERATIONS, TimeseriesInterval.MINUTE)
    assert sum(v for _, v in appends.values) == 3
    assert all(first <= t <= last for t, _ in appends.values), (first, last, appends.values)

    appended = _only(
        await basin_set(BasinMetricSet.APPEND_THROUGHPUT), Accumulation, "append-throughput"
    )
    assert appended.unit == MetricUnit.BYTES
    assert sum(v for _, v in appended.values) == sum(METERED)

    reads = await basin_set(BasinMetricSet.READ_OPS)
    assert sum(v for _, v in _only(reads, Accumulation, "unary").values) == 2
    assert not [m for m in reads if m.name == "streaming"]
    read_bytes = _only(
        await basin_set(BasinMetricSet.READ_THROUGHPUT), Accumulation, "read-throughput"
    )
    assert sum(v for _, v in read_bytes.values) == sum(METERED) + METERED[0] + METERED[1]

    ops = await basin_set(BasinMetricSet.BASIN_OPS)
    assert sum(v for _, v in _only(ops, Accumulation, "create-stream").values) == 1
    assert ops[0].interval == TimeseriesInterval.HOUR  # basin-ops' default, as S2's

    storage = _only(await basin_set(BasinMetricSet.STORAGE), Gauge, "storage")
    assert storage.unit == MetricUnit.BYTES
    hours = [t for t, _ in storage.values]
    assert hours == sorted(hours) and all(t % 3600 == 0 for t in hours)
    assert storage.values[-1][1] == sum(METERED)

    stream_storage = await sdk.stream_metrics(
        basin_name, "events", set=StreamMetricSet.STORAGE, **_hour_range()
    )
    points = _only(stream_storage, Gauge, "storage").values
    assert len(points) == 61 and all(t % 60 == 0 for t, _ in points)  # every minute of the hour
    assert points[-1][1] == sum(METERED)


async def test_hour_and_day_intervals_hold_the_minutes_sums(sdk: S2, basin_name: str) -> None:
    await _traffic(sdk, basin_name)
    now = int(time.time())
    for interval, seconds in ((TimeseriesInterval.HOUR, 3600), (TimeseriesInterval.DAY, 86400)):
        metrics = await sdk.basin_metrics(
            basin_name,
            set=BasinMetricSet.APPEND_OPS,
            start=now - 3600,
            end=now,
            interval=interval,
        )
        appends = _only(metrics, Accumulation, "express")
        assert appends.interval == interval
        assert sum(v for _, v in appends.values) == 3
        assert all(t % seconds == 0 for t, _ in appends.values)


async def test_account_sets(sdk: S2, basin_name: str) -> None:
    await _traffic(sdk, basin_name)
    active = await sdk.account_metrics(set=AccountMetricSet.ACTIVE_BASINS, **_hour_range())
    assert basin_name in _only(active, Label, "active-basins").values
    ops = await sdk.account_metrics(set=AccountMetricSet.ACCOUNT_OPS, **_hour_range())
    assert all(isinstance(m, Accumulation) and m.unit == MetricUnit.OPERATIONS for m in ops)
    created = _only(ops, Accumulation, "create-basin")
    assert created.interval == TimeseriesInterval.HOUR and sum(v for _, v in created.values) >= 1
    # The metrics requests themselves are account operations, as in S2.
    again = await sdk.account_metrics(set=AccountMetricSet.ACCOUNT_OPS, **_hour_range())
    seen = sum(v for _, v in _only(again, Accumulation, "account-metrics").values)
    assert seen >= 2
    # The locations calls are account operations too.
    await sdk.list_locations()
    await sdk.get_default_location()
    located = await sdk.account_metrics(set=AccountMetricSet.ACCOUNT_OPS, **_hour_range())
    for name in ("list-locations", "get-default-location"):
        assert sum(v for _, v in _only(located, Accumulation, name).values) >= 1, name
    # A range long ago: nothing, and no basin.
    old = await sdk.account_metrics(set=AccountMetricSet.ACTIVE_BASINS, start=0, end=3600)
    assert _only(old, Label, "active-basins").values == []


async def test_a_read_session_counts_streaming_reads(sdk: S2, basin_name: str) -> None:
    await _traffic(sdk, basin_name)
    stream = sdk.basin(basin_name).stream("events")
    received = 0
    async for batch in stream.read_session(start=SeqNum(0), limit=ReadLimit(count=3)):
        received += len(batch.records)
    assert received == 3
    reads = await sdk.basin_metrics(basin_name, set=BasinMetricSet.READ_OPS, **_hour_range())
    # One op per minute the session sent something in: it may have crossed into the next.
    assert sum(v for _, v in _only(reads, Accumulation, "streaming").values) in (1, 2)


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.http_url, timeout=30) as client:
        yield client


def _refused(response: httpx.Response, status: int, code: str) -> None:
    assert (response.status_code, response.json()["code"]) == (status, code), response.text
    assert response.json()["message"]


async def test_bad_queries_get_s2s_codes_and_count_nothing(
    sdk: S2, basin_name: str, http: httpx.Client
) -> None:
    await _traffic(sdk, basin_name)
    ops_before = await _metrics_ops(sdk)
    now = int(time.time())
    with pytest.raises(S2ServerError) as refused:
        await sdk.account_metrics(set=AccountMetricSet.ACTIVE_BASINS, start=now, end=now - 3600)
    assert (refused.value.status_code, refused.value.code) == (422, "invalid")

    hour = {"start": now - 3600, "end": now}
    basin = f"/v1/metrics/{basin_name}"
    cases: list[tuple[str, dict[str, str | int], int]] = [
        ("/v1/metrics", {"set": "active-basins", "start": now - 3600, "end": now + 600}, 422),
        ("/v1/metrics", {"set": "active-basins", "start": now - 40 * 86400, "end": now}, 422),
        ("/v1/metrics", {"set": "active-basins", "end": now}, 422),
        ("/v1/metrics", {"set": "account-ops", "start": now - 3600}, 422),
        ("/v1/metrics", {"set": "estimated-billable-usage", **hour}, 422),
        (basin, {"set": "storage", "interval": "minute", **hour}, 422),
        (f"{basin}/events", {"set": "storage", "interval": "hour", **hour}, 422),
        ("/v1/metrics", {**hour}, 400),
        ("/v1/metrics", {"set": "append-ops", **hour}, 400),  # a basin set
        (basin, {"set": "active-basins", **hour}, 400),  # an account set
        (f"{basin}/events", {"set": "append-ops", **hour}, 400),
        (basin, {"set": "append-ops", "interval": "week", **hour}, 400),
        (basin, {"set": "append-ops", "start": "-1", "end": now}, 400),
        (basin, {"set": "append-ops", "start": "1e3", "end": now}, 400),
        (basin, {"set": "append-ops", "start": 2**32, "end": now}, 400),
    ]
    for path, params, status in cases:
        code = "invalid" if status == 422 else "bad_query"
        _refused(http.get(path, params=params), status, code)
    _refused(
        http.get("/v1/metrics/nobasin-here", params={"set": "storage", **hour}),
        404,
        "basin_not_found",
    )
    _refused(
        http.get(f"{basin}/nothing", params={"set": "storage", **hour}), 404, "stream_not_found"
    )
    _refused(http.get("/v1/metrics/NO", params={"set": "storage", **hour}), 400, "bad_path")
    assert http.get(f"{basin}/events/more").status_code == 404
    assert http.post(basin, params={"set": "storage", **hour}).status_code == 405
    # No refused request was counted as an operation.
    ops_after = await _metrics_ops(sdk)
    assert ops_after["account-metrics"] == ops_before["account-metrics"] + 1
    assert (ops_after["basin-metrics"], ops_after["stream-metrics"]) == (
        ops_before["basin-metrics"],
        ops_before["stream-metrics"],
    )


async def _metrics_ops(sdk: S2) -> dict[str, float]:
    ops = await sdk.account_metrics(set=AccountMetricSet.ACCOUNT_OPS, **_hour_range())
    counts = {m.name: sum(v for _, v in m.values) for m in ops if isinstance(m, Accumulation)}
    return {
        name: counts.get(name, 0) for name in ("account-metrics", "basin-metrics", "stream-metrics")
    }


def _families(http: httpx.Client) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """`/metrics` parsed by prometheus_client's own parser: family -> labels -> value."""
    response = http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    families: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            families.setdefault(sample.name, {})[labels] = sample.value
    return families


async def test_prometheus_metrics_parse_and_move_with_traffic(
    sdk: S2, basin_name: str, http: httpx.Client
) -> None:
    before = _families(http)
    await _traffic(sdk, basin_name)
    _refused(http.get("/v1/metrics", params={"set": "nothing"}), 400, "bad_query")
    after = _families(http)
    label = (("basin", basin_name),)
    assert after["s2s_appends_total"][label] == 3
    assert after["s2s_append_records_total"][label] == 3
    assert after["s2s_append_bytes_total"][label] == sum(METERED)
    assert after["s2s_reads_total"][label] == 2
    assert after["s2s_read_records_total"][label] == 5
    assert after["s2s_storage_bytes"][label] == sum(METERED)
    for histogram in ("s2s_append_ack_latency_seconds", "s2s_commit_latency_seconds"):
        count = f"{histogram}_count"
        assert after[count][()] >= before.get(count, {}).get((), 0) + 3
        assert after[f"{histogram}_bucket"][(("le", "+Inf"),)] == after[count][()]
    assert after["s2s_group_commit_jobs_count"][()] >= 3
    code = (("code", "bad_query"),)
    assert after["s2s_errors_total"][code] == before.get("s2s_errors_total", {}).get(code, 0) + 1
    assert (("kind", "append"),) in after["s2s_open_sessions"]
    assert after["process_resident_memory_bytes"][()] > 0
    assert "python_info" in after


def test_basin_labels_are_bounded(tmp_path) -> None:
    server = ServerProcess(str(tmp_path / "data"), extra_args=["--metrics-basin-labels", "2"])
    server.start()
    try:
        with httpx.Client(base_url=server.http_url, timeout=30) as http:
            names = [f"labels-basin-{i}" for i in range(4)]
            for name in names:
                created = http.post("/v1/basins", json={"basin": name})
                assert created.status_code == 201, created.text
                appended = http.post(
                    "/v1/streams/s/records",
                    headers={"s2-basin": name},
                    json={"records": [{"body": "x"}]},
                )
                assert appended.status_code == 404  # no auto-create: nothing counted
                http.post("/v1/streams", headers={"s2-basin": name}, json={"stream": "s"})
                appended = http.post(
                    "/v1/streams/s/records",
                    headers={"s2-basin": name},
                    json={"records": [{"body": "x"}]},
                )
                assert appended.status_code == 200, appended.text
            appends = _families(http)["s2s_appends_total"]
            assert appends == {
                (("basin", names[0]),): 1,
                (("basin", names[1]),): 1,
                (("basin", "_other"),): 2,
            }
    finally:
        server.stop()


async def test_failures_inside_sessions_are_counted(
    sdk: S2, server: ServerProcess, basin_name: str, http: httpx.Client
) -> None:
    """A session's terminal frame and an SSE `error` event count like error responses."""
    await sdk.create_basin(basin_name, config=BasinConfig(stream_cipher=Encryption.AEGIS_256))
    await sdk.basin(basin_name).create_stream("s")
    stream = sdk.basin(basin_name).stream("s", encryption_key=bytes(32))
    mismatch = (("code", "seq_num_mismatch"),)
    before = _families(http).get("s2s_errors_total", {}).get(mismatch, 0)
    with pytest.raises(SeqNumMismatchError):
        async with stream.append_session() as session:
            await (await session.submit(AppendInput(records=[Record(body=b"x")], match_seq_num=5)))
    assert _families(http)["s2s_errors_total"][mismatch] == before + 1

    # An SSE reader following with the key of the first record meets one appended with
    # another key: its `error` event comes after the response started.
    await stream.append(AppendInput(records=[Record(body=b"first")]))
    failed = (("code", "decryption_failed"),)
    before = _families(http).get("s2s_errors_total", {}).get(failed, 0)
    headers = {
        "s2-basin": basin_name,
        "accept": "text/event-stream",
        "s2-encryption-key": base64.b64encode(bytes(32)).decode(),
    }
    async with (
        httpx.AsyncClient(base_url=server.http_url, timeout=30) as client,
        client.stream(
            "GET", "/v1/streams/s/records", params={"seq_num": 0}, headers=headers
        ) as response,
    ):
        assert response.status_code == 200
        lines = response.aiter_lines()
        async for line in lines:
            if line.startswith("event: batch"):
                break
        other = sdk.basin(basin_name).stream("s", encryption_key=bytes(range(32)))
        await other.append(AppendInput(records=[Record(body=b"second")]))
        async for line in lines:
            if line.startswith("event: error"):
                break
    assert _families(http)["s2s_errors_total"][failed] == before + 1
