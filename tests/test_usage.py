"""The metrics' store over a real `StreamStore` on a temp dir, with a clock moved by hand:
minute counts add up in hour and day rows and are counted once whether flushed or not; rows
expire by resolution; stored bytes follow appends and trims, the gauges carry the last sample
forward, and a stream keeps its newest sample past the horizon."""

from __future__ import annotations

from pathlib import Path

from s2s.config import StreamConfig
from s2s.records import trim_record
from server.storage.kv import Table
from server.streamstore import StreamStore
from server.usage.query import Accumulation, Gauge, Label, Metric, parse_query
from tests.conftest import BASIN, ManualClock, make_batch, open_store

DAY_MS = 86_400_000


def _now_s(clock: ManualClock) -> int:
    return clock.now_ms() // 1000


async def _basin(
    store: StreamStore, clock: ManualClock, set_: str, **params: int | str
) -> list[Metric]:
    query = {"set": set_, **{key: str(value) for key, value in params.items()}}
    return await store.basin_metrics(BASIN, parse_query("basin", query, _now_s(clock)))


def _points(metrics: list[Metric]) -> dict[int, float]:
    (metric,) = metrics
    assert isinstance(metric, Accumulation | Gauge)
    return dict(metric.values)


async def test_minutes_add_up_in_hours_and_days_and_count_once(
    tmp_path: Path, clock: ManualClock
) -> None:
    async with open_store(tmp_path, clock) as store:
        await store.create_stream(BASIN, "s")
        first_s = _now_s(clock)
        for _ in range(2):
            await store.append(BASIN, "s", make_batch(b"x"))
        clock.advance(60_000)
        await store.append(BASIN, "s", make_batch(b"y"))
        minute = first_s - first_s % 60
        for flushed in (False, True):
            if flushed:
                await store.usage.flush()
            by_minute = await _basin(store, clock, "append-ops", start=first_s, end=_now_s(clock))
            assert _points(by_minute) == {minute: 2, minute + 60: 1}, flushed
            by_hour = await _basin(
                store, clock, "append-ops", start=first_s, end=_now_s(clock), interval="hour"
            )
            assert _points(by_hour) == {first_s - first_s % 3600: 3}
            by_day = await _basin(
                store, clock, "append-throughput", start=first_s, end=_now_s(clock), interval="day"
            )
            assert _points(by_day) == {first_s - first_s % 86400: 27}
        # More after a flush adds to the same rows.
        await store.append(BASIN, "s", make_batch(b"z"))
        await store.usage.flush()
        by_hour = await _basin(
            store, clock, "append-ops", start=first_s, end=_now_s(clock), interval="hour"
        )
        assert _points(by_hour) == {first_s - first_s % 3600: 4}


async def test_rows_expire_by_resolution(tmp_path: Path, clock: ManualClock) -> None:
    async with open_store(tmp_path, clock) as store:
        await store.create_stream(BASIN, "s")
        first_s = _now_s(clock)
        await store.append(BASIN, "s", make_batch(b"x"))
        await store.usage.flush()
        clock.advance(8 * DAY_MS)
        await store.usage.expire()
        old = {"start": first_s - 60, "end": first_s + 60}
        assert await _basin(store, clock, "append-ops", **old) == []
        hourly = await _basin(store, clock, "append-ops", interval="hour", **old)
        assert _points(hourly) == {first_s - first_s % 3600: 1}
        clock.advance(90 * DAY_MS)
        await store.usage.expire()
        assert await _basin(store, clock, "append-ops", interval="hour", **old) == []
        daily = await _basin(store, clock, "append-ops", interval="day", **old)
        assert _points(daily) == {first_s - first_s % 86400: 1}


async def test_storage_follows_appends_and_trims(tmp_path: Path, clock: ManualClock) -> None:
    async with open_store(tmp_path, clock) as store:
        created = await store.create_stream(BASIN, "s", StreamConfig(retention="infinite"))
        first_s = _now_s(clock)
        for body in (b"a" * 10, b"b" * 20, b"c" * 30):
            await store.append(BASIN, "s", make_batch(body))
        appended = 18 + 28 + 38
        await store.usage.flush()
        clock.advance(120_000)
        trim = make_batch(records=[trim_record(2)])
        await store.append(BASIN, "s", trim)
        await store.jobs.run_once()
        remaining = 38 + trim.metered_bytes
        query = parse_query(
            "stream",
            {"set": "storage", "start": str(first_s - 60), "end": str(_now_s(clock))},
            _now_s(clock),
        )
        minute = first_s - first_s % 60
        points = _points(await store.stream_metrics(BASIN, "s", query))
        assert points == {
            minute - 60: 0,
            minute: appended,
            minute + 60: appended,
            minute + 120: remaining,
        }
        basin_points = _points(
            await _basin(store, clock, "storage", start=first_s, end=_now_s(clock))
        )
        assert basin_points == {first_s - first_s % 3600: remaining}
        assert store.usage.storage_by_label() == {BASIN: remaining}
        await store.delete_stream(BASIN, "s")
        await store.jobs.run_once()
        assert store.usage.storage_by_label() == {BASIN: 0}
        await store.usage.flush()
        sid = created.record.sid
        snapshots = store.kv.scan(Table.USAGE, b"t", b"u", 10)
        assert snapshots == [], f"stream {sid}'s snapshot outlived it"


async def test_a_stream_keeps_its_newest_sample_past_the_horizon(
    tmp_path: Path, clock: ManualClock
) -> None:
    async with open_store(tmp_path, clock) as store:
        await store.create_stream(BASIN, "s", StreamConfig(retention="infinite"))
        await store.append(BASIN, "s", make_batch(b"x" * 100))
        await store.usage.flush()
        clock.advance(60_000)
        await store.append(BASIN, "s", make_batch(b"y" * 100))
        await store.usage.flush()  # a second sample, a minute later
        clock.advance(8 * DAY_MS)
        await store.usage.expire()
        assert len(store.kv.scan(Table.USAGE, b"s", b"t", 10)) == 1
        now_s = _now_s(clock)
        query = parse_query(
            "stream", {"set": "storage", "start": str(now_s - 3600), "end": str(now_s)}, now_s
        )
        points = _points(await store.stream_metrics(BASIN, "s", query))
        assert len(points) == 61 and set(points.values()) == {216}


async def test_active_basins_are_those_with_a_stream_in_the_range(
    tmp_path: Path, clock: ManualClock
) -> None:
    async with open_store(tmp_path, clock) as store:
        await store.create_basin("empty-basin")
        await store.create_stream(BASIN, "s")
        first_s = _now_s(clock)
        await store.usage.flush()
        clock.advance(3 * 3_600_000)
        now_s = _now_s(clock)

        async def active(start_s: int, end_s: int) -> list[str]:
            query = {"set": "active-basins", "start": str(start_s), "end": str(end_s)}
            (label,) = await store.account_metrics(parse_query("account", query, now_s))
            assert isinstance(label, Label)
            return label.values

        assert await active(first_s, first_s + 60) == [BASIN]  # from the stored hour sample
        assert await active(now_s - 60, now_s) == [BASIN]  # it has a stream now
        assert await active(first_s - 7200, first_s - 3600) == []
