"""The asynchronous client: basins, streams, appends (unary, sessions, producer), reads, and
the lake (materializations and read-only SQL).

Retry policy: a call is retried (up to `retries` times, with backoff) only when repeating it
cannot duplicate data: reads, listings, config lookups, tail checks, materialization lookups,
SQL queries (always read-only), and creates that carry a request token. Materialization
create, pause, resume and delete carry no token and are not retried, like reconfigures: a
repeat after a lost response would fail (e.g. `resource_already_exists`) although the first
call succeeded. Appends are not retried by `Stream.append` and `AppendSession`: a failure after
the server received the batch would leave it unknown whether the batch was applied. A
`ProducerSession` (batches) and the `Producer` over it (records) are idempotent by default (each
batch carries the `s2s-producer` header, docs/adr/0016): they send every unacknowledged batch
again through a new session when one is lost, and the server writes each batch once.
Otherwise, to make appends safely retryable, set `match_seq_num`: a repeat of an applied batch
then fails with `SeqNumMismatchError` instead of writing twice. Read sessions that lose their
connection resume from the record after the last one they delivered.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict, TypeVar, Unpack

import grpc
import pyarrow as pa
from grpc import aio

from client._errors import S2SError, error_from_rpc, error_from_status
from client._kv import KvStore
from client._request_log import RequestLog
from client._request_log import enabled as request_log_enabled
from s2s.config import BasinConfig, StreamConfig
from s2s.convert import (
    basin_config_from_proto,
    basin_config_to_proto,
    stream_config_from_proto,
    stream_config_to_proto,
)
from s2s.encryption_key import ENCRYPTION_KEY_HEADER, EncryptionKey
from s2s.errors import ERROR_KINDS
from s2s.kv_format import DEFAULT_BASIN
from s2s.logs import fields as log_fields
from s2s.records import (
    BATCH_METERED_BYTES_MAX,
    BATCH_RECORDS_MAX,
    PRODUCER_HEADER,
    PRODUCER_WINDOW_BATCHES,
    metered_size,
    producer_header_value,
)
from s2s.v1 import access_pb2 as apb
from s2s.v1 import control_pb2 as cpb
from s2s.v1 import lake_pb2 as lpb
from s2s.v1 import lake_pb2_grpc as lake_services
from s2s.v1 import records_pb2 as pb
from s2s.v1 import services_pb2 as spb
from s2s.v1 import services_pb2_grpc as services
from s2s.wire import append_input_bytes, with_append_input

T = TypeVar("T")

log = logging.getLogger(__name__)

MESSAGE_BYTES_MAX = 8 * 1024 * 1024
RETRYABLE_STATUSES = (grpc.StatusCode.UNAVAILABLE,)
BACKOFF_MAX_S = 2.0
PRODUCER_RETRY_S_MAX = 30.0
"""How long an idempotent `Producer` goes on opening new sessions and resending its
unacknowledged batches, from the first failure with no ack since, before it gives up."""


@dataclass(frozen=True)
class SqlResult:
    """A query's rows, and whether the server cut them off at the row limit (or at the
    message size cap) so that more rows matched than `table` holds."""

    table: pa.Table
    truncated: bool


ACCESS_TOKEN_VARIABLE = "S2S_ACCESS_TOKEN"


class S2SClient:
    """A connection to an s2s server's gRPC API. Use as `async with S2SClient(...) as c:`.

    With `tls` (implied by `root_certificates`), the connection is TLS and the server's
    certificate must be signed by one of `root_certificates` (PEM bytes, e.g. a server's
    self-signed `DATA_DIR/tls/cert.pem`), or by the system's roots when None, and must name the
    host of `target`.

    `access_token` (default: the `S2S_ACCESS_TOKEN` variable) is sent with every call
    (`authorization: Bearer ...` metadata); a server with access control refuses calls
    without one (`authn`).

    Each call is logged at debug (logger `client._request_log`) if that logger is enabled for
    debug when the client is created.
    """

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        retries: int = 3,
        backoff_s: float = 0.1,
        tls: bool = False,
        root_certificates: bytes | None = None,
        access_token: str | None = None,
    ) -> None:
        options = [
            ("grpc.max_receive_message_length", MESSAGE_BYTES_MAX),
            ("grpc.max_send_message_length", MESSAGE_BYTES_MAX),
            # Reconnect quickly after a server restart; gRPC's default waits up to minutes.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", int(BACKOFF_MAX_S * 1000)),
        ]
        access_token = access_token or os.environ.get(ACCESS_TOKEN_VARIABLE) or None
        self.metadata: tuple[tuple[str, str], ...] = (
            () if access_token is None else (("authorization", f"Bearer {access_token}"),)
        )
        """Sent with every call. Not a client interceptor: grpc.aio's add 50-300 us to each
        unary call on this machine (an extra task per call)."""
        interceptors = [RequestLog()] if request_log_enabled() else None
        if tls or root_certificates is not None:
            credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            self._channel = aio.secure_channel(
                target, credentials, options=options, interceptors=interceptors
            )
        else:
            self._channel = aio.insecure_channel(target, options=options, interceptors=interceptors)
        self._account = services.AccountServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._basins = services.BasinServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self.streams = services.StreamServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._lake = lake_services.LakeServiceStub(self._channel)  # type: ignore[no-untyped-call]
        # Appends send requests encoded by `s2s.wire`: wrapping an `AppendInput` message in a
        # request message would copy it, and protobuf's encoder is slower than ours.
        self.append_call = self._channel.unary_unary(
            "/s2s.v1.StreamService/Append",
            request_serializer=None,
            response_deserializer=spb.AppendResponse.FromString,
        )
        self.append_session_call = self._channel.stream_stream(
            "/s2s.v1.StreamService/AppendSession",
            request_serializer=None,
            response_deserializer=spb.AppendSessionResponse.FromString,
        )
        self._retries = retries
        self._backoff_s = backoff_s

    async def __aenter__(self) -> S2SClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def call(self, rpc: Callable[[], Awaitable[T]], retry: bool = False) -> T:
        """Run one RPC, translating failures; retry on UNAVAILABLE only if `retry`."""
        attempt = 0
        while True:
            try:
                return await rpc()
            except grpc.RpcError as error:
                retryable = error.code() in RETRYABLE_STATUSES
                if not (retry and retryable and attempt < self._retries):
                    raise error_from_rpc(error) from None
            attempt += 1
            await asyncio.sleep(self.backoff_delay_s(attempt))

    def backoff_delay_s(self, attempt: int) -> float:
        """Exponential backoff from `backoff_s`, capped at BACKOFF_MAX_S."""
        return float(min(self._backoff_s * 2 ** (attempt - 1), BACKOFF_MAX_S))

    # --- basins ------------------------------------------------------------------------------

    async def create_basin(
        self, name: str, config: BasinConfig | None = None, request_token: str | None = None
    ) -> cpb.CreateBasinResponse:
        token = request_token or uuid.uuid4().hex
        request = cpb.CreateBasinRequest(
            basin=name, config=basin_config_to_proto(config or BasinConfig()), request_token=token
        )
        return await self.call(
            lambda: self._account.CreateBasin(request, metadata=self.metadata), retry=True
        )

    async def issue_access_token(self, info: apb.AccessTokenInfo) -> str:
        """Issue a token within this client's own scope; returns its secret (shown once)."""
        request = apb.IssueAccessTokenRequest(info=info)
        response = await self.call(
            lambda: self._account.IssueAccessToken(request, metadata=self.metadata)
        )
        secret: str = response.access_token
        return secret

    async def list_access_tokens(
        self, prefix: str = "", start_after: str = "", limit: int = 0
    ) -> apb.ListAccessTokensResponse:
        request = apb.ListAccessTokensRequest(prefix=prefix, start_after=start_after, limit=limit)
        return await self.call(
            lambda: self._account.ListAccessTokens(request, metadata=self.metadata), retry=True
        )

    async def revoke_access_token(self, token_id: str) -> None:
        request = apb.RevokeAccessTokenRequest(id=token_id)
        await self.call(lambda: self._account.RevokeAccessToken(request, metadata=self.metadata))

    async def list_basins(
        self, prefix: str = "", start_after: str = "", limit: int = 0
    ) -> cpb.ListBasinsResponse:
        request = cpb.ListBasinsRequest(prefix=prefix, start_after=start_after, limit=limit)
        return await self.call(
            lambda: self._account.ListBasins(request, metadata=self.metadata), retry=True
        )

    async def get_basin_config(self, name: str) -> BasinConfig:
        request = cpb.GetBasinConfigRequest(basin=name)
        response = await self.call(
            lambda: self._account.GetBasinConfig(request, metadata=self.metadata), retry=True
        )
        return basin_config_from_proto(response.config)

    async def reconfigure_basin(
        self, name: str, config: cpb.BasinConfig, mask: Iterable[str]
    ) -> BasinConfig:
        request = cpb.ReconfigureBasinRequest(basin=name, config=config)
        request.mask.paths.extend(mask)
        response = await self.call(
            lambda: self._account.ReconfigureBasin(request, metadata=self.metadata)
        )
        return basin_config_from_proto(response.config)

    async def delete_basin(self, name: str) -> None:
        request = cpb.DeleteBasinRequest(basin=name)
        await self.call(
            lambda: self._account.DeleteBasin(request, metadata=self.metadata), retry=True
        )

    # --- streams -----------------------------------------------------------------------------

    async def create_stream(
        self,
        basin: str,
        name: str,
        config: StreamConfig | None = None,
        request_token: str | None = None,
    ) -> cpb.CreateStreamResponse:
        token = request_token or uuid.uuid4().hex
        request = cpb.CreateStreamRequest(
            basin=basin,
            stream=name,
            config=stream_config_to_proto(config or StreamConfig()),
            request_token=token,
        )
        return await self.call(
            lambda: self._basins.CreateStream(request, metadata=self.metadata), retry=True
        )

    async def list_streams(
        self, basin: str, prefix: str = "", start_after: str = "", limit: int = 0
    ) -> cpb.ListStreamsResponse:
        request = cpb.ListStreamsRequest(
            basin=basin, prefix=prefix, start_after=start_after, limit=limit
        )
        return await self.call(
            lambda: self._basins.ListStreams(request, metadata=self.metadata), retry=True
        )

    async def get_stream_config(self, basin: str, name: str) -> StreamConfig:
        request = cpb.GetStreamConfigRequest(basin=basin, stream=name)
        response = await self.call(
            lambda: self._basins.GetStreamConfig(request, metadata=self.metadata), retry=True
        )
        return stream_config_from_proto(response.config)

    async def reconfigure_stream(
        self, basin: str, name: str, config: cpb.StreamConfig, mask: Iterable[str]
    ) -> StreamConfig:
        request = cpb.ReconfigureStreamRequest(basin=basin, stream=name, config=config)
        request.mask.paths.extend(mask)
        response = await self.call(
            lambda: self._basins.ReconfigureStream(request, metadata=self.metadata)
        )
        return stream_config_from_proto(response.config)

    async def delete_stream(self, basin: str, name: str) -> None:
        request = cpb.DeleteStreamRequest(basin=basin, stream=name)
        await self.call(
            lambda: self._basins.DeleteStream(request, metadata=self.metadata), retry=True
        )

    def stream(self, basin: str, name: str, *, encryption_key: bytes | str | None = None) -> Stream:
        """A stream's appends and reads. `encryption_key` (32 bytes, or their base64) is sent
        with them: a stream created in a basin with a `stream_cipher` needs it; a plaintext
        stream ignores it."""
        return Stream(self, basin, name, encryption_key)

    async def get_kv_store(
        self,
        name: str,
        *,
        basin: str = DEFAULT_BASIN,
        encryption_key: bytes | str | None = None,
    ) -> KvStore:
        """The key-value store `name` of `basin` (the stream `kv/NAME`), loaded: a dict whose
        `commit()` appends its changes atomically (`client._kv`). Its stream, and the default
        basin, are created on its first commit. In a basin with a `stream_cipher`, give the
        store's `encryption_key` (32 bytes, or their base64)."""
        return await KvStore.open(self, name, basin, encryption_key)

    # --- lake --------------------------------------------------------------------------------

    async def create_materialization(
        self,
        name: str,
        table: str,
        *,
        basin: str | None = None,
        stream: str | None = None,
        mode: str = "append",
        primary_key: str | None = None,
        select: str | None = None,
        where: str | None = None,
        partition_by: Iterable[str] = (),
        create_table: bool = False,
        paused: bool = False,
    ) -> lpb.MaterializationStatus:
        """Materialize a stream's JSON records into `table` ("schema.table").

        Without basin and stream the source is the table's ingest stream. `select` and
        `where` are DuckDB SQL over `seq_num`, `timestamp`, `headers` and `body` (JSON).
        """
        spec = lpb.MaterializationSpec(
            name=name,
            table=table,
            mode=mode,
            partition_by=list(partition_by),
            create_table=create_table,
            paused=paused,
        )
        for key, value in (
            ("basin", basin),
            ("stream", stream),
            ("primary_key", primary_key),
            ("select", select),
            ("where", where),
        ):
            if value is not None:
                setattr(spec, key, value)
        request = lpb.CreateMaterializationRequest(spec=spec)
        response: lpb.CreateMaterializationResponse = await self.call(
            lambda: self._lake.CreateMaterialization(request, metadata=self.metadata)
        )
        return response.materialization

    async def list_materializations(self) -> list[lpb.MaterializationStatus]:
        request = lpb.ListMaterializationsRequest()
        response: lpb.ListMaterializationsResponse = await self.call(
            lambda: self._lake.ListMaterializations(request, metadata=self.metadata), retry=True
        )
        return list(response.materializations)

    async def get_materialization(self, name: str) -> lpb.MaterializationStatus:
        request = lpb.GetMaterializationRequest(name=name)
        response: lpb.GetMaterializationResponse = await self.call(
            lambda: self._lake.GetMaterialization(request, metadata=self.metadata), retry=True
        )
        return response.materialization

    async def pause_materialization(self, name: str) -> lpb.MaterializationStatus:
        request = lpb.PauseMaterializationRequest(name=name)
        response: lpb.PauseMaterializationResponse = await self.call(
            lambda: self._lake.PauseMaterialization(request, metadata=self.metadata)
        )
        return response.materialization

    async def resume_materialization(self, name: str) -> lpb.MaterializationStatus:
        request = lpb.ResumeMaterializationRequest(name=name)
        response: lpb.ResumeMaterializationResponse = await self.call(
            lambda: self._lake.ResumeMaterialization(request, metadata=self.metadata)
        )
        return response.materialization

    async def delete_materialization(self, name: str) -> None:
        request = lpb.DeleteMaterializationRequest(name=name)
        await self.call(lambda: self._lake.DeleteMaterialization(request, metadata=self.metadata))

    async def sql(self, query: str, limit: int | None = None) -> SqlResult:
        """Run one read-only statement; at most `limit` rows (default: the server's maximum)."""
        request = lpb.QueryRequest(sql=query)
        if limit is not None:
            request.limit = limit
        response: lpb.QueryResponse = await self.call(
            lambda: self._lake.Query(request, metadata=self.metadata), retry=True
        )
        table = pa.ipc.open_stream(response.arrow_ipc_stream).read_all()
        return SqlResult(table, response.truncated)


