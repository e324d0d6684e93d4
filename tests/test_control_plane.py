"""Control plane through the engine: basins and streams, names, configs, idempotency, deletion."""

from __future__ import annotations

import asyncio

import pytest

from s2s.config import (
    BasinConfig,
    ResolvedStreamConfig,
    StreamConfig,
    basin_patch_from_json,
    stream_config_from_json,
    stream_patch_from_json,
)
from s2s.errors import S2Error
from server.streamstore import StreamStore
from tests.conftest import BASIN, ManualClock, make_batch
from tests.storage_mode import storage_for


async def expect_error(code: str, awaitable: object) -> S2Error:
    with pytest.raises(S2Error) as info:
        await awaitable  # type: ignore[misc]
    assert info.value.code == code, info.value.message
    return info.value


@pytest.mark.parametrize(
    "name", ["short", "a" * 49, "-leading", "trailing-", "UPPERCASE", "under_score", "sp ace123"]
)
async def test_invalid_basin_names_are_rejected(store: StreamStore, name: str) -> None:
    await expect_error("invalid", store.create_basin(name))
    assert store.list_basins(prefix=name[:3].lower().strip("-_ "))[0] == [] or name == "short"


async def test_basin_lifecycle_and_listing(store: StreamStore) -> None:
    for name in ["alpha-001", "alpha-002", "beta-0001"]:
        assert (await store.create_basin(name)).outcome == "created"
    names = [b.name for b in store.list_basins()[0]]
    assert names == sorted(names) and {"alpha-001", "alpha-002", "beta-0001"} <= set(names)
    page, more = store.list_basins(prefix="alpha", limit=1)
    assert [b.name for b in page] == ["alpha-001"] and more
    page, more = store.list_basins(prefix="alpha", start_after="alpha-001")
    assert [b.name for b in page] == ["alpha-002"] and not more
    # start_after before prefix: the prefix wins
    page, _ = store.list_basins(prefix="beta", start_after="alpha")
    assert [b.name for b in page] == ["beta-0001"]
    await expect_error("resource_already_exists", store.create_basin("alpha-001"))


async def test_basin_create_is_idempotent_with_same_request_token(store: StreamStore) -> None:
    requested = '{"create_stream_on_append":true}'
    config = BasinConfig(create_stream_on_append=True)
    first = await store.create_basin("idem-basin", config, requested, request_token="tok-1")
    replay = await store.create_basin("idem-basin", config, requested, request_token="tok-1")
    assert (first.outcome, replay.outcome) == ("created", "noop")
    assert replay.record.created_at_ms == first.record.created_at_ms
    await expect_error(
        "resource_already_exists",
        store.create_basin("idem-basin", config, requested, request_token="tok-2"),
    )
    await expect_error(
        "resource_already_exists",
        store.create_basin("idem-basin", BasinConfig(), None, request_token="tok-1"),
    )
    await expect_error("bad_header", store.create_basin("other-basin", request_token="x" * 37))


async def test_ensure_basin_replaces_config(store: StreamStore) -> None:
    created = await store.ensure_basin("ensured-1", BasinConfig(create_stream_on_read=True))
    assert created.outcome == "created"
    same = await store.ensure_basin("ensured-1", BasinConfig(create_stream_on_read=True))
    assert same.outcome == "noop"
    updated = await store.ensure_basin("ensured-1", BasinConfig())
    assert updated.outcome == "updated"
    assert store.get_basin("ensured-1").config == BasinConfig()


async def test_reconfigure_basin_patches_only_given_fields(store: StreamStore) -> None:
    await store.create_basin("reconf-01", BasinConfig(create_stream_on_append=True))
    patch = basin_patch_from_json({"default_stream_config": {"retention_policy": {"age": 60}}})
    record = await store.reconfigure_basin("reconf-01", patch)
    assert record.config.create_stream_on_append is True
    assert record.config.default_stream_config.retention == 60
    with pytest.raises(S2Error) as info:
        basin_patch_from_json({"default_stream_config": {"retention_policy": {"age": 0}}})
    assert info.value.code == "invalid"
    await expect_error("basin_not_found", store.reconfigure_basin("missing-1", patch))


async def test_stream_config_resolution_and_defaults(store: StreamStore) -> None:
    provisioned = await store.create_stream(BASIN, "plain")
    assert provisioned.record.config == ResolvedStreamConfig(
        storage_class="express",
        retention=7 * 24 * 3600,
        timestamping_mode="client-prefer",
        timestamping_uncapped=False,
        delete_on_empty_min_age_secs=0,
    )
    await store.create_basin(
        "defaults-1",
        BasinConfig(default_stream_config=StreamConfig(storage_class="standard", retention=99)),
    )
    record = (
        await store.create_stream("defaults-1", "s", StreamConfig(retention="infinite"))
    ).record
    assert (record.config.storage_class, record.config.retention) == ("standard", "infinite")


