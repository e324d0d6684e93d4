"""The certificate and key both ports present over TLS: from the operator's files
(`--tls-cert`, `--tls-key`), or self-signed for development (`--tls-self-signed`).

Either way they are checked here, before any port is bound, so that a missing file, a key that
is not the certificate's, an encrypted key or an expired certificate is one `StartupError`
line, not a failed handshake on the first connection. The HTTP frontend (Hypercorn, OpenSSL)
reads the files by path; the gRPC frontend takes the PEM bytes read here.

A self-signed certificate lives in `DATA_DIR/tls/` (`cert.pem`, `key.pem` readable by its owner
only) and is reused on later starts while it is valid for at least `SELF_SIGNED_RENEW_DAYS` more
days and names every address it must: `localhost`, `127.0.0.1`, `::1`, and `--host` when that
is one specific address. Otherwise a new one replaces it, and clients that trusted the old one
must trust the new one.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from server.durable_file import replace_durably
from server.startup import StartupError

log = logging.getLogger("s2s.tls")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

TLS_DIR_NAME = "tls"
CERT_FILE_NAME = "cert.pem"
KEY_FILE_NAME = "key.pem"
SELF_SIGNED_VALID_DAYS = 365
SELF_SIGNED_RENEW_DAYS = 30
"""A self-signed certificate with fewer days left than this is replaced at start, so a server
started on it does not see it expire for a month."""
CLOCK_SKEW = datetime.timedelta(minutes=5)
"""A new certificate is valid from this long ago: a client whose clock is a little behind the
server's must not see it as not yet valid."""
LOCAL_NAMES = ("localhost",)
LOCAL_ADDRESSES = (ipaddress.IPv4Address("127.0.0.1"), ipaddress.IPv6Address("::1"))


@dataclass(frozen=True)
class TlsSettings:
    """What `s2s serve` was told: a certificate and key, self-signed, or neither (plain text).
    The flags' parser allows only one of the first two."""

    cert: str | None = None
    key: str | None = None
    self_signed: bool = False


@dataclass(frozen=True)
class ServerTls:
    """A checked certificate chain and its private key, as files and as PEM bytes."""

    cert_path: Path
    key_path: Path
    cert_pem: bytes
    key_pem: bytes


def server_tls(settings: TlsSettings, data_dir: str, host: IPAddress) -> ServerTls | None:
    """The certificate both ports present, or None for plain text; logs where it is."""
    if settings.self_signed:
        tls = self_signed_tls(Path(data_dir) / TLS_DIR_NAME, host)
        log.info(
            "TLS with a self-signed certificate: clients trust %s (s2s --tls-ca, "
            "SSL_CERT_FILE for the official SDK)",
            tls.cert_path.resolve(),
        )
        return tls
    if settings.cert is None or settings.key is None:
        return None
    tls = load_tls(settings.cert, settings.key)
    log.info("TLS with the certificate %s", tls.cert_path.resolve())
    return tls