def encode_input(
    records: Iterable[pb.AppendRecord | bytes] | pb.AppendInput,
    match_seq_num: int | None = None,
    fencing_token: str | None = None,
) -> bytes:
    """The encoded `AppendInput` for `Stream.append` and `AppendSession.submit` arguments."""
    if isinstance(records, pb.AppendInput):
        return records.SerializeToString()
    return append_input_bytes(records, match_seq_num, fencing_token)


class ReadParams(TypedDict, total=False):
    """Where a read starts and where it ends: the keyword arguments of `Stream.read` and
    `Stream.read_session` (unset or None: not given).

    Start: at most one of `seq_num`, `timestamp` (milliseconds) or `tail_offset` (records
    before the tail); none means the tail. End: `count` records, `bytes_` metered bytes,
    `until` (a timestamp, exclusive), `wait_s` seconds without new records; `clamp` starts at
    the tail instead of failing when the start is beyond it.
    """

    seq_num: int | None
    timestamp: int | None
    tail_offset: int | None
    count: int | None
    bytes_: int | None
    until: int | None
    clamp: bool
    wait_s: int | None


_READ_FIELDS = {"bytes_": "bytes", "wait_s": "wait"}
"""Where a `ReadParams` key is named otherwise in the request messages."""


def read_request_fields(params: ReadParams) -> dict[str, Any]:
    """The fields of a `ReadRequest` / `ReadSessionRequest` for `params`."""
    fields: dict[str, Any] = {"clamp": params.get("clamp", False)}
    for key, value in params.items():
        if value is not None and key != "clamp":
            fields[_READ_FIELDS.get(key, key)] = value
    return fields


