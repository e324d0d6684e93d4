"""Key-value stores as JSON (`/v1/kv/{basin}/{store}/...`; README "A key-value store on
streams", docs/adr/0015-kv-store.md). A store's revision is its stream's tail; an entry's
`seq_num` and `timestamp` are those of the change that wrote it.

    GET    /v1/kv/{basin}/{store}                     {"basin", "store", "revision", "keys"}
    GET    .../keys?prefix=&start_after=&limit=&values=true
                                                      {"revision", "keys": [...], "has_more"}
    GET    .../keys/{key}                             {"key", "value", "seq_num", ...}
    PUT    .../keys/{key}[?expected_revision=R]       {"value": "..."}
    DELETE .../keys/{key}[?expected_revision=R]       404 key_not_found if absent
    GET    .../keys/{key}/history?limit=              {"key", "history": [...]}
    POST   .../commit  {"changes": [{"op": "put"|"delete", "key", "value"}],
                        "expected_revision": R}       {"revision"}

A write with `expected_revision` answers `412 kv_conflict` (with the store's `revision`) if a
change landed after R. Names, keys and values follow `s2s/kv_format.py`; the path's key is
one segment (percent-encode `/` as `%2F`).
"""

from __future__ import annotations

from typing import Any

from s2s.errors import S2Error
from s2s.kv_format import (
    Change,
    key_bytes,
    validate_store_name,
)
from s2s.kv_state import KvChange
from server.http_frontend.control import path_basin
from server.http_frontend.exchange import Exchange, parse_uint
from server.kv_store.service import KvService, StoreRef
from server.scoped_store import ScopedStore
from server.sequencer import AppendAck

LIST_LIMIT_MAX = 1000
LIST_VALUES_CHARS_MAX = 4 * 1024 * 1024
"""A listing with values stops (`has_more`) once they reach this many characters, after at
least one entry: a thousand values of up to 1 MiB each would make a 1 GiB answer."""
HISTORY_LIMIT_DEFAULT = 100
HISTORY_LIMIT_MAX = 1000


def store_ref(basin: str, store: str) -> StoreRef:
    name = path_basin(basin)
    try:
        validate_store_name(store)
    except S2Error as error:
        raise S2Error("bad_path", error.message) from None
    return StoreRef(name, store)


def path_key(key: str) -> str:
    try:
        key_bytes(key)
    except S2Error as error:
        raise S2Error("bad_path", error.message) from None
    return key


class KvApi:
    def __init__(self, service: KvService, store: ScopedStore) -> None:
        self._service = service
        self._store = store

    async def info(self, exchange: Exchange, ref: StoreRef) -> None:
        state = (await self._service.view(self._store, ref)).state
        await exchange.respond_json(
            200,
            {
                "basin": ref.basin,
                "store": ref.name,
                "revision": state.position,
                "keys": len(state.entries),
            },
        )

    async def list(self, exchange: Exchange, ref: StoreRef) -> None:
        query = exchange.query()
        limit = _uint_query(query, "limit", LIST_LIMIT_MAX) or LIST_LIMIT_MAX
        values = _bool_query(query, "values")
        prefix, start_after = query.get("prefix", ""), query.get("start_after", "")
        view = await self._service.view(self._store, ref)
        keys, start = view.keys_from(prefix, start_after)
        listed: list[dict[str, Any]] = []
        chars = 0
        index = start
        while index < len(keys) and len(listed) < limit and keys[index].startswith(prefix):
            if values and listed and chars >= LIST_VALUES_CHARS_MAX:
                break
            key = keys[index]
            entry = view.state.entries[key]
            item: dict[str, Any] = {
                "key": key,
                "seq_num": entry.seq_num,
                "timestamp": entry.timestamp,
            }
            if values:
                item["value"] = entry.value
                chars += len(entry.value)
            listed.append(item)
            index += 1
        has_more = index < len(keys) and keys[index].startswith(prefix)
        await exchange.respond_json(
            200, {"revision": view.state.position, "keys": listed, "has_more": has_more}
        )

    async def get(self, exchange: Exchange, ref: StoreRef, key: str) -> None:
        state = (await self._service.view(self._store, ref)).state
        entry = state.entries.get(key)
        if entry is None:
            raise S2Error("key_not_found", f"no key {key!r} in store {ref.name!r}")
        await exchange.respond_json(
            200,
            {
                "key": key,
                "value": entry.value,
                "seq_num": entry.seq_num,
                "timestamp": entry.timestamp,
                "revision": state.position,
            },
        )

    async def put(self, exchange: Exchange, ref: StoreRef, key: str) -> None:
        expected = _uint_query(exchange.query(), "expected_revision")
        body = _fields(await exchange.json_body(), "request body", required=("value",))
        change = Change("put", key, _string(body["value"], "value"))
        ack = await self._service.write(self._store, ref, [change], expected)
        await _respond_written(exchange, ack, key)

    async def delete(self, exchange: Exchange, ref: StoreRef, key: str) -> None:
        expected = _uint_query(exchange.query(), "expected_revision")
        change = Change("delete", key)
        ack = await self._service.write(self._store, ref, [change], expected, must_exist=[key])
        await _respond_written(exchange, ack, key)

    async def history(self, exchange: Exchange, ref: StoreRef, key: str) -> None:
        limit = _uint_query(exchange.query(), "limit", HISTORY_LIMIT_MAX)
        history = await self._service.history(self._store, ref, key)
        changes = history.changes(HISTORY_LIMIT_DEFAULT if limit is None else limit)
        await exchange.respond_json(
            200, {"key": key, "history": [_change_json(change) for change in changes]}
        )

    async def commit(self, exchange: Exchange, ref: StoreRef) -> None:
        body = _fields(
            await exchange.json_body(),
            "request body",
            required=("changes",),
            optional=("expected_revision",),
        )
        changes_json = body["changes"]
        if not isinstance(changes_json, list):
            raise S2Error("bad_json", "`changes` must be a list of changes")
        changes = [_change(item, index) for index, item in enumerate(changes_json)]
        expected = body.get("expected_revision")
        if expected is not None and (type(expected) is not int or expected < 0):
            raise S2Error("bad_json", "`expected_revision` must be a revision (an integer >= 0)")
        ack = await self._service.write(self._store, ref, changes, expected)
        await exchange.respond_json(200, {"revision": ack.end.seq_num})


