"""Records of encrypted streams: sealed with the client's key on append, opened on read.

A stream created in a basin with a `stream_cipher` is encrypted for life
(docs/adr/0007-client-provided-encryption.md). The key comes with each append and read
(`s2s.encryption_key`); the server never writes it anywhere.

At rest an encrypted record is a record without headers whose body is S2's framing:

    [format id: 1 byte][nonce][ciphertext][tag: 16 bytes]
    0x01 AEGIS-256    (32-byte nonce)
    0x02 AES-256-GCM  (12-byte nonce)

The plaintext is the record's headers and body fields as its stored entry has them
(`wire.envelope_head` and the body), so opening splices it back behind the seq_num and
timestamp fields and the reader's result is byte for byte what a plaintext stream would have
stored. Nonces are
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
from collections.abc import Sequence
from itertools import accumulate
from typing import Protocol

from aeg import aegis256
from aeg._aegis import ffi as _aegis_ffi
from aeg._aegis import lib as _aegis_lib
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from s2s.encryption_key import EncryptionKey, missing_key
from s2s.errors import S2Error
from s2s.records import ValidatedBatch
from s2s.wire import entry_bytes, envelope_head, split_entry

AES_GCM_SEQ_NUM_MAX = 2**32 - 1
"""The last sequence number an AES-256-GCM stream takes (NIST SP 800-38D, random nonces)."""
TAG_BYTES = 16


class RecordCipher(Protocol):
    """One stream cipher with one key: seals a batch's records, opens single records."""

    name: str
    format_id: int
    nonce_bytes: int

    def seal_all(
        self, plaintext: bytes, lengths: list[int], aad: bytes
    ) -> Sequence[bytes | memoryview]:
        """The stored bodies (format id, nonce, ciphertext, tag) of the records whose
        plaintexts lie back to back in `plaintext`, `lengths` bytes each."""
        ...

    def open(self, nonce: memoryview, sealed: memoryview, aad: bytes) -> bytes:
        """The plaintext of `sealed` (ciphertext and tag); `DecryptionFailed` if it does
        not authenticate."""
        ...


class DecryptionFailed(Exception):
    pass


class _Aegis256:
    """AEGIS-256 through libaegis's own function, as `aeg` binds it (`aeg._aegis`): the
    batch is sealed into one buffer, one C call per record on offsets into it.
    `aeg.aegis256.encrypt` checks, converts and allocates its arguments in Python on every
    call, ~3 us per record, most of a 1000-record batch's sealing (docs/adr/0007); the test
    vector in tests/test_encryption.py guards this path."""

    name = "aegis-256"
    format_id = 0x01
    nonce_bytes = 32

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._key_pointer = _aegis_ffi.from_buffer(key)

    def seal_all(
        self, plaintext: bytes, lengths: list[int], aad: bytes
    ) -> Sequence[bytes | memoryview]:
        nonce_bytes = self.nonce_bytes
        ciphertext_at = 1 + nonce_bytes
        overhead = ciphertext_at + TAG_BYTES
        count = len(lengths)
        # Format id and nonce of every record, 33 bytes each, from one urandom call.
        prefixes = bytearray(os.urandom(ciphertext_at * count))
        prefixes[::ciphertext_at] = bytes([self.format_id]) * count
        ends = list(accumulate(length + overhead for length in lengths))
        sealed = bytearray(ends[-1])
        view = memoryview(sealed)
        sealed_pointer = _aegis_ffi.from_buffer(sealed)
        plaintext_pointer = _aegis_ffi.from_buffer(plaintext)
        prefix_pointer = _aegis_ffi.from_buffer(prefixes)
        aad_pointer = _aegis_ffi.from_buffer(aad)
        aad_length = len(aad)
        key_pointer = self._key_pointer
        encrypt = _aegis_lib.aegis256_encrypt
        at = 0
        prefix_at = 0
        bodies = []
        for end, length in zip(ends, lengths, strict=True):
            start = end - length - overhead
            view[start : start + ciphertext_at] = prefixes[prefix_at : prefix_at + ciphertext_at]
            failed = encrypt(
                sealed_pointer + (start + ciphertext_at),
                TAG_BYTES,
                plaintext_pointer + at,
                length,
                aad_pointer,
                aad_length,
                prefix_pointer + (prefix_at + 1),
                key_pointer,
            )
            assert not failed, "AEGIS-256 encryption takes any length"
            bodies.append(view[start:end])
            at += length
            prefix_at += ciphertext_at
        return bodies

    def open(self, nonce: memoryview, sealed: memoryview, aad: bytes) -> bytes:
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

    def seal_all(
        self, plaintext: bytes, lengths: list[int], aad: bytes
    ) -> Sequence[bytes | memoryview]:
        nonce_bytes = self.nonce_bytes
        nonces = os.urandom(nonce_bytes * len(lengths))
        encrypt = self._aead.encrypt
        prefix = self._prefix
        view = memoryview(plaintext)
        bodies = []
        at = 0
        nonce_at = 0
        for length in lengths:
            nonce = nonces[nonce_at : nonce_at + nonce_bytes]
            ciphertext = encrypt(nonce, view[at : at + length], aad)
            bodies.append(b"".join((prefix, nonce, ciphertext)))
            at += length
            nonce_at += nonce_bytes
        return bodies

    def open(self, nonce: memoryview, sealed: memoryview, aad: bytes) -> bytes:
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
    headed = batch.headed
    bodies = batch.bodies
    commands = {command.index for command in batch.commands}
    sealing = [index for index in range(batch.count) if index not in commands]
    if not sealing:
        return batch
    body_lengths = [len(bodies[index]) for index in sealing]
    # Records without headers (most) share their head per body length, as in record_entries.
    plain_heads = {length: envelope_head(None, length) for length in set(body_lengths)}
    heads = [
        envelope_head(headers, length) if (headers := headed.get(index)) else plain_heads[length]
        for index, length in zip(sealing, body_lengths, strict=True)
    ]
    # Every record's plaintext (its headers and body fields) back to back in one buffer, built
    # by one join: the ciphers read it in place.
    plaintext = b"".join(
        [part for index, head in zip(sealing, heads, strict=True) for part in (head, bodies[index])]
    )
    lengths = [len(head) + length for head, length in zip(heads, body_lengths, strict=True)]
    sealed = list(bodies)
    for index, body in zip(sealing, cipher.seal_all(plaintext, lengths, aad), strict=True):
        sealed[index] = body
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
