"""Records of encrypted streams: sealed with the client's key on append, opened on read.

A stream created in a basin with a `stream_cipher` is encrypted for life
(docs/adr/0007-client-provided-encryption.md). The key comes with each append and read
(`s2s.encryption_key`); the server never writes it anywhere.

At rest an encrypted record is a record without headers whose body is S2's framing:

    [format id: 1 byte][nonce][ciphertext][tag: 16 bytes]
    0x01 AEGIS-256    (32-byte nonce)
    0x02 AES-256-GCM  (12-byte nonce)

The plaintext is the record's headers and body fields as its stored entry has them
(`wire.envelope_fields`), so opening splices it back behind the seq_num and timestamp fields
and the reader's result is byte for byte what a plaintext stream would have stored. Nonces are
random per record (one `os.urandom` call per batch). The associated data is the stream's
identity, so a record moved into another stream does not open. Command records (fence, trim)
stay plaintext: the server itself acts on them. Metered sizes stay the plaintext's, so limits
and metering do not depend on the cipher.

AES-GCM with random 96-bit nonces is safe for 2^32 records per key: as in S2, a stream with
that cipher takes sequence numbers up to `AES_GCM_SEQ_NUM_MAX` only.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Protocol

from aeg import aegis256
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from s2s.encryption_key import EncryptionKey, missing_key
from s2s.errors import S2Error
from s2s.records import ValidatedBatch
from s2s.wire import entry_bytes, envelope_fields, split_entry

AES_GCM_SEQ_NUM_MAX = 2**32 - 1
"""The last sequence number an AES-256-GCM stream takes (NIST SP 800-38D, random nonces)."""
TAG_BYTES = 16


class RecordCipher(Protocol):
    """One stream cipher with one key: seals and opens single records."""

    name: str
    format_id: int
    nonce_bytes: int

    def seal(self, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        """The stored body: format id, nonce, ciphertext and tag."""
        ...

    def open(self, nonce: bytes | memoryview, sealed: bytes | memoryview, aad: bytes) -> bytes:
        """The plaintext of `sealed` (ciphertext and tag); `DecryptionFailed` if it does
        not authenticate."""
        ...


class DecryptionFailed(Exception):
    pass


class _Aegis256:
    name = "aegis-256"
    format_id = 0x01
    nonce_bytes = aegis256.NONCEBYTES

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._prefix = bytes([self.format_id])

    def seal(self, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        return b"".join((self._prefix, nonce, aegis256.encrypt(self._key, nonce, plaintext, aad)))

    def open(self, nonce: bytes | memoryview, sealed: bytes | memoryview, aad: bytes) -> bytes:
        try:
            return bytes(aegis256.decrypt(self._key, nonce, sealed, aad))
        except ValueError:
            raise DecryptionFailed from None


class _Aes256Gcm:
    name = "aes-256-gcm"
    format_id = 0x02
    nonce_bytes = 12

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)
        self._prefix = bytes([self.format_id])

    def seal(self, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        return b"".join((self._prefix, nonce, self._aead.encrypt(nonce, plaintext, aad)))

    def open(self, nonce: bytes | memoryview, sealed: bytes | memoryview, aad: bytes) -> bytes:
        try:
            return self._aead.decrypt(nonce, sealed, aad)
        except InvalidTag:
            raise DecryptionFailed from None


_CIPHERS: dict[str, type[_Aegis256] | type[_Aes256Gcm]] = {
    _Aegis256.name: _Aegis256,
    _Aes256Gcm.name: _Aes256Gcm,
}


def record_cipher(cipher: str | None, key: EncryptionKey | None) -> RecordCipher | None:
    """The cipher for a stream's records with the request's key (None: a plaintext stream,
    whose key, if any, is ignored); `bad_header` if the stream needs a key it did not get."""
    if cipher is None:
        return None
    if key is None:
        raise missing_key(cipher)
    return _CIPHERS[cipher](key.material(cipher))


def stream_identity(basin: str, stream: str) -> bytes:
    """The associated data of a stream's records: its basin and name, which never change."""
    return b"".join((basin.encode(), b"\x00", stream.encode()))


def seal_batch(batch: ValidatedBatch, cipher: RecordCipher, aad: bytes) -> ValidatedBatch:
    """The batch with every record but its commands sealed; sizes and commands unchanged."""
    nonce_bytes = cipher.nonce_bytes
    nonces = os.urandom(nonce_bytes * batch.count)
    headed = batch.headed
    commands = {command.index for command in batch.commands}
    sealed = [
        body
        if index in commands
        else cipher.seal(
            nonces[index * nonce_bytes : (index + 1) * nonce_bytes],
            envelope_fields(headed.get(index), body),
            aad,
        )
        for index, body in enumerate(batch.bodies)
    ]
    return dataclasses.replace(
        batch, bodies=sealed, headed={index: headed[index] for index in commands}
    )


def open_entries(payload: bytes | memoryview, cipher: RecordCipher, aad: bytes) -> bytes:
    """Stored `ReadBatch.records` entries with every sealed record opened.

    `decryption_failed` if a record does not authenticate with this key (the wrong key, or
    damage); `storage` if a record is not what this cipher writes."""
    data = memoryview(payload)
    opened: list[bytes | memoryview] = []
    nonce_bytes = cipher.nonce_bytes
    pos = 0
    while pos < len(data):
        try:
            fields, envelope, body, end = split_entry(data, pos)
        except ValueError as error:
            raise _not_sealed(cipher, f"a stored record does not decode: {error}") from None
        if body < 0:
            if envelope == end:
                raise _not_sealed(cipher, "a stored record has neither headers nor a body")
            opened.append(data[pos:end])  # a command record, stored plaintext
        else:
            if end - body < 1 + nonce_bytes + TAG_BYTES or data[body] != cipher.format_id:
                raise _not_sealed(cipher, "a stored record is not sealed with the stream's cipher")
            nonce_end = body + 1 + nonce_bytes
            try:
                plaintext = cipher.open(data[body + 1 : nonce_end], data[nonce_end:end], aad)
            except DecryptionFailed:
                raise S2Error(
                    "decryption_failed",
                    "record decryption failed: the encryption key is not the one these "
                    "records were appended with",
                ) from None
            opened.append(entry_bytes(data[fields:envelope], plaintext))
        pos = end
    return b"".join(opened)


def _not_sealed(cipher: RecordCipher, detail: str) -> S2Error:
    return S2Error(
        "storage", f"cannot open a record of a stream encrypted with {cipher.name}: {detail}"
    )
