"""Encrypted streams over gRPC and the CLI: our client's `encryption_key` round trips unary
appends, sessions and reads for both ciphers; a missing key is `INVALID_ARGUMENT` /
`bad_header`, a wrong one `decryption_failed`; `StreamInfo.cipher` reports the cipher; the
CLI takes the key from `--encryption-key` or `S2S_ENCRYPTION_KEY`; the lake refuses to
materialize an encrypted stream."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys

import grpc
import pytest

from client import S2SClient, S2SError
from s2s.config import BasinConfig
from s2s.v1 import control_pb2 as cpb
from s2s.v1 import records_pb2 as pb
from tests.server_process import REPO, ServerProcess

KEY = os.urandom(32)
CIPHERS = ["aegis-256", "aes-256-gcm"]


async def _encrypted_basin(client: S2SClient, cipher: str) -> str:
    basin = f"enc-{cipher.replace('-', '')}"
    await client.create_basin(basin, BasinConfig(stream_cipher=cipher))
    await client.create_stream(basin, "vault")
    return basin


@pytest.mark.parametrize("cipher", CIPHERS)
async def test_round_trip_over_grpc(server: ServerProcess, cipher: str) -> None:
    async with S2SClient(server.target) as client:
        basin = await _encrypted_basin(client, cipher)
        stream = client.stream(basin, "vault", encryption_key=KEY)
        header = pb.Header(name=b"k", value=b"v")
        await stream.append([pb.AppendRecord(body=b"unary", headers=[header])])
        async with stream.append_session() as session:
            futures = [await session.submit([b"s%d" % i] * 10) for i in range(3)]
            await asyncio.gather(*futures)
        batch = await stream.read(seq_num=0)
        assert [(r.body, list(r.headers)) for r in batch.records[:2]] == [
            (b"unary", [header]),
            (b"s0", []),
        ]
        assert len(batch.records) == 31
        followed: list[bytes] = []
        async with asyncio.timeout(10):
            async for live in stream.read_session(seq_num=25):
                followed.extend(r.body for r in live.records)
                if len(followed) >= 6:
                    break
        assert followed == [b"s2"] * 6
        streams = (await client.list_streams(basin)).streams
        expected = {
            "aegis-256": cpb.STREAM_CIPHER_AEGIS_256,
            "aes-256-gcm": cpb.STREAM_CIPHER_AES_256_GCM,
        }
        assert [s.cipher for s in streams] == [expected[cipher]]
        assert (await client.stream(basin, "vault").check_tail()).seq_num == 31


async def test_missing_and_wrong_keys(server: ServerProcess) -> None:
    async with S2SClient(server.target, retries=0) as client:
        basin = await _encrypted_basin(client, "aegis-256")
        await client.stream(basin, "vault", encryption_key=KEY).append([b"secret"])
        keyless = client.stream(basin, "vault")
        with pytest.raises(S2SError) as missing:
            await keyless.append([b"x"])
        assert (missing.value.code, missing.value.status) == (
            "bad_header",
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert "aegis-256" in missing.value.message
        with pytest.raises(S2SError) as missing_read:
            await keyless.read(seq_num=0)
        assert missing_read.value.code == "bad_header"
        with pytest.raises(S2SError) as session_error:
            async with keyless.append_session() as session:
                await (await session.submit([b"x"]))
        assert session_error.value.code == "bad_header"
        wrong = client.stream(basin, "vault", encryption_key=bytes(32))
        with pytest.raises(S2SError) as failed:
            await wrong.read(seq_num=0)
        assert failed.value.code == "decryption_failed"
        with pytest.raises(S2SError) as failed_session:
            async with asyncio.timeout(10):
                async for _ in wrong.read_session(seq_num=0):
                    pass
        assert failed_session.value.code == "decryption_failed"
        assert (await keyless.check_tail()).seq_num == 1


async def test_lake_refuses_an_encrypted_source(server: ServerProcess) -> None:
    async with S2SClient(server.target, retries=0) as client:
        basin = await _encrypted_basin(client, "aes-256-gcm")
        with pytest.raises(S2SError) as refused:
            await client.create_materialization(
                "secrets", "main.secrets", basin=basin, stream="vault"
            )
        assert refused.value.code == "invalid"
        assert "encrypted" in refused.value.message
        assert await client.list_materializations() == []


def _cli(server: ServerProcess, *args: str, stdin: str = "", key: str | None = None):
    env = {k: v for k, v in os.environ.items() if k != "S2S_ENCRYPTION_KEY"}
    if key is not None:
        env["S2S_ENCRYPTION_KEY"] = key
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args, "--server", server.target],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        env=env,
    )


async def test_cli_encryption_key_flag_and_variable(server: ServerProcess) -> None:
    async with S2SClient(server.target) as client:
        basin = await _encrypted_basin(client, "aegis-256")
    key = base64.b64encode(KEY).decode()
    by_flag = _cli(server, "append", basin, "vault", "--encryption-key", key, stdin="one\ntwo\n")
    assert by_flag.returncode == 0, by_flag.stderr
    by_variable = _cli(server, "read", basin, "vault", "--count", "2", key=key)
    assert by_variable.stdout.splitlines() == ["one", "two"]
    keyless = _cli(server, "read", basin, "vault", "--count", "2")
    assert keyless.returncode == 1
    assert keyless.stderr.startswith("error: bad_header: missing encryption key")
    for bad in ("!!!!", base64.b64encode(bytes(16)).decode(), "A" * 45):
        refused = _cli(server, "append", basin, "vault", "--encryption-key", bad, stdin="x\n")
        assert refused.returncode == 2
        assert "--encryption-key" in refused.stderr and "base64 of 32 bytes" in refused.stderr
        assert "Traceback" not in refused.stderr
    bad_variable = _cli(server, "read", basin, "vault", key="short")
    assert bad_variable.returncode == 2 and "S2S_ENCRYPTION_KEY" in bad_variable.stderr
    assert _cli(server, "check-tail", basin, "vault").returncode == 0
