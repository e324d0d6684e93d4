"""The ASGI application: routes on the undecoded path, maps failures to the error table.

Routing uses `scope["raw_path"]` and decodes each segment on its own, so a stream named
`a/b` (sent as `a%2Fb`) or `x/records` is one segment, never a deeper route (docs/s2-compat.md §1).
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any
from urllib.parse import unquote_to_bytes

from s2s import names
from s2s.encryption_key import ENCRYPTION_KEY_HEADER
from s2s.errors import S2Error
from server.http_frontend.access_tokens import AccessTokensApi
from server.http_frontend.console.assets import (
    console_assets,
    redirect_to_console,
    serve_console_file,
)
from server.http_frontend.control import BasinsApi, StreamsApi, location_info, path_basin
from server.http_frontend.errors import internal_error, respond_error
from server.http_frontend.exchange import (
    Exchange,
    Receive,
    Scope,
    Send,
    first_accept,
    media_type,
)
from server.http_frontend.kv import KvApi, path_key, store_ref
from server.http_frontend.lake import LakeApi
from server.http_frontend.metrics import MetricsApi
from server.http_frontend.records import RecordsApi
from server.http_frontend.sessions import S2S_CONTENT_TYPE, SessionsApi
from server.http_frontend.sse import SSE_CONTENT_TYPE, SseApi
from server.kv_store.service import KvService
from server.lake.scoped import ScopedLake
from server.lake.service import Lake
from server.scoped_store import ScopedStore
from server.streamstore import StreamStore

log = logging.getLogger("s2s.http")

BASIN_HEADER = "s2-basin"


class NotFound(Exception):
    """No route: a plain 404, as S2's reference server answers."""


class MethodNotAllowed(Exception):
    """A known route without this method: a plain 405."""


def _segments(raw_path: bytes) -> list[str]:
    parts = raw_path.split(b"?", 1)[0].split(b"/")
    if parts[0] != b"":
        raise NotFound()
    out = []
    for part in parts[1:]:
        try:
            out.append(unquote_to_bytes(part).decode("utf-8"))
        except UnicodeDecodeError:
            raise S2Error("bad_path", "path segment is not valid UTF-8") from None
    return out


def _stream_segment(name: str) -> str:
    try:
        names.validate_stream_name(name)
    except S2Error as error:
        raise S2Error("bad_path", error.message) from None
    return name


