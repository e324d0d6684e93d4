"""Encrypted streams through the official SDK and raw HTTP: both ciphers round trip on every
data path (unary protobuf, JSON, SSE, S2S sessions, the producer), a wrong key fails the read,
a missing or malformed key is `bad_header` and appends nothing, a plaintext stream ignores a
key, check-tail needs none, and neither the bodies nor the key reach the disk."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import pathlib

import httpx
import pytest
from s2_sdk import (
    S2,
    AppendInput,
    BasinConfig,
    CommandRecord,
    Encryption,
    ReadLimit,
    Record,
    S2ServerError,
    SeqNum,
    TailOffset,
)

from tests.interop.conftest import sdk_client
from tests.server_process import ServerProcess

CIPHERS = [Encryption.AEGIS_256, Encryption.AES_256_GCM]
KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
SECRET = b"the-secret-body-7f3a9c"


async def _encrypted_stream(sdk: S2, basin_name: str, cipher: Encryption, name: str = "vault"):
    await sdk.create_basin(basin_name, config=BasinConfig(stream_cipher=cipher))
    await sdk.basin(basin_name).create_stream(name)
    return sdk.basin(basin_name)


@pytest.mark.parametrize("cipher", CIPHERS, ids=lambda c: c.value)
async def test_unary_round_trip_with_headers_timestamps_and_commands(
    sdk: S2, basin_name: str, cipher: Encryption
) -> None:
    basin = await _encrypted_stream(sdk, basin_name, cipher)
    stream = basin.stream("vault", encryption_key=KEY)
    records = [
        Record(body=SECRET),
        Record(body=b"", headers=[(b"k", b"v"), (b"e", b"")]),
        Record(body=b"\x00\xff" * 300, headers=[(b"h", b"")], timestamp=7),
    ]
    await stream.append(AppendInput(records=records))
    await stream.append(AppendInput(records=[CommandRecord.fence("f1"), Record(body=b"after")]))
    await stream.append(AppendInput(records=[Record(body=b"last")], fencing_token="f1"))

    batch = await stream.read(start=SeqNum(0))
    got = [(r.seq_num, r.body, r.headers) for r in batch.records]
    assert got == [
        (0, SECRET, []),
        (1, b"", [(b"k", b"v"), (b"e", b"")]),
        (2, b"\x00\xff" * 300, [(b"h", b"")]),
        (3, b"f1", [(b"", b"fence")]),
        (4, b"after", []),
        (5, b"last", []),
    ]
    assert batch.records[2].timestamp >= 7
    # Check-tail needs no key; listing shows the stream's cipher.
    assert (await basin.stream("vault").check_tail()).seq_num == 6
    listed = await basin.list_streams()
    assert [(s.name, s.cipher) for s in listed.items] == [("vault", cipher)]


@pytest.mark.parametrize("cipher", CIPHERS, ids=lambda c: c.value)
async def test_sessions_and_producer_round_trip(
    sdk: S2, basin_name: str, cipher: Encryption
) -> None:
    basin = await _encrypted_stream(sdk, basin_name, cipher)
    stream = basin.stream("vault", encryption_key=base64.b64encode(KEY).decode())
    async with stream.append_session() as session:
        tickets = [
            await session.submit(AppendInput(records=[Record(body=b"s%d" % i) for i in range(100)]))
            for i in range(5)
        ]
        acks = [await ticket for ticket in tickets]
    assert acks[-1].end.seq_num == 500

    seen: list[bytes] = []
    async with asyncio.timeout(10):
        async for batch in stream.read_session(start=SeqNum(0)):
            seen.extend(r.body for r in batch.records)
            if len(seen) >= 500:
                break
    assert seen == [b"s%d" % i for _ in range(5) for i in range(100)]


@pytest.mark.parametrize("cipher", CIPHERS, ids=lambda c: c.value)
async def test_json_and_sse_reads_are_opened(
    sdk: S2, server: ServerProcess, basin_name: str, cipher: Encryption
) -> None:
    basin = await _encrypted_stream(sdk, basin_name, cipher)
    await basin.stream("vault", encryption_key=KEY).append(
        AppendInput(records=[Record(body=b"json-body", headers=[(b"a", b"b")])])
    )
    headers = {"s2-basin": basin_name, "s2-encryption-key": base64.b64encode(KEY).decode()}
    async with httpx.AsyncClient(base_url=server.http_url, headers=headers) as http:
        unary = await http.get("/v1/streams/vault/records", params={"seq_num": 0})
        assert unary.status_code == 200, unary.text
        assert unary.json()["records"][0]["body"] == "json-body"
        assert unary.json()["records"][0]["headers"] == [["a", "b"]]
        sse = await http.get(
            "/v1/streams/vault/records",
            params={"seq_num": 0, "wait": 0},
            headers={"accept": "text/event-stream"},
        )
        assert sse.status_code == 200
        assert '"json-body"' in sse.text
        appended = await http.post(
            "/v1/streams/vault/records",
            json={"records": [{"body": "from-json"}]},
        )
        assert appended.status_code == 200, appended.text
    batch = await basin.stream("vault", encryption_key=KEY).read(start=SeqNum(1))
    assert [r.body for r in batch.records] == [b"from-json"]


@pytest.mark.parametrize("cipher", CIPHERS, ids=lambda c: c.value)
async def test_wrong_key_fails_the_read(sdk: S2, basin_name: str, cipher: Encryption) -> None:
    basin = await _encrypted_stream(sdk, basin_name, cipher)
    await basin.stream("vault", encryption_key=KEY).append(
        AppendInput(records=[Record(body=SECRET)])
    )
    wrong = basin.stream("vault", encryption_key=OTHER_KEY)
    with pytest.raises(S2ServerError) as unary:
        await wrong.read(start=SeqNum(0))
    assert (unary.value.code, unary.value.status_code) == ("decryption_failed", 400)
    with pytest.raises(S2ServerError) as session:
        async with asyncio.timeout(10):
            async for _ in wrong.read_session(start=SeqNum(0)):
                pass
    assert session.value.code == "decryption_failed"
    # An append with another key is accepted (S2 does not check it), and reads as it was
    # written: each record opens only with its own key.
    await wrong.append(AppendInput(records=[Record(body=b"other")]))
    other = await wrong.read(start=SeqNum(1))
    assert [r.body for r in other.records] == [b"other"]


@pytest.mark.parametrize("cipher", CIPHERS, ids=lambda c: c.value)
async def test_missing_or_malformed_key_is_bad_header_and_appends_nothing(
    sdk: S2, server: ServerProcess, basin_name: str, cipher: Encryption
) -> None:
    basin = await _encrypted_stream(sdk, basin_name, cipher)
    keyless = basin.stream("vault")
    for call in (
        keyless.append(AppendInput(records=[Record(body=b"x")])),
        keyless.read(start=SeqNum(0)),
    ):
        with pytest.raises(S2ServerError) as error:
            await call
        assert (error.value.code, error.value.status_code) == ("bad_header", 400)
        assert f"missing encryption key for stream cipher '{cipher.value}'" in str(error.value)
    with pytest.raises(S2ServerError) as session_error:
        async with keyless.append_session() as session:
            await (await session.submit(AppendInput(records=[Record(body=b"x")])))
    assert session_error.value.code == "bad_header"
    with pytest.raises(S2ServerError):
        async with asyncio.timeout(10):
            async for _ in keyless.read_session(start=SeqNum(0)):
                pass

    base = {b"s2-basin": basin_name.encode(), b"content-type": b"application/json"}
    malformed = {
        "not base64": b"!!!!",
        "not ASCII": b"\xff\xfe\xfd\xfc",
        "16 bytes": base64.b64encode(bytes(16)),
        "33 bytes": base64.b64encode(bytes(33)),
        "too long": b"A" * 45,
        "empty": b"",
    }
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        for what, key in malformed.items():
            response = await http.post(
                "/v1/streams/vault/records",
                json={"records": [{"body": "x"}]},
                headers={**base, b"s2-encryption-key": key},
            )
            assert response.status_code == 400, what
            assert response.json()["code"] == "bad_header", what
            assert "encryption key" in response.json()["message"], what
    assert (await keyless.check_tail()).seq_num == 0


async def test_plaintext_stream_ignores_a_key(
    sdk: S2, server: ServerProcess, basin_name: str
) -> None:
    await sdk.create_basin(basin_name)
    await sdk.basin(basin_name).create_stream("plain")
    keyed = sdk.basin(basin_name).stream("plain", encryption_key=KEY)
    await keyed.append(AppendInput(records=[Record(body=b"clear")]))
    assert [r.body for r in (await keyed.read(start=SeqNum(0))).records] == [b"clear"]
    # A key that would not even decode is ignored too; only its length is checked.
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        response = await http.get(
            "/v1/streams/plain/records",
            params={"seq_num": 0},
            headers={"s2-basin": basin_name, "s2-encryption-key": "!!!!"},
        )
    assert response.status_code == 200
    assert response.json()["records"][0]["body"] == "clear"
    plain = await sdk.basin(basin_name).list_streams()
    assert [s.cipher for s in plain.items] == [None]


async def test_cipher_is_fixed_at_creation(sdk: S2, basin_name: str) -> None:
    await sdk.create_basin(basin_name, config=BasinConfig(stream_cipher=Encryption.AEGIS_256))
    basin = sdk.basin(basin_name)
    await basin.create_stream("before")
    await sdk.reconfigure_basin(
        basin_name, config=BasinConfig(stream_cipher=Encryption.AES_256_GCM)
    )
    await basin.create_stream("after")
    ciphers = {s.name: s.cipher for s in (await basin.list_streams()).items}
    assert ciphers == {"before": Encryption.AEGIS_256, "after": Encryption.AES_256_GCM}
    for name in ("before", "after"):
        stream = basin.stream(name, encryption_key=KEY)
        await stream.append(AppendInput(records=[Record(body=name.encode())]))
        assert [r.body for r in (await stream.read(start=TailOffset(1))).records] == [name.encode()]


async def test_nothing_secret_reaches_the_disk(tmp_path: pathlib.Path) -> None:
    """The bodies and headers are stored sealed and the key is stored nowhere."""
    data_dir = tmp_path / "data"
    server = ServerProcess(str(data_dir)).start()
    key = os.urandom(32)
    try:
        async with sdk_client(server) as sdk:
            for cipher in CIPHERS:
                basin_name = f"disk-{cipher.value}"
                basin = await _encrypted_stream(sdk, basin_name, cipher)
                stream = basin.stream("vault", encryption_key=key)
                await stream.append(
                    AppendInput(records=[Record(body=SECRET, headers=[(b"header-secret", b"v")])])
                )
                read = await stream.read(start=SeqNum(0), limit=ReadLimit(count=1))
                assert read.records[0].body == SECRET
    finally:
        server.stop()
    stored = b"".join(path.read_bytes() for path in data_dir.rglob("*") if path.is_file())
    assert stored, "the data directory holds the stream"
    for secret in (SECRET, b"header-secret", key, base64.b64encode(key)):
        assert secret not in stored
    assert json.dumps(base64.b64encode(key).decode()).encode() not in stored