async def test_stream_patch_tri_state(store: StreamStore) -> None:
    config = stream_config_from_json(
        {"retention_policy": {"age": 10}, "timestamping": {"mode": "arrival"}}
    )
    await store.create_stream(BASIN, "tri", config)
    kept = await store.reconfigure_stream(
        BASIN, "tri", stream_patch_from_json({"timestamping": {"uncapped": True}})
    )
    assert (kept.config.timestamping_mode, kept.config.timestamping_uncapped) == (
        "arrival",
        True,
    )
    assert kept.config.retention == 10
    cleared = await store.reconfigure_stream(
        BASIN, "tri", stream_patch_from_json({"retention_policy": None})
    )
    assert cleared.config.retention == 7 * 24 * 3600
    noop = await store.reconfigure_stream(BASIN, "tri", stream_patch_from_json({}))
    assert noop.config == cleared.config


async def test_reconfigure_applies_to_next_append(store: StreamStore) -> None:
    await store.create_stream(BASIN, "live-reconf")
    await store.append(BASIN, "live-reconf", make_batch(b"ok"))
    await store.reconfigure_stream(
        BASIN, "live-reconf", stream_patch_from_json({"timestamping": {"mode": "client-require"}})
    )
    await expect_error("invalid", store.append(BASIN, "live-reconf", make_batch(b"no-ts")))


@pytest.mark.parametrize("name", ["", ".", "..", "nul\x00byte", "x" * 513])
async def test_invalid_stream_names(store: StreamStore, name: str) -> None:
    await expect_error("invalid", store.create_stream(BASIN, name))


async def test_stream_names_sort_bytewise_and_long_names_work(store: StreamStore) -> None:
    names = ["b", "a/b", "a", "é", "Z", "x" * 512, "w" * 511]
    for name in names:
        await store.create_stream(BASIN, name)
    listed = [s.name for s in store.list_streams(BASIN)[0]]
    assert listed == sorted(names, key=str.encode)
    # Names longer than a key can hold that share their first 440 bytes are still distinct.
    await store.create_stream(BASIN, "x" * 511)
    assert {"x" * 511, "x" * 512} <= {s.name for s in store.list_streams(BASIN, prefix="x")[0]}
    page, more = store.list_streams(BASIN, prefix="a", limit=1)
    assert [s.name for s in page] == ["a"] and more
    page, more = store.list_streams(BASIN, prefix="a", start_after="a")
    assert [s.name for s in page] == ["a/b"] and not more
    ack = await store.append(BASIN, "x" * 512, make_batch(b"long"))
    assert ack.end.seq_num == 1


async def test_stream_idempotent_create(store: StreamStore) -> None:
    first = await store.create_stream(BASIN, "idem", StreamConfig(), None, request_token="t")
    again = await store.create_stream(BASIN, "idem", StreamConfig(), None, request_token="t")
    assert (first.outcome, again.outcome) == ("created", "noop")
    await expect_error("resource_already_exists", store.create_stream(BASIN, "idem"))


async def test_server_owned_stream_is_created_once_with_its_basin(store: StreamStore) -> None:
    infinite = StreamConfig(retention="infinite")
    records = await asyncio.gather(
        *(store.create_stream_if_absent("own-basin", "s", infinite) for _ in range(3))
    )
    assert len({record.sid for record in records}) == 1
    assert store.get_basin("own-basin").config == BasinConfig()
    again = await store.create_stream_if_absent("own-basin", "s", StreamConfig(retention=60))
    assert again.sid == records[0].sid and again.config.retention == "infinite"


async def test_stream_in_missing_basin(store: StreamStore) -> None:
    await expect_error("basin_not_found", store.create_stream("no-such-basin", "s"))
    await expect_error("basin_not_found", store.append("no-such-basin", "s", make_batch(b"x")))
    await expect_error("stream_not_found", store.append(BASIN, "missing", make_batch(b"x")))


async def test_ensure_stream_outcomes(store: StreamStore) -> None:
    assert (await store.ensure_stream(BASIN, "ens")).outcome == "created"
    assert (await store.ensure_stream(BASIN, "ens")).outcome == "noop"
    changed = await store.ensure_stream(BASIN, "ens", StreamConfig(storage_class="standard"))
    assert changed.outcome == "updated"
    # Replacement semantics: omitted fields go back to defaults.
    assert (await store.ensure_stream(BASIN, "ens")).outcome == "updated"
    assert store.get_stream(BASIN, "ens").config.storage_class == "express"