class HttpApp:
    """S2 v1 REST API over a `StreamStore` (docs/s2-compat.md §1-§9), plus the lake API.

    Every request but `/health`, `/ping` and the console's files (`/`, `/console/...`, which
    hold no data) is authenticated first (`authorization: Bearer`) and then served through a
    `ScopedStore` of its caller, which checks each operation.
    Open sessions end with `server_draining` when the store drains and with `authn` when their
    token is revoked (`server.append_session`, `server.read_session`).
    """

    def __init__(
        self, store: StreamStore, lake: Lake | None = None, *, open_metrics: bool = False
    ) -> None:
        self._store = store
        self._lake = lake
        self._open_metrics = open_metrics
        """`/metrics` without a token from loopback (`s2s serve --open-metrics`), for a
        Prometheus on the same machine."""
        # The console's files are read here, before serving, not on the loop at first use.
        console_assets()
        self._kv = KvService(store)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        exchange = Exchange(scope, receive, send)
        try:
            await self._route(exchange, _segments(scope.get("raw_path") or scope["path"].encode()))
        except NotFound:
            await exchange.respond(404, b"Not Found", "text/plain")
        except MethodNotAllowed:
            await exchange.respond(405, b"Method Not Allowed", "text/plain")
        except S2Error as error:
            if exchange.response_started:
                # Sessions report their own failures in-band; reaching here is a bug.
                log.error("error after the response started: %s", error)
            else:
                self._store.count_error(error.code)
                await respond_error(exchange, error)
        except Exception as error:
            if exchange.response_started:
                raise
            self._store.count_error("other")
            await respond_error(exchange, internal_error(error))

    async def _route(self, exchange: Exchange, path: list[str]) -> None:
        method = exchange.method
        if path in (["health"], ["ping"]):
            _allow(method, "GET")
            await exchange.respond(200, b"OK", "text/plain")
            return
        if path == [""]:
            _allow(method, "GET")
            await redirect_to_console(exchange)
            return
        if path[:1] == ["console"]:
            _allow(method, "GET")
            await serve_console_file(exchange, path[1:])
            return
        if path == ["metrics"] and self._open_metrics and _from_loopback(exchange):
            principal = self._store.access_tokens.anyone
        else:
            principal = self._store.access_tokens.authenticate(exchange.header("authorization"))
        store = ScopedStore(self._store, principal, exchange.header(ENCRYPTION_KEY_HEADER))
        if path == ["metrics"]:
            _allow(method, "GET")
            lake = None if self._lake is None else ScopedLake(self._lake, principal)
            await MetricsApi(store, lake).prometheus(exchange)
            return
        if path[:1] == ["v2"] or path[:2] == ["v1", "lake"]:
            await self._route_lake(store, exchange, method, path)
            return
        if len(path) < 2 or path[0] != "v1":
            raise NotFound()
        resource, rest = path[1], path[2:]
        if resource == "basins":
            await _route_basins(BasinsApi(store), exchange, method, rest)
        elif resource == "streams":
            await _route_streams(store, exchange, method, rest)
        elif resource == "locations":
            await _route_locations(store, exchange, method, rest)
        elif resource == "access-tokens":
            await _route_access_tokens(AccessTokensApi(store), exchange, method, rest)
        elif resource == "whoami" and not rest:
            _allow(method, "GET")
            await AccessTokensApi(store).whoami(exchange)
        elif resource == "metrics":
            await _route_metrics(MetricsApi(store, None), exchange, method, rest)
        elif resource == "kv":
            # Without the request's encryption key: a store's folded state is kept between
            # calls, and must never answer a caller that could not read the stream itself.
            kv = KvApi(self._kv, ScopedStore(self._store, principal))
            await _route_kv(kv, exchange, method, rest)
        else:
            raise NotFound()

    async def _route_lake(
        self, store: ScopedStore, exchange: Exchange, method: str, path: list[str]
    ) -> None:
        """`/v2/stream[/errors]` and `/v1/lake/...`; all 404 without a lake."""
        if self._lake is None:
            raise NotFound()
        lake = LakeApi(ScopedLake(self._lake, store.principal))
        if path == ["v2", "stream"]:
            _allow(method, "POST")
            await lake.ingest(exchange)
        elif path == ["v2", "stream", "errors"]:
            _allow(method, "GET")
            await lake.dead_letters(exchange)
        elif path == ["v1", "lake", "query"]:
            _allow(method, "POST")
            await lake.query(exchange)
        elif path[:3] == ["v1", "lake", "materializations"]:
            await _route_materializations(lake, exchange, method, path[3:])
        else:
            raise NotFound()


async def _route_basins(api: BasinsApi, exchange: Exchange, method: str, rest: list[str]) -> None:
    if not rest:
        _allow(method, "GET", "POST")
        if method == "GET":
            await api.list(exchange)
        else:
            await api.create(exchange)
        return
    if len(rest) != 1:
        raise NotFound()
    _allow(method, "GET", "PUT", "PATCH", "DELETE")
    name = path_basin(rest[0])
    handlers = {
        "GET": api.get,
        "PUT": api.ensure,
        "PATCH": api.reconfigure,
        "DELETE": api.delete,
    }
    await handlers[method](exchange, name)


async def _route_metrics(api: MetricsApi, exchange: Exchange, method: str, rest: list[str]) -> None:
    if len(rest) > 2:
        raise NotFound()
    _allow(method, "GET")
    if not rest:
        await api.account(exchange)
    elif len(rest) == 1:
        await api.basin(exchange, path_basin(rest[0]))
    else:
        await api.stream(exchange, path_basin(rest[0]), _stream_segment(rest[1]))


async def _route_access_tokens(
    api: AccessTokensApi, exchange: Exchange, method: str, rest: list[str]
) -> None:
    if not rest:
        _allow(method, "GET", "POST")
        if method == "GET":
            await api.list(exchange)
        else:
            await api.issue(exchange)
    elif len(rest) == 1:
        _allow(method, "DELETE")
        await api.revoke(exchange, rest[0])
    else:
        raise NotFound()


async def _route_streams(
    store: ScopedStore, exchange: Exchange, method: str, rest: list[str]
) -> None:
    if rest[1:] == ["status"]:
        _allow(method, "GET")
        basin = _basin_from_header(exchange)
        await StreamsApi(store).status(exchange, basin, _stream_segment(rest[0]))
        return
    if len(rest) > 3 or (len(rest) >= 2 and rest[1] != "records"):
        raise NotFound()
    if len(rest) == 3 and rest[2] != "tail":
        raise NotFound()
    _allow_streams(method, len(rest))
    basin = _basin_from_header(exchange)
    streams = StreamsApi(store)
    if not rest:
        if method == "GET":
            await streams.list(exchange, basin)
        else:
            await streams.create(exchange, basin)
        return
    stream = _stream_segment(rest[0])
    if len(rest) == 1:
        handlers = {
            "GET": streams.get,
            "PUT": streams.ensure,
            "PATCH": streams.reconfigure,
            "DELETE": streams.delete,
        }
        await handlers[method](exchange, basin, stream)
    elif len(rest) == 3:
        await RecordsApi(store).check_tail(exchange, basin, stream)
    else:
        await _route_records(store, exchange, method, basin, stream)


