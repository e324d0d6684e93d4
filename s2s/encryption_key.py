"""Client-provided encryption keys: the `s2-encryption-key` header and its rules.

A stream created in a basin with a `stream_cipher` keeps that cipher for life; every append
and read of it carries the key, as base64 of 32 bytes, and the server holds it only for that
request. The header is checked in two steps, as S2 does: its length on every append and read
(`EncryptionKey.from_header`), and its decoding only where the stream has a cipher
(`EncryptionKey.material`), so a key sent to a plaintext stream is ignored however it looks.
Both the server and the client (which sends raw bytes as base64) use this module.
"""

from __future__ import annotations

import base64

from s2s.errors import S2Error

ENCRYPTION_KEY_HEADER = "s2-encryption-key"
KEY_BYTES = 32
"""Both ciphers (AEGIS-256, AES-256-GCM) take 256-bit keys."""
KEY_HEADER_CHARS_MAX = 44
"""32 bytes in padded base64."""


class EncryptionKey:
    """One request's key material, kept as sent (trimmed) until a cipher needs the bytes."""

    __slots__ = ("_decoded", "_encoded")

    def __init__(self, encoded: str) -> None:
        self._encoded = encoded
        self._decoded: bytes | None = None

    @classmethod
    def from_header(cls, value: str | None) -> EncryptionKey | None:
        """The header's key, or None without one; `bad_header` if its length is impossible."""
        if value is None:
            return None
        trimmed = value.strip()
        if not 1 <= len(trimmed) <= KEY_HEADER_CHARS_MAX:
            raise S2Error(
                "bad_header",
                f"invalid encryption key: {ENCRYPTION_KEY_HEADER} must be 1 to "
                f"{KEY_HEADER_CHARS_MAX} characters of base64 ({KEY_BYTES} bytes), "
                f"not {len(trimmed)}",
            )
        return cls(trimmed)

    @classmethod
    def from_bytes(cls, key: bytes) -> EncryptionKey:
        """A key the caller holds as raw bytes (a client's)."""
        if len(key) != KEY_BYTES:
            raise ValueError(f"an encryption key is {KEY_BYTES} bytes, not {len(key)}")
        return cls(base64.b64encode(key).decode())

    @property
    def header_value(self) -> str:
        return self._encoded

    def material(self, cipher: str) -> bytes:
        """The 32 key bytes for a stream encrypted with `cipher`; `bad_header` naming the
        cipher if the header is not base64 of exactly 32 bytes."""
        if self._decoded is None:
            try:
                decoded = base64.b64decode(self._encoded, validate=True)
            except ValueError:  # binascii.Error, or characters that are not ASCII
                raise S2Error(
                    "bad_header",
                    f"invalid encryption key for stream cipher '{cipher}': invalid base64",
                ) from None
            if len(decoded) != KEY_BYTES:
                raise S2Error(
                    "bad_header",
                    f"invalid encryption key length for stream cipher '{cipher}': "
                    f"{len(decoded)} bytes, {KEY_BYTES} needed",
                )
            self._decoded = decoded
        return self._decoded

    def __repr__(self) -> str:
        # Never the secret: a key may end up in a log line or a traceback.
        return "EncryptionKey(<redacted>)"


def missing_key(cipher: str) -> S2Error:
    return S2Error(
        "bad_header",
        f"missing encryption key for stream cipher '{cipher}': send the stream's key "
        f"in the {ENCRYPTION_KEY_HEADER} header (base64 of {KEY_BYTES} bytes)",
    )
