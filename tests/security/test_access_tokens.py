"""Access tokens through the official SDK over HTTP/2, against a real server with auth on:
issue, list and revoke; scope escalation; `auto_prefix_streams`; revocation ending sessions."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from s2_sdk import (
    S2,
    AccessTokenScope,
    AppendInput,
    Endpoints,
    ExactMatch,
    Operation,
    OperationGroupPermissions,
    Permission,
    PrefixMatch,
    Record,
    S2ServerError,
    SeqNum,
)

from tests.server_process import ServerProcess

BASIN = "tokens-basin"
EVERYTHING = PrefixMatch("")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(str(tmp_path_factory.mktemp("tokens") / "data"), auth=True).start()
    try:
        yield process
    finally:
        process.stop()


def sdk(server: ServerProcess, token: str) -> S2:
    endpoints = Endpoints(account=server.http_url, basin=server.http_url)
    client: S2 = S2(token, endpoints=endpoints)
    return client


@pytest.fixture
async def root(server: ServerProcess) -> AsyncIterator[S2]:
    async with sdk(server, server.root_token) as client:
        if not await _has_basin(client):
            await client.create_basin(BASIN)
        yield client


async def _has_basin(client: S2) -> bool:
    page = await client.list_basins(prefix=BASIN)
    return any(info.name == BASIN for info in page.items)


def _read_write() -> OperationGroupPermissions:
    return OperationGroupPermissions(basin=Permission.READ_WRITE, stream=Permission.READ_WRITE)


async def test_issue_list_and_revoke_through_the_sdk(server: ServerProcess, root: S2) -> None:
    expires_at = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
    secret = await root.issue_access_token(
        "reader-1",
        scope=AccessTokenScope(
            basins=ExactMatch(BASIN),
            streams=PrefixMatch("logs/"),
            op_groups=OperationGroupPermissions(stream=Permission.READ),
            ops=[Operation.LIST_STREAMS],
        ),
        expires_at=expires_at,
    )
    listed = {info.id: info for info in (await root.list_access_tokens(prefix="reader-")).items}
    info = listed["reader-1"]
    assert info.expires_at == expires_at
    assert info.scope.basins == ExactMatch(BASIN) and info.scope.streams == PrefixMatch("logs/")
    assert info.scope.op_groups is not None and info.scope.op_groups.stream == Permission.READ
    assert info.scope.ops == [Operation.LIST_STREAMS]
    assert secret not in repr(listed), "the secret is shown only at issue"
    async with sdk(server, secret) as reader:
        await reader.basin(BASIN).list_streams()
        with pytest.raises(S2ServerError) as refused:
            await reader.basin(BASIN).create_stream("logs/new")
        assert (refused.value.status_code, refused.value.code) == (403, "permission_denied")
        await root.revoke_access_token("reader-1")
        with pytest.raises(S2ServerError) as revoked:
            await reader.basin(BASIN).list_streams()
        assert (revoked.value.status_code, revoked.value.code) == (401, "authn")
    with pytest.raises(S2ServerError) as gone:
        await root.revoke_access_token("reader-1")
    assert (gone.value.status_code, gone.value.code) == (404, "access_token_not_found")


async def test_a_token_issues_only_within_its_own_scope_and_lifetime(
    server: ServerProcess, root: S2
) -> None:
    expires_at = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    parent = await root.issue_access_token(
        "parent",
        scope=AccessTokenScope(
            basins=ExactMatch(BASIN),
            streams=PrefixMatch("team/"),
            access_tokens=PrefixMatch("child-"),
            op_groups=OperationGroupPermissions(stream=Permission.READ_WRITE),
            ops=[Operation.ISSUE_ACCESS_TOKEN, Operation.LIST_ACCESS_TOKENS],
        ),
        expires_at=expires_at,
    )
    within = AccessTokenScope(
        basins=ExactMatch(BASIN),
        streams=PrefixMatch("team/a/"),
        op_groups=OperationGroupPermissions(stream=Permission.READ),
    )
    broader = {
        "another basin": AccessTokenScope(
            basins=PrefixMatch(""), streams=PrefixMatch("team/"), ops=[Operation.READ]
        ),
        "other streams": AccessTokenScope(
            basins=ExactMatch(BASIN), streams=PrefixMatch("te"), ops=[Operation.READ]
        ),
        "another operation": AccessTokenScope(
            basins=ExactMatch(BASIN), streams=PrefixMatch("team/"), ops=[Operation.DELETE_BASIN]
        ),
        "token management beyond its own": AccessTokenScope(
            basins=ExactMatch(BASIN),
            access_tokens=PrefixMatch(""),
            ops=[Operation.ISSUE_ACCESS_TOKEN],
        ),
    }
    async with sdk(server, parent) as client:
        for what, scope in broader.items():
            with pytest.raises(S2ServerError) as refused:
                await client.issue_access_token(f"child-{len(what)}", scope=scope)
            assert refused.value.code == "permission_denied", what
        with pytest.raises(S2ServerError) as outliving:
            await client.issue_access_token(
                "child-late", scope=within, expires_at=expires_at + timedelta(seconds=1)
            )
        assert outliving.value.code == "permission_denied"
        with pytest.raises(S2ServerError) as foreign_id:
            await client.issue_access_token("other-id", scope=within)
        assert foreign_id.value.code == "permission_denied"
        await client.issue_access_token("child-ok", scope=within)
        children = (await client.list_access_tokens()).items
    assert [c.id for c in children] == ["child-ok"], "a token lists only the ids it covers"
    assert children[0].expires_at == expires_at, "a child expires with its parent by default"


async def test_auto_prefix_streams_round_trip(server: ServerProcess, root: S2) -> None:
    secret = await root.issue_access_token(
        "tenant-a",
        scope=AccessTokenScope(
            basins=ExactMatch(BASIN), streams=PrefixMatch("tenant-a/"), op_groups=_read_write()
        ),
        auto_prefix_streams=True,
    )
    async with sdk(server, secret) as tenant:
        basin = tenant.basin(BASIN)
        created = await basin.create_stream("events")
        assert created.name == "events"
        assert [s.name for s in (await basin.list_streams()).items] == ["events"]
        stream = basin.stream("events")
        ack = await stream.append(AppendInput(records=[Record(body=b"hello")]))
        assert ack.start.seq_num == 0
        batch = await stream.read(start=SeqNum(0))
        assert [r.body for r in batch.records] == [b"hello"]
        stored = [s.name for s in (await root.basin(BASIN).list_streams(prefix="tenant-a/")).items]
        assert stored == ["tenant-a/events"], "the prefix is added on the way in"
        await basin.delete_stream("events")
    deleted = (await root.basin(BASIN).list_streams(prefix="tenant-a/")).items
    assert all(s.deleted_at is not None for s in deleted)


async def test_revocation_ends_open_sessions_within_a_second(
    server: ServerProcess, root: S2
) -> None:
    await root.basin(BASIN).create_stream("sessions")
    secret = await root.issue_access_token(
        "session-holder",
        scope=AccessTokenScope(
            basins=ExactMatch(BASIN), streams=ExactMatch("sessions"), op_groups=_read_write()
        ),
    )
    async with sdk(server, secret) as holder:
        stream = holder.basin(BASIN).stream("sessions")

        async def follow() -> None:
            async for _ in stream.read_session(start=SeqNum(0)):
                pass

        with pytest.raises(S2ServerError) as append_ended:
            async with stream.append_session() as appender:
                first = await appender.submit(AppendInput(records=[Record(body=b"before")]))
                assert (await first).start.seq_num == 0
                reader = asyncio.create_task(follow())
                await asyncio.sleep(0.5)  # both sessions idle: the reader at the tail
                assert not reader.done()
                revoked_at = time.monotonic()
                await root.revoke_access_token("session-holder")
                with pytest.raises(S2ServerError) as ended:
                    await asyncio.wait_for(reader, timeout=5)
                assert ended.value.code == "authn"
                assert time.monotonic() - revoked_at < 1.0
                ticket = await appender.submit(AppendInput(records=[Record(body=b"after")]))
                await ticket
        assert append_ended.value.code == "authn"
    tail = await root.basin(BASIN).stream("sessions").check_tail()
    assert tail.seq_num == 1, "nothing was appended after the revocation"
