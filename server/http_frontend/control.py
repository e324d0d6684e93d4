"""Control plane: basins (`/v1/basins`) and streams (`/v1/streams`) as JSON
(docs/s2-compat.md §4, §5)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

from s2s import names
from s2s.config import (
    STORAGE_CLASSES,
    ResolvedStreamConfig,
    basin_config_from_json,
    basin_config_response_json,
    basin_patch_from_json,
    stream_config_from_json,
    stream_config_to_json,
    stream_patch_from_json,
)
from s2s.errors import S2Error
from s2s.locations import validate_location
from s2s.rfc3339 import format_ms
from server.catalog import BasinRecord, Provisioned, StreamRecord
from server.http_frontend.exchange import Exchange, parse_uint
from server.scoped_store import ScopedStore

REQUEST_TOKEN_HEADER = "s2-request-token"
PROVISION_RESULT_HEADER = "s2-provision-result"


def location_info(name: str) -> dict[str, Any]:
    """S2's `LocationInfo`, with the storage classes SDK 0.13 reads."""
    return {
        "name": name,
        "is_private": False,
        "storage_classes": list(STORAGE_CLASSES),
        "default_storage_class": ResolvedStreamConfig().storage_class,
    }


def rfc3339(ms: int | None) -> str | None:
    return None if ms is None else format_ms(ms)


def basin_info(record: BasinRecord) -> dict[str, Any]:
    return {
        "name": record.name,
        "location": record.location,
        "created_at": rfc3339(record.created_at_ms),
        "deleted_at": rfc3339(record.deleted_at_ms),
        "state": "deleting" if record.deleting else "active",
    }


def stream_info(record: StreamRecord) -> dict[str, Any]:
    return {
        "name": record.name,
        "created_at": rfc3339(record.created_at_ms),
        "deleted_at": rfc3339(record.deleted_at_ms),
        "cipher": record.cipher,
    }


