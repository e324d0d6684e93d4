"""The `StreamStore` as one caller may use it: every operation checked against its token.

Frontends and the core sessions reach the store only through a `ScopedStore`, made per call
from the caller's `Principal`, so each operation is checked in the method that performs it,
against what it will do:

- an append needs `append`, and `fence` or `trim` too when its batch carries those commands;
- a stream that would be created on the fly (the basin's `create_stream_on_append` /
  `create_stream_on_read`) is created only if the token may `create-stream` it; otherwise the
  call fails as it would without that basin setting;
- an ensure (PUT) may create or reconfigure, so it needs both permissions;
- lists return only what the scope covers, and narrow the query to it, so pages stay full;
- metrics need `account-metrics`, `basin-metrics` on the basin or `stream-metrics` on the
  stream; the Prometheus text, which covers every basin, `account-metrics`.

Reads, sessions and the operations that bypass the store's facade (tokens, metrics) are
reported to the usage accounting (server/usage) here, once each succeeded.

With `auto_prefix_streams`, the token's stream names are relative to its stream prefix: it is
added to every name that comes in and taken off every name that goes out.

The caller's encryption key (`s2-encryption-key`), like its token, belongs to the call: appends
and reads pass it on, and it is checked (its length) only by them, as S2 does.

A refused call raises `permission_denied` before it changes anything.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncGenerator, Callable
from typing import TypeVar

from prometheus_client.registry import Collector

from s2s.config import BasinConfig, BasinConfigPatch, StreamConfig, StreamConfigPatch
from s2s.encryption_key import EncryptionKey
from s2s.errors import S2Error, server_draining
from s2s.locations import LOCAL, validate_location
from s2s.records import Fence, ValidatedBatch
from server.access.scope import ResourceSet
from server.access.tokens import IssueRequest, Principal, TokenInfo
from server.catalog import BasinRecord, Provisioned, RequestedConfig, StreamRecord
from server.reader import ReadLimits, ReadOutput, ReadStart
from server.sequencer import AppendAck, StreamPosition
from server.sequencers import AutoCreate
from server.streamstore import StreamStatus, StreamStore
from server.usage.query import Metric, MetricsQuery


class ScopedStore:
    """`StreamStore`'s operations for one principal; stream names as the principal sees them."""

    def __init__(
        self, store: StreamStore, principal: Principal, encryption_key: str | None = None
    ) -> None:
        self._store = store
        self.principal = principal
        self._prefix = principal.stream_prefix
        self._encryption_key = encryption_key
        """The header's value as sent; `_key` checks it when an append or read needs it."""

    def _key(self) -> EncryptionKey | None:
        return EncryptionKey.from_header(self._encryption_key)

    def now_s(self) -> int:
        """The server's clock, in Unix seconds (what metrics queries are checked against)."""
        return self._store.clock.now_ms() // 1000

    def end_error(self) -> S2Error | None:
        """Why the caller's calls that wait must end now, if they must: the server is
        draining (`server_draining`), or the caller's token was revoked or expired (`authn`)."""
        if self._store.draining.is_set():
            return server_draining()
        if self.principal.ended.is_set():
            return S2Error("authn", "the access token was revoked or has expired")
        return None

    async def ended(self) -> S2Error:
        """Wait until `end_error` has an answer, and return it."""
        events = (self._store.draining, self.principal.ended)
        if not any(event.is_set() for event in events):
            waits = [asyncio.ensure_future(event.wait()) for event in events]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()
        error = self.end_error()
        assert error is not None, "one of the events is set"
        return error

    # --- access tokens -----------------------------------------------------------------------

    async def issue_access_token(self, request: IssueRequest) -> str:
        secret = await self._store.access_tokens.issue(self.principal, request)
        self._store.count_operation("issue-access-token")
        return secret

    def list_access_tokens(
        self, prefix: str, start_after: str, limit: int
    ) -> tuple[list[TokenInfo], bool]:
        page = self._store.access_tokens.list(self.principal, prefix, start_after, limit)
        self._store.count_operation("list-access-tokens")
        return page

    def whoami(self) -> tuple[TokenInfo, bool]:
        """The caller's own token, and whether access control is on (`--no-auth`: off, and
        every caller holds `OPEN_ACCESS`)."""
        return self.principal.info, self._store.access_tokens.required

    async def revoke_access_token(self, token_id: str) -> None:
        await self._store.access_tokens.revoke(self.principal, token_id)
        self._store.count_operation("revoke-access-token")

    # --- basins ------------------------------------------------------------------------------

    def list_basins(
        self, prefix: str = "", start_after: str = "", limit: int | None = None
    ) -> tuple[list[BasinRecord], bool]:
        self.principal.require("list-basins")
        return _list_within(
            self.principal.info.scope.basins,
            prefix,
            limit,
            lambda query, count: self._store.list_basins(query, start_after, count),
        )

    async def create_basin(
        self,
        name: str,
        config: BasinConfig | None = None,
        requested_config: RequestedConfig | None = None,
        request_token: str | None = None,
    ) -> Provisioned[BasinRecord]:
        self.principal.require("create-basin", basin=name)
        return await self._store.create_basin(name, config, requested_config, request_token)

    async def ensure_basin(
        self, name: str, config: BasinConfig | None = None
    ) -> Provisioned[BasinRecord]:
        self.principal.require("create-basin", basin=name)
        self.principal.require("reconfigure-basin", basin=name)
        return await self._store.ensure_basin(name, config)

    def get_basin(self, name: str) -> BasinRecord:
        self.principal.require("get-basin-config", basin=name)
        return self._store.get_basin(name)

    async def reconfigure_basin(self, name: str, patch: BasinConfigPatch) -> BasinRecord:
        self.principal.require("reconfigure-basin", basin=name)
        return await self._store.reconfigure_basin(name, patch)

    async def delete_basin(self, name: str) -> None:
        self.principal.require("delete-basin", basin=name)
        await self._store.delete_basin(name)

    # --- streams -----------------------------------------------------------------------------

    def list_streams(
        self, basin: str, prefix: str = "", start_after: str = "", limit: int | None = None
    ) -> tuple[list[StreamRecord], bool]:
        self.principal.require("list-streams", basin=basin)
        full_start_after = self._prefix + start_after if start_after else ""
        records, has_more = _list_within(
            self.principal.info.scope.streams,
            self._prefix + prefix,
            limit,
            lambda query, count: self._store.list_streams(basin, query, full_start_after, count),
        )
        return [self._outgoing(r) for r in records], has_more

    async def create_stream(
        self,
        basin: str,
        name: str,
        config: StreamConfig | None = None,
        requested_config: RequestedConfig | None = None,
        request_token: str | None = None,
    ) -> Provisioned[StreamRecord]:
        full = self._stream("create-stream", basin, name)
        provisioned = await self._store.create_stream(
            basin, full, config, requested_config, request_token
        )
        return Provisioned(provisioned.outcome, self._outgoing(provisioned.record))

    async def ensure_stream(
        self, basin: str, name: str, config: StreamConfig | None = None
    ) -> Provisioned[StreamRecord]:
        full = self._stream("create-stream", basin, name)
        self.principal.require("reconfigure-stream", basin=basin, stream=full)
        provisioned = await self._store.ensure_stream(basin, full, config)
        return Provisioned(provisioned.outcome, self._outgoing(provisioned.record))

    def get_stream(self, basin: str, name: str) -> StreamRecord:
        full = self._stream("get-stream-config", basin, name)
        return self._outgoing(self._store.get_stream(basin, full))

    async def reconfigure_stream(
        self, basin: str, name: str, patch: StreamConfigPatch
    ) -> StreamRecord:
        full = self._stream("reconfigure-stream", basin, name)
        return self._outgoing(await self._store.reconfigure_stream(basin, full, patch))

    async def delete_stream(self, basin: str, name: str) -> None:
        await self._store.delete_stream(basin, self._stream("delete-stream", basin, name))

    # --- data plane --------------------------------------------------------------------------

    async def append(
        self,
        basin: str,
        stream: str,
        batch: ValidatedBatch,
        create_config: StreamConfig | None = None,
    ) -> AppendAck:
        return await (await self.submit(basin, stream, batch, create_config))

    async def submit(
        self,
        basin: str,
        stream: str,
        batch: ValidatedBatch,
        create_config: StreamConfig | None = None,
        *,
        paced: bool = False,
    ) -> asyncio.Future[AppendAck]:
        """Sequence the batch once it is allowed. Over the token's rate limit, a `paced`
        append (a session's) waits, any other is refused with `rate_limited`."""
        full = self._stream("append", basin, stream)
        for command in batch.commands:
            operation = "fence" if isinstance(command, Fence) else "trim"
            self.principal.require(operation, basin=basin, stream=full)
        limiter = self.principal.limiter
        if limiter is not None:
            if paced:
                await limiter.pace(batch.metered_bytes)
            else:
                limiter.admit(batch.metered_bytes)
        return await self._store.submit(
            basin,
            full,
            batch,
            create_config,
            may_create=self._may_create(basin, full),
            key=self._key(),
        )

    async def require_stream(
        self,
        basin: str,
        stream: str,
        auto_create: AutoCreate | None = None,
        create_config: StreamConfig | None = None,
    ) -> None:
        full = self._stream(auto_create or "check-tail", basin, stream)
        key = self._key() if auto_create is not None else None  # appends and reads need it
        if not self._may_create(basin, full):
            auto_create = None
        await self._store.require_stream(basin, full, auto_create, create_config, key=key)

    async def check_tail(self, basin: str, stream: str) -> StreamPosition:
        full = self._stream("check-tail", basin, stream)
        return await self._store.check_tail(basin, full, may_create=self._may_create(basin, full))

    async def stream_status(self, basin: str, stream: str) -> StreamStatus:
        """The stream's durable tail row; what `check-tail` may see, and no more is shown
        of it (`fenced` as a flag, never the token). Never creates the stream."""
        return await self._store.stream_status(basin, self._stream("check-tail", basin, stream))

    async def read(
        self,
        basin: str,
        stream: str,
        start: ReadStart,
        limits: ReadLimits,
        create_config: StreamConfig | None = None,
    ) -> ReadOutput:
        full = self._stream("read", basin, stream)
        output = await self._store.read(
            basin,
            full,
            start,
            limits,
            create_config,
            may_create=self._may_create(basin, full),
            key=self._key(),
        )
        self._store.count_read(basin, output)
        return output

    async def read_session(
        self,
        basin: str,
        stream: str,
        start: ReadStart,
        limits: ReadLimits,
        create_config: StreamConfig | None = None,
    ) -> AsyncGenerator[ReadOutput, None]:
        full = self._stream("read", basin, stream)
        outputs = await self._store.read_session(
            basin,
            full,
            start,
            limits,
            create_config,
            may_create=self._may_create(basin, full),
            key=self._key(),
        )
        return self._store.counted_session(basin, outputs)

    def count_error(self, code: str) -> None:
        """A failure was reported in-band (a session's terminal frame, an SSE `error` event)."""
        self._store.count_error(code)

    def session_opened(self, kind: str) -> None:
        self._store.session_opened(kind)

    def session_closed(self, kind: str) -> None:
        self._store.session_closed(kind)

    # --- locations (one: s2s/locations.py) -------------------------------------------------

    def list_locations(self) -> list[str]:
        self.principal.require("list-locations")
        self._store.count_operation("list-locations")
        return [LOCAL]

    def default_location(self) -> str:
        self.principal.require("get-default-location")
        self._store.count_operation("get-default-location")
        return LOCAL

    def set_default_location(self, requested: object) -> str:
        """`requested` as the client sent it: only `local` is accepted (nothing to store)."""
        self.principal.require("set-default-location")
        validate_location(requested)
        self._store.count_operation("set-default-location")
        return LOCAL

    # --- metrics -----------------------------------------------------------------------------

    async def account_metrics(self, query: MetricsQuery) -> list[Metric]:
        self.principal.require("account-metrics")
        metrics = await self._store.account_metrics(query)
        self._store.count_operation("account-metrics")
        return metrics

    async def basin_metrics(self, basin: str, query: MetricsQuery) -> list[Metric]:
        self.principal.require("basin-metrics", basin=basin)
        metrics = await self._store.basin_metrics(basin, query)
        self._store.count_operation("basin-metrics")
        return metrics

    async def stream_metrics(self, basin: str, stream: str, query: MetricsQuery) -> list[Metric]:
        full = self._stream("stream-metrics", basin, stream)
        metrics = await self._store.stream_metrics(basin, full, query)
        self._store.count_operation("stream-metrics")
        return metrics

    def prometheus_collector(self) -> Collector:
        """The server's Prometheus metrics: they cover every basin, so `account-metrics`."""
        self.principal.require("account-metrics")
        return self._store.prometheus_collector()

    # --- names -------------------------------------------------------------------------------

    def _stream(self, operation: str, basin: str, name: str) -> str:
        """The stored name of the caller's stream `name`, once `operation` on it is allowed."""
        full = self._prefix + name
        self.principal.require(operation, basin=basin, stream=full)
        return full

    def _may_create(self, basin: str, full: str) -> bool:
        return self.principal.permits("create-stream", basin=basin, stream=full)

    def _outgoing(self, record: StreamRecord) -> StreamRecord:
        if not self._prefix:
            return record
        assert record.name.startswith(self._prefix), "only streams in scope are returned"
        return dataclasses.replace(record, name=record.name[len(self._prefix) :])


def _narrow(resources: ResourceSet | None, prefix: str) -> ResourceSet | None:
    """The names both a scope's `resources` and a list query's `prefix` cover, or None if
    they share none."""
    if resources is None or resources.exact == "":
        return None
    if resources.exact is not None:
        return resources if resources.exact.startswith(prefix) else None
    assert resources.prefix is not None
    if prefix.startswith(resources.prefix):
        return ResourceSet(prefix=prefix)
    if resources.prefix.startswith(prefix):
        return resources
    return None


Named = TypeVar("Named", BasinRecord, StreamRecord)


def _list_within(
    resources: ResourceSet | None,
    prefix: str,
    limit: int | None,
    list_page: Callable[[str, int | None], tuple[list[Named], bool]],
) -> tuple[list[Named], bool]:
    """A page of the names both `resources` and the query's `prefix` cover, asking the store
    (`list_page(prefix, limit)`) only for those, so a page is as full as the store's."""
    narrowed = _narrow(resources, prefix)
    if narrowed is None:
        return [], False
    if narrowed.exact is not None:
        records, _ = list_page(narrowed.exact, 1)
        return [r for r in records if r.name == narrowed.exact], False
    return list_page(narrowed.prefix or "", limit)
