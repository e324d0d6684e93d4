"""AccountService (basins, access tokens) and BasinService (streams), each call checked
against its caller's access token (`caller`)."""

from __future__ import annotations

from s2s.convert import (
    basin_config_from_proto,
    basin_config_to_proto,
    basin_patch_from_proto,
    stream_cipher_proto,
    stream_config_from_proto,
    stream_config_to_proto,
    stream_patch_from_proto,
)
from s2s.names import clamp_list_limit
from s2s.v1 import access_pb2 as apb
from s2s.v1 import control_pb2 as cpb
from s2s.v1 import services_pb2_grpc as services
from server.catalog import BasinRecord, StreamRecord
from server.grpc_frontend.access import issue_request_from_proto, token_info_to_proto
from server.grpc_frontend.caller import caller
from server.grpc_frontend.errors import Context, unary
from server.streamstore import StreamStore

_PROVISION = {
    "created": cpb.PROVISION_RESULT_CREATED,
    "updated": cpb.PROVISION_RESULT_UPDATED,
    "noop": cpb.PROVISION_RESULT_NOOP,
}


def basin_info(record: BasinRecord) -> cpb.BasinInfo:
    info = cpb.BasinInfo(
        name=record.name, location=record.location, created_at_ms=record.created_at_ms
    )
    if record.deleted_at_ms is not None:
        info.deleted_at_ms = record.deleted_at_ms
    return info


def stream_info(record: StreamRecord) -> cpb.StreamInfo:
    info = cpb.StreamInfo(
        name=record.name,
        created_at_ms=record.created_at_ms,
        cipher=stream_cipher_proto(record.cipher),
    )
    if record.deleted_at_ms is not None:
        info.deleted_at_ms = record.deleted_at_ms
    return info


def _token(value: str) -> str | None:
    return value or None


class AccountServicer(services.AccountServiceServicer):
    """Basins and access tokens."""

    def __init__(self, store: StreamStore) -> None:
        self._store = store

    @unary
    async def ListBasins(
        self, request: cpb.ListBasinsRequest, context: Context
    ) -> cpb.ListBasinsResponse:
        records, has_more = caller(self._store, context).list_basins(
            request.prefix, request.start_after, request.limit
        )
        return cpb.ListBasinsResponse(basins=[basin_info(r) for r in records], has_more=has_more)

    @unary
    async def CreateBasin(
        self, request: cpb.CreateBasinRequest, context: Context
    ) -> cpb.CreateBasinResponse:
        config = basin_config_from_proto(request.config)
        provisioned = await caller(self._store, context).create_basin(
            request.basin,
            config,
            request.config.SerializeToString(deterministic=True).hex(),
            _token(request.request_token),
        )
        return cpb.CreateBasinResponse(
            info=basin_info(provisioned.record), result=_PROVISION[provisioned.outcome]
        )

    @unary
    async def GetBasinConfig(
        self, request: cpb.GetBasinConfigRequest, context: Context
    ) -> cpb.GetBasinConfigResponse:
        record = caller(self._store, context).get_basin(request.basin)
        return cpb.GetBasinConfigResponse(config=basin_config_to_proto(record.config))

    @unary
    async def ReconfigureBasin(
        self, request: cpb.ReconfigureBasinRequest, context: Context
    ) -> cpb.ReconfigureBasinResponse:
        patch = basin_patch_from_proto(request.config, request.mask.paths)
        record = await caller(self._store, context).reconfigure_basin(request.basin, patch)
        return cpb.ReconfigureBasinResponse(config=basin_config_to_proto(record.config))

    @unary
    async def DeleteBasin(
        self, request: cpb.DeleteBasinRequest, context: Context
    ) -> cpb.DeleteBasinResponse:
        await caller(self._store, context).delete_basin(request.basin)
        return cpb.DeleteBasinResponse()

    @unary
    async def IssueAccessToken(
        self, request: apb.IssueAccessTokenRequest, context: Context
    ) -> apb.IssueAccessTokenResponse:
        secret = await caller(self._store, context).issue_access_token(
            issue_request_from_proto(request.info)
        )
        return apb.IssueAccessTokenResponse(access_token=secret)

    @unary
    async def ListAccessTokens(
        self, request: apb.ListAccessTokensRequest, context: Context
    ) -> apb.ListAccessTokensResponse:
        tokens, has_more = caller(self._store, context).list_access_tokens(
            request.prefix, request.start_after, clamp_list_limit(request.limit)
        )
        return apb.ListAccessTokensResponse(
            access_tokens=[token_info_to_proto(t) for t in tokens], has_more=has_more
        )

    @unary
    async def RevokeAccessToken(
        self, request: apb.RevokeAccessTokenRequest, context: Context
    ) -> apb.RevokeAccessTokenResponse:
        await caller(self._store, context).revoke_access_token(request.id)
        return apb.RevokeAccessTokenResponse()


class BasinServicer(services.BasinServiceServicer):
    def __init__(self, store: StreamStore) -> None:
        self._store = store

    @unary
    async def ListStreams(
        self, request: cpb.ListStreamsRequest, context: Context
    ) -> cpb.ListStreamsResponse:
        caller(self._store, context).get_basin(request.basin)
        records, has_more = caller(self._store, context).list_streams(
            request.basin, request.prefix, request.start_after, request.limit
        )
        return cpb.ListStreamsResponse(streams=[stream_info(r) for r in records], has_more=has_more)

    @unary
    async def CreateStream(
        self, request: cpb.CreateStreamRequest, context: Context
    ) -> cpb.CreateStreamResponse:
        provisioned = await caller(self._store, context).create_stream(
            request.basin,
            request.stream,
            stream_config_from_proto(request.config),
            request.config.SerializeToString(deterministic=True).hex(),
            _token(request.request_token),
        )
        return cpb.CreateStreamResponse(
            info=stream_info(provisioned.record), result=_PROVISION[provisioned.outcome]
        )

    @unary
    async def GetStreamConfig(
        self, request: cpb.GetStreamConfigRequest, context: Context
    ) -> cpb.GetStreamConfigResponse:
        record = caller(self._store, context).get_stream(request.basin, request.stream)
        return cpb.GetStreamConfigResponse(config=stream_config_to_proto(record.config))

    @unary
    async def ReconfigureStream(
        self, request: cpb.ReconfigureStreamRequest, context: Context
    ) -> cpb.ReconfigureStreamResponse:
        patch = stream_patch_from_proto(request.config, request.mask.paths)
        record = await caller(self._store, context).reconfigure_stream(
            request.basin, request.stream, patch
        )
        return cpb.ReconfigureStreamResponse(config=stream_config_to_proto(record.config))

    @unary
    async def DeleteStream(
        self, request: cpb.DeleteStreamRequest, context: Context
    ) -> cpb.DeleteStreamResponse:
        await caller(self._store, context).delete_stream(request.basin, request.stream)
        return cpb.DeleteStreamResponse()