async def _respond_written(exchange: Exchange, ack: AppendAck, key: str) -> None:
    await exchange.respond_json(
        200,
        {
            "key": key,
            "seq_num": ack.start.seq_num,
            "timestamp": ack.end.timestamp,
            "revision": ack.end.seq_num,
        },
    )


def _change_json(change: KvChange) -> dict[str, Any]:
    return {
        "op": change.op,
        "value": change.value,
        "seq_num": change.seq_num,
        "timestamp": change.timestamp,
    }


def _change(item: Any, index: int) -> Change:
    where = f"changes[{index}]"
    fields = _fields(item, where, required=("op", "key"), optional=("value",))
    key = _string(fields["key"], f"{where}.key")
    if fields["op"] == "put":
        if "value" not in fields:
            raise S2Error("bad_json", f"{where}: a put needs a `value`")
        return Change("put", key, _string(fields["value"], f"{where}.value"))
    if fields["op"] == "delete":
        if "value" in fields:
            raise S2Error("bad_json", f"{where}: a delete takes no `value`")
        return Change("delete", key)
    raise S2Error("bad_json", f'{where}.op must be "put" or "delete"')


def _fields(
    value: Any, what: str, required: tuple[str, ...], optional: tuple[str, ...] = ()
) -> dict[str, Any]:
    """A JSON object with these fields and no others."""
    if not isinstance(value, dict):
        raise S2Error("bad_json", f"{what} must be a JSON object")
    missing = [name for name in required if name not in value]
    if missing:
        raise S2Error("bad_json", f"{what} needs `{missing[0]}`")
    unknown = sorted(set(value) - set(required) - set(optional))
    if unknown:
        raise S2Error("bad_json", f"{what} has an unknown field `{unknown[0]}`")
    return value


def _string(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise S2Error("bad_json", f"`{what}` must be a string")
    return value


def _uint_query(query: dict[str, str], name: str, maximum: int | None = None) -> int | None:
    if name not in query:
        return None
    value = parse_uint(query[name]) if maximum is None else parse_uint(query[name], maximum)
    if value is None:
        bound = "" if maximum is None else f" up to {maximum}"
        raise S2Error("bad_query", f"{name} must be an unsigned integer{bound}")
    return value


def _bool_query(query: dict[str, str], name: str) -> bool:
    value = query.get(name, "false")
    if value not in ("true", "false"):
        raise S2Error("bad_query", f"{name} must be true or false")
    return value == "true"