class Stream:
    """One stream of a basin: appends and reads."""

    def __init__(
        self, client: S2SClient, basin: str, name: str, encryption_key: bytes | str | None = None
    ) -> None:
        self._client = client
        self.basin = basin
        self.name = name
        if isinstance(encryption_key, bytes):
            encryption_key = EncryptionKey.from_bytes(encryption_key).header_value
        self.metadata: tuple[tuple[str, str], ...] = client.metadata + (
            () if encryption_key is None else ((ENCRYPTION_KEY_HEADER, encryption_key),)
        )
        """The client's metadata and the stream's key: sent with its appends and reads."""

    async def check_tail(self) -> pb.StreamPosition:
        request = spb.CheckTailRequest(basin=self.basin, stream=self.name)
        stub = self._client.streams
        response: spb.CheckTailResponse = await self._client.call(
            lambda: stub.CheckTail(request, metadata=self.metadata), retry=True
        )
        return response.tail

    async def append(
        self,
        records: Iterable[pb.AppendRecord | bytes] | pb.AppendInput,
        match_seq_num: int | None = None,
        fencing_token: str | None = None,
    ) -> pb.AppendAck:
        """Append one batch atomically; returns its ack once durable. Never retried."""
        request = with_append_input(
            spb.AppendRequest(basin=self.basin, stream=self.name).SerializeToString(),
            encode_input(records, match_seq_num, fencing_token),
        )
        call = self._client.append_call
        response: spb.AppendResponse = await self._client.call(
            lambda: call(request, metadata=self.metadata)
        )
        return response.ack

    def append_session(self, inflight_batches_max: int = 16) -> AppendSession:
        return AppendSession(self, inflight_batches_max)

    def producer(
        self,
        linger_s: float = 0.005,
        batch_records_max: int = BATCH_RECORDS_MAX,
        batch_bytes_max: int = BATCH_METERED_BYTES_MAX,
        inflight_batches_max: int = PRODUCER_WINDOW_BATCHES,
        *,
        idempotent: bool = True,
        retry_s_max: float = PRODUCER_RETRY_S_MAX,
    ) -> Producer:
        """A `Producer` of this stream (see there); `idempotent` false sends no producer header
        and gives up at the first failure."""
        return Producer(
            self,
            linger_s,
            batch_records_max,
            batch_bytes_max,
            inflight_batches_max,
            idempotent=idempotent,
            retry_s_max=retry_s_max,
        )

    async def read(self, **params: Unpack[ReadParams]) -> pb.ReadBatch:
        """One batch (at most 1000 records and 1 MiB) from the given start."""
        fields = read_request_fields(params)
        request = spb.ReadRequest(basin=self.basin, stream=self.name, **fields)
        stub = self._client.streams
        response: spb.ReadResponse = await self._client.call(
            lambda: stub.Read(request, metadata=self.metadata), retry=True
        )
        return response.batch

    async def read_session(
        self, *, heartbeats: bool = False, **params: Unpack[ReadParams]
    ) -> AsyncIterator[pb.ReadBatch]:
        """Batches from the start, then live ones as they become durable.

        If the connection drops, the session reopens after the last record delivered, with the
        remaining count and bytes. Heartbeats (batches without records) are yielded only if
        `heartbeats` is true.
        """
        fields = read_request_fields(params)
        attempt = 0
        while True:
            request = spb.ReadSessionRequest(basin=self.basin, stream=self.name, **fields)
            call = self._client.streams.ReadSession(request, metadata=self.metadata)
            try:
                async for response in call:
                    attempt = 0
                    batch = response.batch
                    if batch.records:
                        last = batch.records[-1]
                        for key in ("seq_num", "timestamp", "tail_offset"):
                            fields.pop(key, None)
                        fields["seq_num"] = last.seq_num + 1
                        if "count" in fields:
                            fields["count"] -= len(batch.records)
                        if "bytes" in fields:
                            fields["bytes"] -= sum(metered_size(r) for r in batch.records)
                        yield batch
                    elif heartbeats:
                        yield batch
                return
            except grpc.RpcError as error:
                retryable = error.code() in RETRYABLE_STATUSES
                if not retryable or attempt >= self._client._retries:
                    raise error_from_rpc(error) from None
            finally:
                call.cancel()
            attempt += 1
            await asyncio.sleep(self._client.backoff_delay_s(attempt))


