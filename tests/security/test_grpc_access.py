"""Access control over gRPC, against a real server with auth on: every method refuses a call
without a valid token (`UNAUTHENTICATED`, `authn`) and one out of scope (`PERMISSION_DENIED`,
`permission_denied`) and changes nothing; tokens are issued, listed and revoked through
`AccountService`; revoking a token ends its open sessions within a second."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc
import pytest
from grpc import aio

from client._errors import metadata_dict
from s2s.v1 import access_pb2 as apb
from s2s.v1 import control_pb2 as cpb
from s2s.v1 import lake_pb2 as lpb
from s2s.v1 import lake_pb2_grpc as lake_services
from s2s.v1 import records_pb2 as pb
from s2s.v1 import services_pb2 as spb
from s2s.v1 import services_pb2_grpc as services
from tests.server_process import ServerProcess

BASIN = "grpc-access"
STREAM = "s"
ALL = apb.ReadWritePermissions(read=True, write=True)
EVERYTHING = apb.ResourceSet(prefix="")


class Stubs:
    def __init__(self, channel: aio.Channel) -> None:
        self.account = services.AccountServiceStub(channel)
        self.basins = services.BasinServiceStub(channel)
        self.streams = services.StreamServiceStub(channel)
        self.lake = lake_services.LakeServiceStub(channel)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(str(tmp_path_factory.mktemp("grpc-access") / "data"), auth=True).start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
async def stubs(server: ServerProcess) -> AsyncIterator[Stubs]:
    async with aio.insecure_channel(server.target) as channel:
        yield Stubs(channel)


def _auth(token: str | None) -> tuple[tuple[str, str], ...]:
    return () if token is None else (("authorization", f"Bearer {token}"),)


def _scope(**overrides: Any) -> apb.AccessTokenScope:
    fields: dict[str, Any] = {
        "basins": EVERYTHING,
        "streams": EVERYTHING,
        "access_tokens": EVERYTHING,
        "op_groups": apb.PermittedOperationGroups(account=ALL, basin=ALL, stream=ALL),
    }
    fields.update(overrides)
    return apb.AccessTokenScope(**fields)


async def _issue(stubs: Stubs, root: str, token_id: str, scope: apb.AccessTokenScope) -> str:
    response = await stubs.account.IssueAccessToken(
        apb.IssueAccessTokenRequest(info=apb.AccessTokenInfo(id=token_id, scope=scope)),
        metadata=_auth(root),
    )
    secret: str = response.access_token
    return secret


Call = Callable[[Stubs, tuple[tuple[str, str], ...]], Awaitable[object]]


def _unary(service: str, method: str, request: object) -> Call:
    async def call(stubs: Stubs, metadata: tuple[tuple[str, str], ...]) -> object:
        rpc = getattr(getattr(stubs, service), method)
        return await rpc(request, metadata=metadata)

    return call


def _append_session(stubs: Stubs, metadata: tuple[tuple[str, str], ...]) -> Awaitable[object]:
    async def call() -> object:
        request = spb.AppendSessionRequest(
            basin=BASIN, stream=STREAM, input=pb.AppendInput(records=[pb.AppendRecord(body=b"x")])
        )
        return [r async for r in stubs.streams.AppendSession(iter([request]), metadata=metadata)]

    return call()


def _read_session(stubs: Stubs, metadata: tuple[tuple[str, str], ...]) -> Awaitable[object]:
    async def call() -> object:
        request = spb.ReadSessionRequest(basin=BASIN, stream=STREAM, seq_num=0, count=1)
        return [r async for r in stubs.streams.ReadSession(request, metadata=metadata)]

    return call()


RECORDS = pb.AppendInput(records=[pb.AppendRecord(body=b"x")])
# (name, call, resources it names: "basin", "stream")
METHODS: tuple[tuple[str, Call, frozenset[str]], ...] = (
    (
        "CreateBasin",
        _unary("account", "CreateBasin", cpb.CreateBasinRequest(basin=BASIN + "-new")),
        frozenset({"basin"}),
    ),
    (
        "GetBasinConfig",
        _unary("account", "GetBasinConfig", cpb.GetBasinConfigRequest(basin=BASIN)),
        frozenset({"basin"}),
    ),
    (
        "ReconfigureBasin",
        _unary("account", "ReconfigureBasin", cpb.ReconfigureBasinRequest(basin=BASIN)),
        frozenset({"basin"}),
    ),
    (
        "DeleteBasin",
        _unary("account", "DeleteBasin", cpb.DeleteBasinRequest(basin=BASIN)),
        frozenset({"basin"}),
    ),
    (
        "ListAccessTokens",
        _unary("account", "ListAccessTokens", apb.ListAccessTokensRequest()),
        frozenset(),
    ),
    (
        "RevokeAccessToken",
        _unary("account", "RevokeAccessToken", apb.RevokeAccessTokenRequest(id="everything")),
        frozenset(),
    ),
    (
        "ListStreams",
        _unary("basins", "ListStreams", cpb.ListStreamsRequest(basin=BASIN)),
        frozenset({"basin"}),
    ),
    (
        "CreateStream",
        _unary("basins", "CreateStream", cpb.CreateStreamRequest(basin=BASIN, stream="new")),
        frozenset({"basin", "stream"}),
    ),
    (
        "GetStreamConfig",
        _unary("basins", "GetStreamConfig", cpb.GetStreamConfigRequest(basin=BASIN, stream=STREAM)),
        frozenset({"basin", "stream"}),
    ),
    (
        "ReconfigureStream",
        _unary(
            "basins", "ReconfigureStream", cpb.ReconfigureStreamRequest(basin=BASIN, stream=STREAM)
        ),
        frozenset({"basin", "stream"}),
    ),
    (
        "DeleteStream",
        _unary("basins", "DeleteStream", cpb.DeleteStreamRequest(basin=BASIN, stream=STREAM)),
        frozenset({"basin", "stream"}),
    ),
    (
        "CheckTail",
        _unary("streams", "CheckTail", spb.CheckTailRequest(basin=BASIN, stream=STREAM)),
        frozenset({"basin", "stream"}),
    ),
    (
        "Append",
        _unary("streams", "Append", spb.AppendRequest(basin=BASIN, stream=STREAM, input=RECORDS)),
        frozenset({"basin", "stream"}),
    ),
    (
        "Read",
        _unary("streams", "Read", spb.ReadRequest(basin=BASIN, stream=STREAM, seq_num=0)),
        frozenset({"basin", "stream"}),
    ),
    ("AppendSession", _append_session, frozenset({"basin", "stream"})),
    ("ReadSession", _read_session, frozenset({"basin", "stream"})),
    (
        "Query",
        _unary("lake", "Query", lpb.QueryRequest(sql="SELECT 1")),
        frozenset({"basin", "stream"}),
    ),
    (
        "ListMaterializations",
        _unary("lake", "ListMaterializations", lpb.ListMaterializationsRequest()),
        frozenset(),
    ),
    (
        "DeleteMaterialization",
        _unary("lake", "DeleteMaterialization", lpb.DeleteMaterializationRequest(name="m")),
        frozenset(),
    ),
)
"""ListBasins is not here: a scope leaves basins out of it rather than refusing it."""


async def _state(stubs: Stubs, root: str) -> str:
    auth = _auth(root)
    basins = await stubs.account.ListBasins(cpb.ListBasinsRequest(), metadata=auth)
    parts = [
        str(basins),
        str(await stubs.account.ListAccessTokens(apb.ListAccessTokensRequest(), metadata=auth)),
    ]
    for basin in basins.basins:
        streams = await stubs.basins.ListStreams(
            cpb.ListStreamsRequest(basin=basin.name), metadata=auth
        )
        parts.append(str(streams))
        for stream in streams.streams:
            tail = await stubs.streams.CheckTail(
                spb.CheckTailRequest(basin=basin.name, stream=stream.name), metadata=auth
            )
            parts.append(str(tail))
    return "\n".join(parts)


async def _refusal(call: Awaitable[object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(aio.AioRpcError) as refused:
        await call
    error = refused.value
    return error.code(), metadata_dict(error.trailing_metadata()).get("s2-error-code", "")


async def _ensure_stream(stubs: Stubs, root: str) -> None:
    """The basin and stream the tests call on (whichever test runs first makes them)."""
    auth = _auth(root)
    existing = await stubs.account.ListBasins(cpb.ListBasinsRequest(prefix=BASIN), metadata=auth)
    if not any(b.name == BASIN for b in existing.basins):
        await stubs.account.CreateBasin(cpb.CreateBasinRequest(basin=BASIN), metadata=auth)
        await stubs.basins.CreateStream(
            cpb.CreateStreamRequest(basin=BASIN, stream=STREAM), metadata=auth
        )


@pytest.fixture
async def tokens(server: ServerProcess, stubs: Stubs) -> dict[str, str | None]:
    root = server.root_token
    auth = _auth(root)
    await _ensure_stream(stubs, root)
    revoked = await _issue(stubs, root, "revoked", _scope())
    await stubs.account.RevokeAccessToken(apb.RevokeAccessTokenRequest(id="revoked"), metadata=auth)
    return {
        "no token": None,
        "unknown": "s2s_unknown",
        "revoked": revoked,
        "basin out of scope": await _issue(
            stubs, root, "elsewhere", _scope(basins=apb.ResourceSet(exact="grpc-other"))
        ),
        "stream out of scope": await _issue(
            stubs, root, "other-stream", _scope(streams=apb.ResourceSet(exact="t"))
        ),
        "no group": await _issue(
            stubs, root, "ops-only", _scope(op_groups=None, ops=["list-basins"])
        ),
        "everything": await _issue(stubs, root, "everything", _scope()),
    }


async def test_every_method_refuses_and_changes_nothing(
    server: ServerProcess, stubs: Stubs, tokens: dict[str, str | None]
) -> None:
    before = await _state(stubs, server.root_token)
    for name, call, resources in METHODS:
        for case, token in tokens.items():
            if case == "everything":
                continue
            if case in ("no token", "unknown", "revoked"):
                expected = (grpc.StatusCode.UNAUTHENTICATED, "authn")
            elif case == "no group" or (
                {"basin out of scope": "basin", "stream out of scope": "stream"}[case] in resources
            ):
                expected = (grpc.StatusCode.PERMISSION_DENIED, "permission_denied")
            else:
                continue
            assert await _refusal(call(stubs, _auth(token))) == expected, (name, case)
            assert await _state(stubs, server.root_token) == before, (name, case)


async def test_token_methods_round_trip(server: ServerProcess, stubs: Stubs) -> None:
    root = server.root_token
    await _ensure_stream(stubs, root)
    secret = await _issue(
        stubs,
        root,
        "grpc-reader",
        _scope(op_groups=apb.PermittedOperationGroups(stream=apb.ReadWritePermissions(read=True))),
    )
    listed = await stubs.account.ListAccessTokens(
        apb.ListAccessTokensRequest(prefix="grpc-"), metadata=_auth(root)
    )
    assert [t.id for t in listed.access_tokens] == ["grpc-reader"]
    assert listed.access_tokens[0].scope.op_groups.stream.read
    assert not listed.access_tokens[0].scope.op_groups.stream.write
    tail = await stubs.streams.CheckTail(
        spb.CheckTailRequest(basin=BASIN, stream=STREAM), metadata=_auth(secret)
    )
    assert tail.tail.seq_num >= 0
    await stubs.account.RevokeAccessToken(
        apb.RevokeAccessTokenRequest(id="grpc-reader"), metadata=_auth(root)
    )
    refused = await _refusal(
        stubs.streams.CheckTail(
            spb.CheckTailRequest(basin=BASIN, stream=STREAM), metadata=_auth(secret)
        )
    )
    assert refused == (grpc.StatusCode.UNAUTHENTICATED, "authn")


async def test_revocation_ends_open_grpc_sessions_within_a_second(
    server: ServerProcess, stubs: Stubs
) -> None:
    root = server.root_token
    await _ensure_stream(stubs, root)
    secret = await _issue(stubs, root, "grpc-sessions", _scope())
    auth = _auth(secret)
    outgoing: asyncio.Queue[spb.AppendSessionRequest | None] = asyncio.Queue()

    async def requests() -> AsyncIterator[spb.AppendSessionRequest]:
        while (request := await outgoing.get()) is not None:
            yield request

    appends = stubs.streams.AppendSession(requests(), metadata=auth)
    await outgoing.put(spb.AppendSessionRequest(basin=BASIN, stream=STREAM, input=RECORDS))
    await appends.read()
    reads = stubs.streams.ReadSession(
        spb.ReadSessionRequest(basin=BASIN, stream=STREAM, tail_offset=0), metadata=auth
    )

    async def drain_reads() -> None:
        async for _ in reads:
            pass

    async def drain_appends() -> None:
        while await appends.read() is not aio.EOF:
            pass

    readers = [asyncio.create_task(drain_reads()), asyncio.create_task(drain_appends())]
    await asyncio.sleep(0.5)
    revoked_at = time.monotonic()
    await stubs.account.RevokeAccessToken(
        apb.RevokeAccessTokenRequest(id="grpc-sessions"), metadata=_auth(root)
    )
    for task in readers:
        code, s2_code = await _refusal(asyncio.wait_for(task, timeout=5))
        assert (code, s2_code) == (grpc.StatusCode.UNAUTHENTICATED, "authn")
    assert time.monotonic() - revoked_at < 1.0
    await outgoing.put(None)


async def test_an_expiry_no_timestamp_can_write_is_refused(
    server: ServerProcess, stubs: Stubs
) -> None:
    info = apb.AccessTokenInfo(id="far-future", scope=_scope(), expires_at_ms=2**63)
    refused = await _refusal(
        stubs.account.IssueAccessToken(
            apb.IssueAccessTokenRequest(info=info), metadata=_auth(server.root_token)
        )
    )
    assert refused == (grpc.StatusCode.INVALID_ARGUMENT, "invalid")


async def test_an_append_session_without_a_token_always_gets_authn(
    server: ServerProcess, stubs: Stubs
) -> None:
    """The refusal comes while the client is still sending; the server reads what it sends
    before it ends the call, or gRPC would report INTERNAL instead of UNAUTHENTICATED."""
    request = spb.AppendSessionRequest(basin=BASIN, stream=STREAM, input=RECORDS)
    for _ in range(30):
        call = stubs.streams.AppendSession(iter([request] * 5), metadata=_auth("s2s_wrong"))
        refused = await _refusal(call.read())
        assert refused == (grpc.StatusCode.UNAUTHENTICATED, "authn")
