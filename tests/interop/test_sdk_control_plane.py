"""Control plane through the official SDK: basin and stream lifecycles
(docs/s2-compat.md §4, §5)."""

from __future__ import annotations

import pytest
from s2_sdk import (
    S2,
    BasinConfig,
    EnsureStatus,
    S2ServerError,
    StreamConfig,
    Timestamping,
    TimestampingMode,
)


async def test_basin_lifecycle(sdk: S2, basin_name: str) -> None:
    info = await sdk.create_basin(basin_name)
    assert info.name == basin_name and info.deleted_at is None
    assert info.location == "local"

    page = await sdk.list_basins(prefix=basin_name)
    assert [b.name for b in page.items] == [basin_name]

    config = await sdk.get_basin_config(basin_name)
    assert config.create_stream_on_append is False and config.create_stream_on_read is False

    updated = await sdk.reconfigure_basin(
        basin_name, config=BasinConfig(create_stream_on_append=True)
    )
    assert updated.create_stream_on_append is True
    assert (await sdk.get_basin_config(basin_name)).create_stream_on_append is True

    with pytest.raises(S2ServerError) as exists:
        await sdk.create_basin(basin_name)
    assert exists.value.status_code == 409 and exists.value.code == "resource_already_exists"

    await sdk.delete_basin(basin_name)
    listed = await sdk.list_basins(prefix=basin_name)
    assert all(b.deleted_at is not None for b in listed.items)
    await sdk.delete_basin(basin_name, ignore_not_found=True)


async def test_missing_basin_is_404(sdk: S2, basin_name: str) -> None:
    with pytest.raises(S2ServerError) as missing:
        await sdk.get_basin_config(basin_name)
    assert missing.value.status_code == 404 and missing.value.code == "basin_not_found"


async def test_ensure_basin_reports_created_then_unchanged_then_updated(
    sdk: S2, basin_name: str
) -> None:
    first = await sdk.ensure_basin(basin_name)
    assert first.status == EnsureStatus.CREATED
    again = await sdk.ensure_basin(basin_name)
    assert again.status == EnsureStatus.CONFIG_UNCHANGED
    changed = await sdk.ensure_basin(basin_name, config=BasinConfig(create_stream_on_read=True))
    assert changed.status == EnsureStatus.CONFIG_UPDATED
    assert (await sdk.get_basin_config(basin_name)).create_stream_on_read is True


async def test_stream_lifecycle(sdk: S2, basin_name: str) -> None:
    await sdk.create_basin(basin_name)
    basin = sdk.basin(basin_name)
    # A slash and a would-be route suffix in the name prove routing on the undecoded path.
    name = "orders/x/records"
    info = await basin.create_stream(
        name, config=StreamConfig(timestamping=Timestamping(mode=TimestampingMode.ARRIVAL))
    )
    assert info.name == name

    config = await basin.get_stream_config(name)
    assert config.storage_class == "express"
    assert config.timestamping is not None
    assert config.timestamping.mode == TimestampingMode.ARRIVAL

    reconfigured = await basin.reconfigure_stream(
        name, config=StreamConfig(storage_class="standard")
    )
    assert reconfigured.storage_class == "standard"
    assert reconfigured.timestamping is not None
    assert reconfigured.timestamping.mode == TimestampingMode.ARRIVAL

    assert [s.name for s in (await basin.list_streams()).items] == [name]
    ensured = await basin.ensure_stream(name)
    assert ensured.status == EnsureStatus.CONFIG_UPDATED  # replacement: back to defaults

    await basin.delete_stream(name)
    # Background deletion may finish at once, so "being deleted" and "gone" are both right.
    with pytest.raises(S2ServerError) as deleted:
        await basin.get_stream_config(name)
    assert deleted.value.code in ("stream_deletion_pending", "stream_not_found")
    await basin.delete_stream(name, ignore_not_found=True)


async def test_unknown_stream_is_404(sdk: S2, basin_name: str) -> None:
    await sdk.create_basin(basin_name)
    with pytest.raises(S2ServerError) as missing:
        await sdk.basin(basin_name).get_stream_config("nope")
    assert missing.value.status_code == 404 and missing.value.code == "stream_not_found"


async def test_basin_default_storage_class_reads_back_as_s2_shows_it(
    sdk: S2, basin_name: str
) -> None:
    """A basin's stream defaults show the storage class they give streams: express unless set
    (S2 shows it so; null was LITE's "not set here"). With no defaults at all, null is right."""
    retention_only = BasinConfig(default_stream_config=StreamConfig(retention_policy=3600))
    await sdk.create_basin(basin_name, config=retention_only)
    config = await sdk.get_basin_config(basin_name)
    assert config.default_stream_config is not None
    assert config.default_stream_config.storage_class == "express"
    assert config.default_stream_config.retention_policy == 3600
    # Shown, not stored: an ensure with the same request is still a no-op.
    ensured = await sdk.ensure_basin(basin_name, config=retention_only)
    assert ensured.status == EnsureStatus.CONFIG_UNCHANGED

    standard = BasinConfig(default_stream_config=StreamConfig(storage_class="standard"))
    reconfigured = await sdk.reconfigure_basin(basin_name, config=standard)
    assert reconfigured.default_stream_config is not None
    assert reconfigured.default_stream_config.storage_class == "standard"
    assert reconfigured.default_stream_config.retention_policy == 3600
    stream = await sdk.basin(basin_name).create_stream("s")
    assert (await sdk.basin(basin_name).get_stream_config(stream.name)).storage_class == "standard"

    bare = basin_name + "-bare"
    await sdk.create_basin(bare)
    assert (await sdk.get_basin_config(bare)).default_stream_config is None
