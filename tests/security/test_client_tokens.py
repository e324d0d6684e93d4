"""Our client and CLI with access tokens, against a real server with auth on: `S2SClient`
sends its token on every kind of call; the CLI issues, lists and revokes tokens, takes its
token from S2S_ACCESS_TOKEN, and otherwise from the local server's root token file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from client import S2SClient, S2SError
from s2s.records import fence_record
from s2s.v1 import records_pb2 as pb
from tests.server_process import REPO, ServerProcess, environment_without_s2s

BASIN = "client-tokens"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(str(tmp_path_factory.mktemp("client") / "data"), auth=True).start()
    try:
        yield process
    finally:
        process.stop()


def s2s(
    server: ServerProcess, *args: str, token: str | None = None, data_dir: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = environment_without_s2s()
    if token is not None:
        env["S2S_ACCESS_TOKEN"] = token
    env["S2S_DATA_DIR"] = data_dir or os.devnull  # no root token file unless one is given
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args, "--server", server.target],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=60,
    )


async def test_the_client_sends_its_token_on_every_kind_of_call(server: ServerProcess) -> None:
    async with S2SClient(server.target) as anonymous:
        with pytest.raises(S2SError) as refused:
            await anonymous.list_basins()
        assert refused.value.code == "authn"
    async with S2SClient(server.target, access_token=server.root_token) as client:
        await client.create_basin(BASIN)
        await client.create_stream(BASIN, "s")
        stream = client.stream(BASIN, "s")
        await stream.append([pb.AppendRecord(body=b"unary")])
        async with stream.append_session() as session:
            await (await session.submit([pb.AppendRecord(body=b"session"), fence_record("f")]))
        batches = [b async for b in stream.read_session(seq_num=0, count=3)]
        assert [r.body for b in batches for r in b.records] == [b"unary", b"session", b"f"]


def test_the_cli_manages_tokens(server: ServerProcess, tmp_path: Path) -> None:
    root = server.root_token
    scope = {"basins": {"prefix": ""}, "op_groups": {"account": {"read": True}}}
    issued = s2s(server, "tokens", "issue", "cli-reader", "--scope", json.dumps(scope), token=root)
    assert issued.returncode == 0, issued.stderr
    secret = issued.stdout.strip()
    assert secret.startswith("s2s_")
    listed = s2s(server, "tokens", "list", "--prefix", "cli-", "--json", token=root)
    assert listed.returncode == 0, listed.stderr
    info = json.loads(listed.stdout)
    assert info["id"] == "cli-reader" and info["scope"]["op_groups"]["account"]["read"]
    assert s2s(server, "basins", "list", token=secret).returncode == 0
    refused = s2s(server, "basins", "create", "made-by-reader", token=secret)
    assert refused.returncode == 1 and "permission_denied" in refused.stderr
    revoked = s2s(server, "tokens", "revoke", "cli-reader", token=root)
    assert revoked.returncode == 0, revoked.stderr
    after = s2s(server, "basins", "list", token=secret)
    assert after.returncode == 1 and "authn" in after.stderr
    bad_scope = s2s(server, "tokens", "issue", "x", "--scope", '{"basins": 3}', token=root)
    assert bad_scope.returncode == 2 and "--scope" in bad_scope.stderr


def test_the_cli_falls_back_to_the_local_root_token(server: ServerProcess) -> None:
    assert s2s(server, "basins", "list").returncode == 1, "no token, no file: refused"
    fallback = s2s(server, "basins", "list", data_dir=server.data_dir)
    assert fallback.returncode == 0, fallback.stderr


async def test_the_client_reads_its_token_from_the_environment(
    server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("S2S_ACCESS_TOKEN", server.root_token)
    async with S2SClient(server.target) as client:
        await client.list_basins()