def load_tls(cert_file: str, key_file: str) -> ServerTls:
    """The certificate chain and key in these PEM files, checked as the TLS servers will use
    them; StartupError says what is wrong with them and what to do."""
    cert_pem = _read(cert_file, "--tls-cert", "a PEM certificate (chain)")
    key_pem = _read(key_file, "--tls-key", "the certificate's PEM private key")
    try:
        leaf = x509.load_pem_x509_certificates(cert_pem)[0]
    except ValueError:
        raise StartupError(
            f"--tls-cert {cert_file!r} holds no PEM certificate: give the server's certificate "
            "(then any intermediates) in PEM form, '-----BEGIN CERTIFICATE-----'"
        ) from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:  # cryptography's word for a key that needs a password
        raise StartupError(
            f"--tls-key {key_file!r} is encrypted: give it unencrypted (e.g. 'openssl pkey -in "
            "KEY -out PLAIN'), readable only by the server's user"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise StartupError(
            f"--tls-key {key_file!r} holds no PEM private key: give the certificate's key in "
            "PEM form, '-----BEGIN PRIVATE KEY-----'"
        ) from None
    if _public_bytes(key.public_key()) != _public_bytes(leaf.public_key()):
        raise StartupError(
            f"--tls-key {key_file!r} is not the key of --tls-cert {cert_file!r} (the first "
            "certificate in the file): give the matching pair"
        )
    expired_at = leaf.not_valid_after_utc
    if expired_at <= _now():
        raise StartupError(
            f"--tls-cert {cert_file!r} expired on {expired_at:%Y-%m-%d %H:%M} UTC: renew it"
        )
    # The last word is OpenSSL's, which both frontends use: a key type or an encoding it
    # refuses would otherwise fail only at the first handshake.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert_file, key_file, password=b"")
    except (ssl.SSLError, OSError) as error:
        raise StartupError(
            f"--tls-cert {cert_file!r} and --tls-key {key_file!r} are not usable for TLS "
            f"({error}): give a PEM certificate and its unencrypted key"
        ) from None
    return ServerTls(Path(cert_file), Path(key_file), cert_pem, key_pem)


def self_signed_tls(directory: Path, host: IPAddress) -> ServerTls:
    """The self-signed certificate in `directory`, reused if it still fits `host` and stays
    valid long enough, else a new one written there."""
    cert_file, key_file = directory / CERT_FILE_NAME, directory / KEY_FILE_NAME
    addresses = _addresses(host)
    if cert_file.exists() and key_file.exists():
        try:
            tls = load_tls(str(cert_file), str(key_file))
        except StartupError as error:
            log.info("the self-signed certificate is replaced, it does not load: %s", error)
        else:
            if _still_fits(tls.cert_pem, addresses):
                return tls
            log.info(
                "the self-signed certificate is replaced: it ends soon or does not name %s", host
            )
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        cert_pem, key_pem = _generate(addresses)
        # The key first: a start that dies between the two files finds a pair that does not
        # match, and generates a new one.
        replace_durably(key_file, key_pem, mode=0o600)
        replace_durably(cert_file, cert_pem, mode=0o644)
    except OSError as error:
        raise StartupError(
            f"cannot write the self-signed certificate in {str(directory)!r}: {error.strerror}: "
            "make it writable by this user, or give --tls-cert and --tls-key"
        ) from None
    log.info("generated a self-signed certificate for %s", ", ".join(_names(addresses)))
    return ServerTls(cert_file, key_file, cert_pem, key_pem)


def _read(path: str, flag: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise StartupError(
            f"{flag} {path!r} cannot be read: {error.strerror}: give {what} this user can read"
        ) from None


def _public_bytes(key: PublicKeyTypes) -> bytes:
    """A public key's SubjectPublicKeyInfo, to compare a certificate's with a private key's."""
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _addresses(host: IPAddress) -> tuple[IPAddress, ...]:
    """The addresses a self-signed certificate names: the loopbacks, and `host` when it is one
    address (a wildcard is every address of the machine, which no certificate can list)."""
    if host.is_unspecified or host in LOCAL_ADDRESSES:
        return LOCAL_ADDRESSES
    return (*LOCAL_ADDRESSES, host)


def _names(addresses: tuple[IPAddress, ...]) -> list[str]:
    return [*LOCAL_NAMES, *map(str, addresses)]


def _still_fits(cert_pem: bytes, addresses: tuple[IPAddress, ...]) -> bool:
    cert = x509.load_pem_x509_certificate(cert_pem)
    renew_at = cert.not_valid_after_utc - datetime.timedelta(days=SELF_SIGNED_RENEW_DAYS)
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    named = set(names.get_values_for_type(x509.IPAddress))
    return _now() < renew_at and named.issuperset(addresses)


def _generate(addresses: tuple[IPAddress, ...]) -> tuple[bytes, bytes]:
    """A new self-signed certificate and its key (ECDSA P-256), as PEM.

    An end-entity certificate (not a CA): clients trust this one certificate, and verifiers
    such as rustls refuse a CA certificate presented as a server's.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "s2s self-signed")])
    now = _now()
    alternative_names: list[x509.GeneralName] = [x509.DNSName(n) for n in LOCAL_NAMES]
    alternative_names += [x509.IPAddress(address) for address in addresses]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + datetime.timedelta(days=SELF_SIGNED_VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(alternative_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        # Both key identifiers: OpenSSL's strict verification (Python 3.13's default) wants them.
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem
