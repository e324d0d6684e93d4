"""Record encryption on its own (`server/encryption.py`, `s2s/encryption_key.py`) and in the
engine: sealed entries open to exactly the plaintext stream's entries, nonces never repeat,
anything but the right key and stream fails to open, the key header's rules, and the
AES-256-GCM sequence-number limit."""

from __future__ import annotations

import base64

import pytest

from s2s.config import BasinConfig
from s2s.encryption_key import EncryptionKey
from s2s.errors import S2Error
from s2s.records import ValidatedBatch, fence_record, trim_record, validate_append_input
from s2s.v1 import records_pb2 as pb
from s2s.wire import record_entries
from server.encryption import (
    AES_GCM_SEQ_NUM_MAX,
    RecordCipher,
    open_entries,
    record_cipher,
    seal_batch,
    stream_identity,
)
from server.reader import ReadLimits, ReadStart
from server.storage.kv import Put, Table
from server.storage.layout import TailRow, sid_key
from server.streamstore import StreamStore
from tests.conftest import decode

KEY = EncryptionKey.from_bytes(bytes(range(32)))
AAD = stream_identity("basin", "stream")


def _cipher(name: str, key: EncryptionKey = KEY) -> RecordCipher:
    cipher = record_cipher(name, key)
    assert cipher is not None
    return cipher


def _batch() -> ValidatedBatch:
    records = [
        pb.AppendRecord(body=b"plain"),
        pb.AppendRecord(body=b""),
        pb.AppendRecord(body=b"x" * 300, headers=[pb.Header(name=b"k", value=b"v")]),
        fence_record("owner"),
        pb.AppendRecord(headers=[pb.Header(name=b"only", value=b"")]),
        trim_record(1),
        pb.AppendRecord(body=bytes(range(256)) * 4),
    ]
    return validate_append_input(pb.AppendInput(records=records))


def _entries(batch: ValidatedBatch, first_seq: int, timestamps: list[int]) -> bytes:
    chunks, _ = record_entries(batch.bodies, batch.headed, first_seq, timestamps)
    return b"".join(chunks)


def test_aegis_256_matches_the_specification() -> None:
    """Test vector 1 of the AEGIS-256 specification (draft-irtf-cfrg-aegis-aead)."""
    from aeg import aegis256

    key = bytes.fromhex("1001" + "00" * 30)
    nonce = bytes.fromhex("1000020000000000000000000000000000000000000000000000000000000000")
    sealed = bytes(aegis256.encrypt(key, nonce, bytes(16), b""))
    assert sealed.hex() == "754fc3d8c973246dcc6d741412a4b236" + "3fe91994768b332ed7f570a19ec5896e"


@pytest.mark.parametrize("name", ["aegis-256", "aes-256-gcm"])
@pytest.mark.parametrize(("first_seq", "timestamp"), [(0, 0), (1, 5), (2**40, 2**50)])
def test_sealed_entries_open_to_the_plaintext_entries(
    name: str, first_seq: int, timestamp: int
) -> None:
    batch = _batch()
    timestamps = [timestamp] * batch.count
    sealed = seal_batch(batch, _cipher(name), AAD)
    assert sealed.metered_sizes == batch.metered_sizes
    assert sealed.commands == batch.commands
    assert set(sealed.headed) == {3, 5}, "only commands keep their headers in the clear"
    stored = _entries(sealed, first_seq, timestamps)
    for secret in (b"plain", b"x" * 300, b"only", bytes(range(256))):
        assert secret not in stored
    assert open_entries(stored, _cipher(name), AAD) == _entries(batch, first_seq, timestamps)
    # The commands are readable by the server as they were.
    records = decode(stored)
    assert records[3].headers[0].value == b"fence" and records[3].body == b"owner"


@pytest.mark.parametrize("name", ["aegis-256", "aes-256-gcm"])
def test_nonces_are_fresh_for_every_record(name: str) -> None:
    cipher = _cipher(name)
    batch = validate_append_input(pb.AppendInput(records=[pb.AppendRecord(body=b"same")] * 500))
    bodies = [bytes(body) for _ in range(2) for body in seal_batch(batch, cipher, AAD).bodies]
    nonces = {body[1 : 1 + cipher.nonce_bytes] for body in bodies}
    assert len(nonces) == 1000
    assert len(set(bodies)) == 1000
    assert {body[0] for body in bodies} == {cipher.format_id}


@pytest.mark.parametrize("name", ["aegis-256", "aes-256-gcm"])
def test_only_the_right_key_and_stream_open_a_record(name: str) -> None:
    batch = validate_append_input(pb.AppendInput(records=[pb.AppendRecord(body=b"secret")]))
    stored = _entries(seal_batch(batch, _cipher(name), AAD), 3, [9])
    other_key = EncryptionKey.from_bytes(bytes(32))
    attempts = {
        "another key": (_cipher(name, other_key), AAD),
        "another stream": (_cipher(name), stream_identity("basin", "stream2")),
        "another basin": (_cipher(name), stream_identity("basin2", "stream")),
    }
    for what, (cipher, aad) in attempts.items():
        with pytest.raises(S2Error) as failed:
            open_entries(stored, cipher, aad)
        assert failed.value.code == "decryption_failed", what
    for index in range(len(stored) - 20, len(stored)):  # the ciphertext and the tag
        damaged = bytearray(stored)
        damaged[index] ^= 0x01
        with pytest.raises(S2Error) as failed:
            open_entries(bytes(damaged), _cipher(name), AAD)
        assert failed.value.code == "decryption_failed"


def test_a_record_of_another_cipher_or_in_the_clear_is_a_storage_error() -> None:
    batch = validate_append_input(pb.AppendInput(records=[pb.AppendRecord(body=b"x" * 64)]))
    aegis_sealed = _entries(seal_batch(batch, _cipher("aegis-256"), AAD), 0, [0])
    with pytest.raises(S2Error) as mismatch:
        open_entries(aegis_sealed, _cipher("aes-256-gcm"), AAD)
    assert mismatch.value.code == "storage"
    with pytest.raises(S2Error) as clear:
        open_entries(_entries(batch, 0, [0]), _cipher("aegis-256"), AAD)
    assert clear.value.code == "storage"


def test_key_header_rules() -> None:
    assert EncryptionKey.from_header(None) is None
    for bad in ("", "   ", "A" * 45):
        with pytest.raises(S2Error) as refused:
            EncryptionKey.from_header(bad)
        assert refused.value.code == "bad_header"
    encoded = base64.b64encode(bytes(range(32))).decode()
    key = EncryptionKey.from_header(f"  {encoded}\n")
    assert key is not None and key.header_value == encoded
    assert key.material("aegis-256") == bytes(range(32))
    assert encoded not in repr(key)
    for bad, detail in (("!!!!", "invalid base64"), (base64.b64encode(bytes(31)).decode(), "31")):
        with pytest.raises(S2Error) as refused:
            record_cipher("aes-256-gcm", EncryptionKey.from_header(bad))
        assert refused.value.code == "bad_header"
        assert "aes-256-gcm" in refused.value.message and detail in refused.value.message
    with pytest.raises(S2Error) as missing:
        record_cipher("aegis-256", None)
    assert "missing encryption key for stream cipher 'aegis-256'" in missing.value.message
    assert record_cipher(None, EncryptionKey.from_header("!!!!")) is None, "plaintext ignores it"


async def test_aes_gcm_streams_stop_at_two_to_the_32(store: StreamStore) -> None:
    """Random 96-bit nonces are safe for 2^32 records per key: like S2, an AES-256-GCM
    stream refuses records past that sequence number; commands (plaintext) still go in."""
    await store.create_basin("gcm-basin", BasinConfig(stream_cipher="aes-256-gcm"))
    await store.create_stream("gcm-basin", "s")
    sequencer = await store.sequencers.get("gcm-basin", "s")
    assert sequencer.cipher == "aes-256-gcm"
    # The stream as if 2^32 - 1 records had gone in: its stored tail, then a sequencer loaded
    # from it (appends expect the stored tail to be the one they were numbered from).
    near_the_end = TailRow(next_seq=AES_GCM_SEQ_NUM_MAX - 1)
    await store.committer.commit([Put(Table.TAILS, sid_key(sequencer.sid), near_the_end.encode())])
    store.sequencers.forget("gcm-basin", "s", sequencer.sid)
    one = validate_append_input(pb.AppendInput(records=[pb.AppendRecord(body=b"a")]))
    ack = await store.append("gcm-basin", "s", one, key=KEY)
    assert ack.start.seq_num == AES_GCM_SEQ_NUM_MAX - 1
    two = validate_append_input(pb.AppendInput(records=[pb.AppendRecord(body=b"b")] * 2))
    with pytest.raises(S2Error) as refused:
        await store.append("gcm-basin", "s", two, key=KEY)
    assert refused.value.code == "invalid" and str(AES_GCM_SEQ_NUM_MAX) in refused.value.message
    assert (await store.append("gcm-basin", "s", one, key=KEY)).start.seq_num == AES_GCM_SEQ_NUM_MAX
    fence = validate_append_input(pb.AppendInput(records=[fence_record("t")]))
    assert (
        await store.append("gcm-basin", "s", fence, key=KEY)
    ).start.seq_num == AES_GCM_SEQ_NUM_MAX + 1
    read = await store.read(
        "gcm-basin", "s", ReadStart(seq_num=AES_GCM_SEQ_NUM_MAX - 1), ReadLimits(), key=KEY
    )
    assert read.records is not None
    assert [r.body for r in decode(read.records.payload)] == [b"a", b"a", b"t"]


def test_a_stored_record_whose_field_runs_past_its_entry_is_a_storage_error() -> None:
    """Found by the fuzzer (`bench/fuzz.py --target batch`): a seq_num or timestamp varint
    running on past the entry's end raised IndexError from `wire.split_entry`."""
    entry = b"\x0a\x02\x08\xff"  # an entry of 2 bytes: a seq_num field whose varint goes on
    with pytest.raises(S2Error) as truncated:
        open_entries(entry + b"\x01", _cipher("aegis-256"), AAD)
    assert truncated.value.code == "storage"
    assert "runs past the end" in truncated.value.message
