"""A store in an encrypted basin against a real server: the SDK sends its key with every read
and append, the records are sealed at rest (a reader without the key is refused), and, as the
server cannot read them to compact them, the store compacts itself from its commits: its stream
is trimmed to a snapshot, and opening it reads that, not every change written."""

from __future__ import annotations

import base64

import pytest

from client import S2SClient, S2SError
from s2s.config import BasinConfig
from s2s.kv_format import OP_HEADER, SNAPSHOT, store_stream

BASIN = "kv-sealed-basin"
KEY = bytes(range(32))
VALUE = "v" * 50_000
ROUNDS = 4


async def test_a_store_in_an_encrypted_basin_is_sealed_and_compacts_itself(
    client: S2SClient,
) -> None:
    await client.create_basin(BASIN, BasinConfig(stream_cipher="aegis-256"))
    store = await client.get_kv_store("secrets", basin=BASIN, encryption_key=KEY)
    assert store.compacts_itself
    model: dict[str, str] = {}
    # 20 values of 50 KB (1 MB live), each rewritten every round: after the third round the
    # stream holds twice the snapshot and more, so a commit compacts it.
    for round_ in range(ROUNDS):
        for i in range(20):
            store[f"key-{i:02}"] = model[f"key-{i:02}"] = f"{round_}:{VALUE}"
            if i % 5 == 4:
                await store.commit()
    written = store.revision

    stream = client.stream(
        BASIN, store_stream("secrets"), encryption_key=base64.b64encode(KEY).decode()
    )
    batch = await stream.read(seq_num=0, clamp=True)
    first = batch.records[0]
    assert first.seq_num > 0, "the stream was never trimmed: the store did not compact itself"
    assert (first.headers[0].name, first.headers[0].value) == (OP_HEADER, SNAPSHOT)
    assert VALUE.encode()[:1000] in b"".join(r.body for r in batch.records)  # opened with the key

    reopened = await client.get_kv_store("secrets", basin=BASIN, encryption_key=KEY)
    assert dict(reopened) == model
    assert reopened.revision >= written
    # Later commits build on the compacted stream.
    reopened["key-00"] = model["key-00"] = "after"
    await reopened.commit()
    again = await client.get_kv_store("secrets", basin=BASIN, encryption_key=KEY)
    assert dict(again) == model

    with pytest.raises(S2SError) as refused:
        await client.get_kv_store("secrets", basin=BASIN)
    assert refused.value.code == "bad_header" and "encryption key" in refused.value.message


async def test_compact_on_demand_keeps_every_entry(client: S2SClient) -> None:
    store = await client.get_kv_store("plain-compact")
    for round_ in range(3):
        for i in range(50):
            store[f"k{i}"] = f"{round_}-{i}"
        await store.commit()
    trimmed_to = await store.compact()
    assert trimmed_to == store.revision == 150
    reopened = await client.get_kv_store("plain-compact")
    assert dict(reopened) == {f"k{i}": f"2-{i}" for i in range(50)}
    assert reopened.revision > trimmed_to  # past the snapshot's part and the trim