async def test_stream_deletion_lifecycle(store: StreamStore) -> None:
    await store.create_stream(BASIN, "doomed")
    await store.append(BASIN, "doomed", make_batch(b"1", b"2"))
    await store.delete_stream(BASIN, "doomed")
    await store.delete_stream(BASIN, "doomed")  # idempotent while deleting
    listed = {s.name: s for s in store.list_streams(BASIN)[0]}
    assert listed["doomed"].deleted_at_ms is not None
    await expect_error("stream_deletion_pending", store.append(BASIN, "doomed", make_batch(b"x")))
    await expect_error("stream_deletion_pending", store.check_tail(BASIN, "doomed"))
    await expect_error("stream_deletion_pending", store.create_stream(BASIN, "doomed"))
    await store.jobs.run_once()
    await expect_error("stream_not_found", store.check_tail(BASIN, "doomed"))
    await expect_error("stream_not_found", store.delete_stream(BASIN, "doomed"))
    # The name is reusable, starting again at seq 0.
    await store.create_stream(BASIN, "doomed")
    assert (await store.check_tail(BASIN, "doomed")).seq_num == 0


async def test_basin_deletion_removes_streams_then_basin(store: StreamStore) -> None:
    await store.create_basin("gone-basin")
    for name in ["a", "b", "c"]:
        await store.create_stream("gone-basin", name)
        await store.append("gone-basin", name, make_batch(b"data"))
    await store.delete_basin("gone-basin")
    assert store.get_basin("gone-basin").deleting
    await expect_error("basin_deletion_pending", store.create_stream("gone-basin", "d"))
    await expect_error("basin_deletion_pending", store.create_basin("gone-basin"))
    await expect_error("stream_deletion_pending", store.append("gone-basin", "a", make_batch(b"x")))
    for _ in range(3):
        await store.jobs.run_once()
    with pytest.raises(S2Error) as info:
        store.get_basin("gone-basin")
    assert info.value.code == "basin_not_found"
    assert (await store.create_basin("gone-basin")).outcome == "created"
    assert store.list_streams("gone-basin")[0] == []


async def test_auto_create_on_append_and_read(store: StreamStore) -> None:
    await store.create_basin(
        "auto-basin", BasinConfig(create_stream_on_append=True, create_stream_on_read=False)
    )
    ack = await store.append(
        "auto-basin", "made-by-append", make_batch(b"x"), StreamConfig(storage_class="standard")
    )
    assert ack.end.seq_num == 1
    assert store.get_stream("auto-basin", "made-by-append").config.storage_class == "standard"
    await expect_error("stream_not_found", store.check_tail("auto-basin", "not-by-read"))
    await store.create_basin("auto-read-1", BasinConfig(create_stream_on_read=True))
    assert (await store.check_tail("auto-read-1", "made-by-read")).seq_num == 0


async def test_config_survives_reopen(tmp_path: object, clock: object) -> None:
    path = str(tmp_path)
    first = await StreamStore.open(path, storage=storage_for(path))
    await first.create_basin("persist-1", BasinConfig(create_stream_on_append=True))
    await first.create_stream("persist-1", "s", StreamConfig(retention="infinite"))
    await first.append("persist-1", "s", make_batch(b"x", b"y"))
    await first.close()
    second = await StreamStore.open(path, storage=storage_for(path))
    try:
        assert second.get_basin("persist-1").config.create_stream_on_append
        assert second.get_stream("persist-1", "s").config.retention == "infinite"
        assert (await second.check_tail("persist-1", "s")).seq_num == 2
    finally:
        await second.close()


async def test_a_store_reopened_right_after_it_closed_opens(
    tmp_path: object, clock: ManualClock, storage: str
) -> None:
    """`close` frees the log for the next store at once. On PostgreSQL a closed connection's
    backend drops its locks only once it has exited, some time after the client has gone:
    the writer's lock was still held then, and the reopen refused, until `close` released it."""
    for round_ in range(20):
        opened = await StreamStore.open(str(tmp_path), clock=clock, storage=storage)
        try:
            if round_ == 0:
                await opened.create_basin(BASIN)
            await opened.create_stream(BASIN, f"round-{round_}")
            assert len(opened.list_streams(BASIN)[0]) == round_ + 1
        finally:
            await opened.close()