async def _route_records(
    store: ScopedStore, exchange: Exchange, method: str, basin: str, stream: str
) -> None:
    s2s = media_type(exchange.header("content-type")) == S2S_CONTENT_TYPE
    if method == "POST":
        if s2s:
            await SessionsApi(store).append_session(exchange, basin, stream)
        else:
            await RecordsApi(store).append(exchange, basin, stream)
    elif s2s:
        await SessionsApi(store).read_session(exchange, basin, stream)
    elif first_accept(exchange.header("accept")) == SSE_CONTENT_TYPE:
        await SseApi(store).read(exchange, basin, stream)
    else:
        await RecordsApi(store).read(exchange, basin, stream)


async def _route_kv(api: KvApi, exchange: Exchange, method: str, rest: list[str]) -> None:
    """`/v1/kv/{basin}/{store}[/keys[/{key}[/history]] | /commit]`."""
    if len(rest) < 2:
        raise NotFound()
    ref = store_ref(rest[0], rest[1])
    below = rest[2:]
    if not below:
        _allow(method, "GET")
        await api.info(exchange, ref)
    elif below == ["keys"]:
        _allow(method, "GET")
        await api.list(exchange, ref)
    elif below == ["commit"]:
        _allow(method, "POST")
        await api.commit(exchange, ref)
    elif below[0] == "keys" and (len(below) == 2 or below[2:] == ["history"]):
        key = path_key(below[1])
        if len(below) == 3:
            _allow(method, "GET")
            await api.history(exchange, ref, key)
            return
        _allow(method, "GET", "PUT", "DELETE")
        handlers = {"GET": api.get, "PUT": api.put, "DELETE": api.delete}
        await handlers[method](exchange, ref, key)
    else:
        raise NotFound()


async def _route_locations(
    store: ScopedStore, exchange: Exchange, method: str, rest: list[str]
) -> None:
    if not rest:
        _allow(method, "GET")
        await exchange.respond_json(200, [location_info(n) for n in store.list_locations()])
    elif rest == ["default"]:
        _allow(method, "GET", "PUT")
        if method == "PUT":
            name = store.set_default_location(await exchange.json_body())
        else:
            name = store.default_location()
        await exchange.respond_json(200, location_info(name))
    else:
        raise NotFound()


async def _route_materializations(
    lake: LakeApi, exchange: Exchange, method: str, rest: list[str]
) -> None:
    if not rest:
        _allow(method, "GET", "POST")
        if method == "GET":
            await lake.list_materializations(exchange)
        else:
            await lake.create_materialization(exchange)
    elif len(rest) == 1:
        _allow(method, "GET", "DELETE")
        if method == "GET":
            await lake.get_materialization(exchange, rest[0])
        else:
            await lake.delete_materialization(exchange, rest[0])
    elif len(rest) == 2 and rest[1] in ("pause", "resume"):
        _allow(method, "POST")
        if rest[1] == "pause":
            await lake.pause_materialization(exchange, rest[0])
        else:
            await lake.resume_materialization(exchange, rest[0])
    else:
        raise NotFound()


def _allow(method: str, *allowed: str) -> None:
    if method not in allowed:
        raise MethodNotAllowed()


def _allow_streams(method: str, depth: int) -> None:
    allowed: dict[int, tuple[str, ...]] = {
        0: ("GET", "POST"),
        1: ("GET", "PUT", "PATCH", "DELETE"),
        2: ("GET", "POST"),
        3: ("GET",),
    }
    _allow(method, *allowed[depth])


def _from_loopback(exchange: Exchange) -> bool:
    client = exchange.scope.get("client")
    if not client:
        return False
    try:
        return ipaddress.ip_address(client[0]).is_loopback
    except ValueError:
        return False


def _basin_from_header(exchange: Exchange) -> str:
    value = exchange.header(BASIN_HEADER)
    if value is None:
        raise S2Error("bad_header", "missing s2-basin header")
    try:
        names.validate_basin_name(value)
    except S2Error as error:
        raise S2Error("bad_header", f"invalid s2-basin header: {error.message}") from None
    return value


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message: dict[str, Any] = dict(await receive())
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