class AppendSession:
    """Pipelined appends over one bidirectional stream; acks come back in order.

    `submit` waits only while `inflight_batches_max` batches are unacknowledged (backpressure).
    The first failure fails that batch and every later one, and closes the session.
    """

    def __init__(self, stream: Stream, inflight_batches_max: int) -> None:
        self._stream = stream
        self._slots = asyncio.Semaphore(inflight_batches_max)
        self._pending: collections.deque[asyncio.Future[pb.AppendAck]] = collections.deque()
        self._call: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._error: S2SError | None = None
        self._first = True

    async def __aenter__(self) -> AppendSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def submit(
        self,
        records: Iterable[pb.AppendRecord | bytes] | pb.AppendInput,
        match_seq_num: int | None = None,
        fencing_token: str | None = None,
    ) -> asyncio.Future[pb.AppendAck]:
        """Send a batch; the returned future resolves with its ack once it is durable."""
        if self._error is not None:
            raise self._error
        return await self.submit_input(encode_input(records, match_seq_num, fencing_token))

    async def submit_input(self, append_input: bytes) -> asyncio.Future[pb.AppendAck]:
        """`submit` of an `AppendInput` message already encoded."""
        if self._error is not None:
            raise self._error
        await self._slots.acquire()
        if self._call is None:
            self._call = self._stream._client.append_session_call(metadata=self._stream.metadata)
            self._reader = asyncio.create_task(self._read_acks())
        header = b""
        if self._first:
            header = spb.AppendSessionRequest(
                basin=self._stream.basin, stream=self._stream.name
            ).SerializeToString()
            self._first = False
        request = with_append_input(header, append_input)
        future: asyncio.Future[pb.AppendAck] = asyncio.get_running_loop().create_future()
        self._pending.append(future)
        try:
            await self._call.write(request)
        except (grpc.RpcError, asyncio.InvalidStateError) as error:
            # The call already ended; the reader reports why on the pending futures.
            if self._reader is not None:
                await asyncio.wait({self._reader})
            if not future.done():
                future.set_exception(self._error or S2SError("other", str(error)))
        return future

    async def append(
        self,
        records: Iterable[pb.AppendRecord | bytes] | pb.AppendInput,
        match_seq_num: int | None = None,
        fencing_token: str | None = None,
    ) -> pb.AppendAck:
        return await (await self.submit(records, match_seq_num, fencing_token))

    async def _read_acks(self) -> None:
        try:
            while True:
                response = await self._call.read()
                if response is aio.EOF:
                    break
                future = self._pending.popleft()
                self._slots.release()
                if not future.done():
                    future.set_result(response.ack)
        except grpc.RpcError as error:
            self._error = error_from_rpc(error)
        if self._error is None:
            # A call can end without `read` raising; its status tells whether it failed.
            status = await self._call.code()
            if status != grpc.StatusCode.OK:
                self._error = error_from_status(
                    status, await self._call.details(), await self._call.trailing_metadata()
                )
        if self._error is None and self._pending:
            self._error = S2SError("other", "append session ended before every ack arrived")
        while self._pending:
            future = self._pending.popleft()
            self._slots.release()
            if not future.done() and self._error is not None:
                future.set_exception(self._error)

    async def close(self) -> None:
        """Stop sending and wait for the acks of everything sent."""
        if self._call is None:
            return
        if self._error is None:
            with contextlib.suppress(grpc.RpcError):  # the reader reports the failure
                await self._call.done_writing()
        if self._reader is not None:
            await self._reader
        for future in self._pending:
            future.cancel()


@dataclass
class _UnackedBatch:
    """A batch a `ProducerSession` sent and has no ack for yet."""

    append_input: bytes
    ack: asyncio.Future[pb.AppendAck]
    """Resolved once: with the batch's ack, or with the failure that ended the session."""
    resent: bool = False
    """Sent again through a new session: its first sending may have been written."""


class ProducerSession:
    """Batches appended in order through append sessions, sent again through a new session
    when one is lost: what a `Producer` sends its batches through, for callers that make their
    own batches (`s2s append`).

    `submit` sends a batch and returns the future of its ack; it waits while
    `inflight_batches_max` batches are unacknowledged, also while no session takes them (the
    server is gone), so what waits for an ack is bounded.

    Idempotent (the default): the first record of each batch carries the `s2s-producer` header,
    this session's random id (`producer_id`) and the batch's number, so the server writes a
    batch once however often it is sent, and answers a repeat with the first ack
    (docs/adr/0016-idempotent-appends.md). When the session is lost (the connection dropped,
    the server restarted) or ends with a retryable error, a new one is opened and sent every
    unacknowledged batch again, in order; each batch's future resolves once. It goes on for up
    to `retry_s_max` without an ack (0: not at all), then fails every unacknowledged batch. At
    most `PRODUCER_WINDOW_BATCHES` batches may be in flight: the server answers repeats of that
    many. The loss and the recovery are logged at warning, once each however many attempts it
    takes. Not idempotent: the first failure fails every unacknowledged batch, and every later
    one.

    `match_seq_num` is the first batch's; each later batch's is where the one before it ended,
    so the batches append only if nothing else writes in between. `fencing_token` goes with
    every batch. A batch sent again carries the same conditions, and the server answers a batch
    it wrote from the producer's row before it checks them, so a resend is not refused for the
    tail its own first sending moved, nor for a fence set since.
    """

    def __init__(
        self,
        stream: Stream,
        inflight_batches_max: int = PRODUCER_WINDOW_BATCHES,
        *,
        idempotent: bool = True,
        retry_s_max: float = PRODUCER_RETRY_S_MAX,
        match_seq_num: int | None = None,
        fencing_token: str | None = None,
    ) -> None:
        if idempotent and inflight_batches_max > PRODUCER_WINDOW_BATCHES:
            raise ValueError(
                f"an idempotent producer has at most {PRODUCER_WINDOW_BATCHES} batches in "
                f"flight (the server remembers that many), not {inflight_batches_max}"
            )
        self._stream = stream
        self._inflight_batches_max = inflight_batches_max
        self._retry_s_max = retry_s_max
        self._match_seq_num = match_seq_num
        """The next batch's `match_seq_num` (None: none)."""
        self._fencing_token = fencing_token
        self.producer_id = uuid.uuid4().hex if idempotent else None
        """The id the server knows this producer's batches by (None: not idempotent)."""
        self._next_batch_seq = 0
        self._session = stream.append_session(inflight_batches_max)
        self._unacked: collections.deque[_UnackedBatch] = collections.deque()
        self._room = asyncio.Semaphore(inflight_batches_max)
        """A unit per batch that may be submitted now: `_unacked` holds at most
        `inflight_batches_max`, the server's window, even while sessions fail at once."""
        self._settled = asyncio.Event()
        """Set while no batch waits for its ack, or once the session failed."""
        self._settled.set()
        self._failure: S2SError | None = None
        self.unacknowledged_may_be_written = False
        """After a failure: whether the batches it failed may have been written nonetheless
        (their ack was lost, or a first sending was, and the resend was refused before the
        server's producer check): only the acknowledged ones are known to be."""
        self._retrying_since_s: float | None = None
        self._resent_before_loss = 0
        self._attempt = 0
        """New sessions opened since the last ack: the backoff's exponent."""
        self._recovery: asyncio.Task[None] | None = None
        self._recover_again = False
        self.resent_batches = 0
        """Batches sent again through a new session (their first sending's ack was lost)."""
        self._submit_lock = asyncio.Lock()
        self._send_lock = asyncio.Lock()

    async def __aenter__(self) -> ProducerSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def _name(self) -> str:
        return f"s2://{self._stream.basin}/{self._stream.name}"

    async def submit(self, records: Sequence[pb.AppendRecord]) -> asyncio.Future[pb.AppendAck]:
        """Send a batch of at least one record, after every batch submitted before it; the
        future resolves with its ack once it is durable. Raises the failure that ended the
        session, if one did."""
        assert records, "an append has at least one record"
        async with self._submit_lock:  # batches go in the order they were submitted
            await self._room.acquire()
            async with self._send_lock:  # after every batch a resend under way sends
                if self._failure is not None:
                    self._room.release()
                    raise self._failure
                ack: asyncio.Future[pb.AppendAck] = asyncio.get_running_loop().create_future()
                batch = _UnackedBatch(self._encode(records), ack)
                self._unacked.append(batch)
                self._settled.clear()
                await self._send(self._session, batch)
        return ack

    def _encode(self, records: Sequence[pb.AppendRecord]) -> bytes:
        """The batch's `AppendInput` with its conditions, its first record with the producer
        header if idempotent (a copy: the caller's record is left as it was)."""
        match_seq_num = self._match_seq_num
        if match_seq_num is not None:
            self._match_seq_num = match_seq_num + len(records)
        if self.producer_id is None:
            return append_input_bytes(records, match_seq_num, self._fencing_token)
        first = pb.AppendRecord()
        first.CopyFrom(records[0])
        value = producer_header_value(self.producer_id, self._next_batch_seq)
        first.headers.add(name=PRODUCER_HEADER, value=value)
        self._next_batch_seq += 1
        return append_input_bytes([first, *records[1:]], match_seq_num, self._fencing_token)

    async def _send(self, session: AppendSession, batch: _UnackedBatch) -> None:
        try:
            ack = await session.submit_input(batch.append_input)
        except S2SError as error:  # the session had failed already
            self._session_failed(session, error)
            return
        ack.add_done_callback(functools.partial(self._on_ack, session, batch))

    def _on_ack(
        self, session: AppendSession, batch: _UnackedBatch, done: asyncio.Future[pb.AppendAck]
    ) -> None:
        if done.cancelled():
            return  # a session closed
        error = done.exception()  # read even if ignored: asyncio logs an error never read
        if session is not self._session or self._failure is not None:
            return  # a session given up on: its batches went again through the next
        if error is not None:
            failure = error if isinstance(error, S2SError) else S2SError("other", str(error))
            self._session_failed(session, failure)
            return
        # A session's acks come in order, and each session was sent every unacknowledged
        # batch in order first.
        acked = self._unacked.popleft()
        assert acked is batch, "a producer's acks came out of order"
        self._room.release()
        if self._retrying_since_s is not None:
            log.warning(
                "append session to %s back after %.1f s (%d batches sent again)",
                self._name,
                asyncio.get_running_loop().time() - self._retrying_since_s,
                self.resent_batches - self._resent_before_loss,
            )
        self._retrying_since_s = None
        self._attempt = 0
        batch.ack.set_result(done.result())
        if not self._unacked:
            self._settled.set()

    def _session_failed(self, session: AppendSession, error: S2SError) -> None:
        """The session failed (every batch after the failed one fails with it): open another
        and send every unacknowledged batch again, if this producer is idempotent, the error is
        retryable, and the retries have not run out."""
        if session is not self._session or self._failure is not None:
            return
        kind = ERROR_KINDS.get(error.code)
        if self.producer_id is None or kind is None or not kind.retryable:
            self._fail(error)
            return
        now_s = asyncio.get_running_loop().time()
        if now_s - (self._retrying_since_s or now_s) >= self._retry_s_max:
            self._fail(error)
            return
        if self._retrying_since_s is None:
            self._retrying_since_s = now_s
            self._resent_before_loss = self.resent_batches
            # Once per outage: the attempts that fail meanwhile are not news.
            log.warning(
                "append session to %s lost (%s); sending its unacknowledged batches again "
                "through a new session, for up to %g s without an ack",
                self._name,
                error,
                self._retry_s_max,
                extra=log_fields(code=error.code, basin=self._stream.basin),
            )
        if self._recovery is not None and not self._recovery.done():
            self._recover_again = True  # the session it just opened failed too
            return
        self._recovery = asyncio.ensure_future(self._resend())

    async def _resend(self) -> None:
        """Open a new session and send it every unacknowledged batch, in order; again as long
        as the new session fails meanwhile. New batches wait (the send lock)."""
        async with self._send_lock:
            while self._failure is None:
                await self._session.close()  # it has failed: this only ends it
                self._attempt += 1
                await asyncio.sleep(self._stream._client.backoff_delay_s(self._attempt))
                session = self._session = self._stream.append_session(self._inflight_batches_max)
                self._recover_again = False
                for batch in list(self._unacked):
                    if self._recover_again or self._failure is not None:
                        break
                    self.resent_batches += 1
                    batch.resent = True
                    await self._send(session, batch)
                if not self._recover_again:
                    return

    def _fail(self, error: S2SError) -> None:
        self._failure = error
        if self._unacked:
            kind = ERROR_KINDS.get(error.code)
            # A retryable error: the last sending's fate is unknown. Otherwise the first
            # unacknowledged batch was refused, and the ones after it were not written, unless
            # a lost session had them first.
            self.unacknowledged_may_be_written = (
                kind is None or kind.retryable or self._unacked[0].resent
            )
        while self._unacked:
            batch = self._unacked.popleft()
            self._room.release()
            batch.ack.set_exception(error)
        self._settled.set()

    async def close(self) -> None:
        """Wait for every ack (sending batches again as needed) or the failure, then end the
        session."""
        while self._unacked and self._failure is None:
            await self._settled.wait()
        if self._recovery is not None:
            await self._recovery
        await self._session.close()


class Producer:
    """Batches single records into appends through a `ProducerSession` (see there: by default
    idempotent, and resending through a new session when one is lost).

    A batch is sent when it reaches `batch_records_max` records or `batch_bytes_max` metered
    bytes, or `linger_s` after its first record. `append` returns a future of the record's
    sequence number; it resolves once, or fails with the failure that ended the session.
    """

    def __init__(
        self,
        stream: Stream,
        linger_s: float,
        batch_records_max: int,
        batch_bytes_max: int,
        inflight_batches_max: int,
        *,
        idempotent: bool = True,
        retry_s_max: float = PRODUCER_RETRY_S_MAX,
    ) -> None:
        self._session = ProducerSession(
            stream, inflight_batches_max, idempotent=idempotent, retry_s_max=retry_s_max
        )
        self._linger_s = linger_s
        self._records_max = batch_records_max
        self._bytes_max = batch_bytes_max
        self._records: list[pb.AppendRecord] = []
        self._futures: list[asyncio.Future[int]] = []
        self._bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._flushes: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Producer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def producer_id(self) -> str | None:
        """The id the server knows this producer's batches by (None: not idempotent)."""
        return self._session.producer_id

    @property
    def resent_batches(self) -> int:
        """Batches sent again through a new session (their first sending's ack was lost)."""
        return self._session.resent_batches

    async def append(self, record: pb.AppendRecord | bytes) -> asyncio.Future[int]:
        if isinstance(record, bytes):
            record = pb.AppendRecord(body=record)
        size = metered_size(record)
        if self._records and (
            len(self._records) >= self._records_max or self._bytes + size > self._bytes_max
        ):
            await self._flush()
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._records.append(record)
        self._futures.append(future)
        self._bytes += size
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._linger_s, self._on_linger)
        return future

    def _on_linger(self) -> None:
        self._timer = None
        task = asyncio.ensure_future(self._flush())
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        records, futures = self._records, self._futures
        if not records:
            return
        self._records, self._futures, self._bytes = [], [], 0
        # The session sends batches in the order `submit` was called, which is the order
        # their records arrived: nothing awaits between taking them and the call.
        try:
            ack = await self._session.submit(records)
        except S2SError as error:  # the session had failed
            _fail_all(futures, error)
            return
        ack.add_done_callback(functools.partial(_resolve_records, futures))

    async def close(self) -> None:
        """Send what is buffered and wait for every ack (resending as needed)."""
        await self._flush()
        if self._flushes:
            await asyncio.gather(*self._flushes)
        await self._session.close()


def _resolve_records(futures: list[asyncio.Future[int]], ack: asyncio.Future[pb.AppendAck]) -> None:
    """Each record's future: its sequence number in the batch's ack, or the batch's failure."""
    if ack.cancelled():
        for future in futures:
            future.cancel()
        return
    error = ack.exception()
    if error is not None:
        _fail_all(futures, error)
        return
    start = ack.result().start.seq_num
    for offset, future in enumerate(futures):
        if not future.done():
            future.set_result(start + offset)


def _fail_all(futures: list[asyncio.Future[int]], error: BaseException) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(error)