def _config_digest_json(value: Any) -> str:
    """The raw requested config, canonicalized, so a replay with the same config matches."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise S2Error("bad_json", f"{what} must be a JSON object")
    return value


def list_query(exchange: Exchange) -> tuple[str, str, int]:
    query = exchange.query()
    limit: int | None = None
    if "limit" in query:
        limit = parse_uint(query["limit"])
        if limit is None:
            raise S2Error("bad_query", "limit must be an unsigned integer")
    return query.get("prefix", ""), query.get("start_after", ""), names.clamp_list_limit(limit)


@contextlib.contextmanager
def query_errors() -> Iterator[None]:
    """A prefix or start_after the name rules reject is a bad query parameter (400)."""
    try:
        yield
    except S2Error as error:
        if error.code != "invalid":
            raise
        raise S2Error("bad_query", error.message) from None


def _provision_headers(
    provisioned: Provisioned[BasinRecord] | Provisioned[StreamRecord],
) -> list[tuple[str, str]]:
    return [(PROVISION_RESULT_HEADER, provisioned.outcome)]


def _check_location(body: dict[str, Any]) -> None:
    """A basin create or ensure may name its location (absent or null: the default), which can
    only be the one this server has; the legacy `scope` is ignored, as LITE does."""
    if body.get("location") is not None:
        validate_location(body["location"])


def path_basin(name: str) -> str:
    try:
        names.validate_basin_name(name)
    except S2Error as error:
        raise S2Error("bad_path", error.message) from None
    return name


class BasinsApi:
    def __init__(self, store: ScopedStore) -> None:
        self._store = store

    async def list(self, exchange: Exchange) -> None:
        prefix, start_after, limit = list_query(exchange)
        with query_errors():
            records, has_more = self._store.list_basins(prefix, start_after, limit)
        await exchange.respond_json(
            200, {"basins": [basin_info(r) for r in records], "has_more": has_more}
        )

    async def create(self, exchange: Exchange) -> None:
        token = exchange.header(REQUEST_TOKEN_HEADER)
        body = _object(await exchange.json_body(), "request body")
        name = body.get("basin")
        if not isinstance(name, str):
            raise S2Error("bad_json", "`basin` must be a string")
        _check_location(body)
        config_json = body.get("config")
        config = basin_config_from_json(config_json) if config_json is not None else None
        provisioned = await self._store.create_basin(
            name, config, _config_digest_json(config_json), token
        )
        await exchange.respond_json(
            201, basin_info(provisioned.record), _provision_headers(provisioned)
        )

    async def ensure(self, exchange: Exchange, name: str) -> None:
        body = await exchange.json_body(allow_empty=True)
        body = {} if body is None else _object(body, "request body")
        _check_location(body)
        config_json = body.get("config")
        config = basin_config_from_json(config_json) if config_json is not None else None
        provisioned = await self._store.ensure_basin(name, config)
        status = 201 if provisioned.outcome == "created" else 200
        await exchange.respond_json(
            status, basin_info(provisioned.record), _provision_headers(provisioned)
        )

    async def get(self, exchange: Exchange, name: str) -> None:
        record = self._store.get_basin(name)
        await exchange.respond_json(200, basin_config_response_json(record.config))

    async def reconfigure(self, exchange: Exchange, name: str) -> None:
        patch = basin_patch_from_json(await exchange.json_body())
        record = await self._store.reconfigure_basin(name, patch)
        await exchange.respond_json(200, basin_config_response_json(record.config))

    async def delete(self, exchange: Exchange, name: str) -> None:
        await self._store.delete_basin(name)
        await exchange.respond(202)


class StreamsApi:
    def __init__(self, store: ScopedStore) -> None:
        self._store = store

    async def list(self, exchange: Exchange, basin: str) -> None:
        prefix, start_after, limit = list_query(exchange)
        with query_errors():
            records, has_more = self._store.list_streams(basin, prefix, start_after, limit)
        await exchange.respond_json(
            200,
            {"streams": [stream_info(r) for r in records], "has_more": has_more},
        )

    async def create(self, exchange: Exchange, basin: str) -> None:
        token = exchange.header(REQUEST_TOKEN_HEADER)
        body = _object(await exchange.json_body(), "request body")
        name = body.get("stream")
        if not isinstance(name, str):
            raise S2Error("bad_json", "`stream` must be a string")
        config_json = body.get("config")
        config = stream_config_from_json(config_json) if config_json is not None else None
        provisioned = await self._store.create_stream(
            basin, name, config, _config_digest_json(config_json), token
        )
        await exchange.respond_json(
            201, stream_info(provisioned.record), _provision_headers(provisioned)
        )

    async def ensure(self, exchange: Exchange, basin: str, name: str) -> None:
        body = await exchange.json_body(allow_empty=True)
        config = stream_config_from_json(body) if body is not None else None
        provisioned = await self._store.ensure_stream(basin, name, config)
        status = 201 if provisioned.outcome == "created" else 200
        await exchange.respond_json(
            status, stream_info(provisioned.record), _provision_headers(provisioned)
        )

    async def get(self, exchange: Exchange, basin: str, name: str) -> None:
        record = self._store.get_stream(basin, name)
        await exchange.respond_json(200, stream_config_to_json(record.config))

    async def reconfigure(self, exchange: Exchange, basin: str, name: str) -> None:
        patch = stream_patch_from_json(await exchange.json_body())
        record = await self._store.reconfigure_stream(basin, name, patch)
        await exchange.respond_json(200, stream_config_to_json(record.config))

    async def delete(self, exchange: Exchange, basin: str, name: str) -> None:
        await self._store.delete_stream(basin, name)
        await exchange.respond(202)

    async def status(self, exchange: Exchange, basin: str, name: str) -> None:
        """`GET /v1/streams/{stream}/status`, an s2s extension (docs/s2-compat.md §4.3): the
        tail, the trim point, when the stream was last written, whether it is fenced (never
        the fencing token itself, which would let the reader append past the fence), and its
        cipher (so a reader knows to send a key)."""
        status = await self._store.stream_status(basin, name)
        row = status.row
        await exchange.respond_json(
            200,
            {
                "tail": {"seq_num": row.next_seq, "timestamp": row.last_timestamp},
                "trim_point": row.trim_point,
                "last_write_at": rfc3339(row.last_write_ms or None),
                "fenced": row.fencing_token != "",
                "cipher": status.cipher,
            },
        )
