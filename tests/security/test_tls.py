"""TLS on both ports, against real `s2s serve` processes: one with `--tls-self-signed`, one
with a certificate and key given (signed by a CA made here). The official SDK over `https://`,
our gRPC client and the CLI append and read; plain-text clients are refused on both ports;
ALPN picks HTTP/2; bad TLS settings are one line and a non-zero exit. The self-signed
certificate's reuse and replacement are checked on real files through `server.tls`.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from s2_sdk import S2, AppendInput, Endpoints, Record, SeqNum

from client import S2SClient, S2SError
from server.tls import SELF_SIGNED_RENEW_DAYS, load_tls, self_signed_tls
from tests.server_process import REPO, ServerProcess, environment_without_s2s

EXIT_FAILED = 1
EXIT_USAGE = 2
CONSOLE_SCRIPT = (
    sys.executable,
    "-c",
    "import sys; from server.console import main; sys.exit(main())",
)
"""What the installed `s2s` script runs: it keeps gRPC's TLS handshake logs off stderr."""
LOOPBACK = ipaddress.IPv4Address("127.0.0.1")
FREE_PORTS = ("--grpc-port", "0", "--http-port", "0")


# --- certificates made for the tests ---------------------------------------------------------


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _pem(key: ec.EllipticCurvePrivateKey, password: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None = None,
    *,
    ca: bool = False,
    expires_in: datetime.timedelta = datetime.timedelta(days=30),
) -> x509.Certificate:
    issuer_name, issuer_key = issuer or (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(days=60))
        .not_valid_after(_now() + expires_in)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        names = [x509.DNSName("localhost"), x509.IPAddress(LOOPBACK)]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@dataclass(frozen=True)
class IssuedFiles:
    """A CA and a server certificate it signed, with the server's key, as PEM files."""

    ca: Path
    cert: Path
    key: Path


def issue(directory: Path) -> IssuedFiles:
    ca_key, server_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    ca = _certificate("test CA", ca_key, ca=True)
    server = _certificate("s2s test server", server_key, ("test CA", ca_key))
    files = IssuedFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(_pem(server_key))
    return files


# --- the two servers -------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsServer:
    process: ServerProcess
    ca: Path
    """The file a client trusts: the CA, or the self-signed certificate itself."""

    @property
    def https_url(self) -> str:
        return f"https://127.0.0.1:{self.process.http_port}"


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    data_dir = tmp_path_factory.mktemp("self-signed") / "data"
    process = ServerProcess(str(data_dir), extra_args=["--tls-self-signed"]).start()
    try:
        yield TlsServer(process, data_dir / "tls" / "cert.pem")
    finally:
        process.stop()


@pytest.fixture(scope="module")
def given(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    directory = tmp_path_factory.mktemp("given")
    files = issue(directory)
    process = ServerProcess(
        str(directory / "data"),
        extra_args=["--tls-cert", str(files.cert), "--tls-key", str(files.key)],
    ).start()
    try:
        yield TlsServer(process, files.ca)
    finally:
        process.stop()


@pytest.fixture(params=["self_signed", "given"])
def server(request: pytest.FixtureRequest) -> TlsServer:
    tls_server: TlsServer = request.getfixturevalue(request.param)
    return tls_server


# --- clients that trust the certificate ------------------------------------------------------


async def test_official_sdk_over_https(server: TlsServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # The SDK verifies with `ssl.create_default_context()`, which OpenSSL points at
    # SSL_CERT_FILE: the one way to make it trust a private CA.
    monkeypatch.setenv("SSL_CERT_FILE", str(server.ca))
    endpoints = Endpoints(account=server.https_url, basin=server.https_url)
    async with S2("unused-token", endpoints=endpoints) as sdk:
        await sdk.ensure_basin("tls-sdk-basin")
        basin = sdk.basin("tls-sdk-basin")
        await basin.ensure_stream("events")
        stream = basin.stream("events")
        ack = await stream.append(AppendInput(records=[Record(body=b"unary")]))
        # An S2S session: a long-lived HTTP/2 stream over the TLS connection.
        async with stream.append_session() as session:
            ticket = await session.submit(AppendInput(records=[Record(body=b"session")]))
            await ticket
        batch = await stream.read(start=SeqNum(ack.start.seq_num))
    assert [record.body for record in batch.records] == [b"unary", b"session"]


async def test_our_client_over_tls(server: TlsServer) -> None:
    async with S2SClient(
        server.process.target, tls=True, root_certificates=server.ca.read_bytes()
    ) as client:
        await client.create_basin("tls-grpc-basin")
        await client.create_stream("tls-grpc-basin", "events")
        stream = client.stream("tls-grpc-basin", "events")
        ack = await stream.append([b"one", b"two"])
        assert (ack.start.seq_num, ack.end.seq_num) == (0, 2)
        # A read session: a long-lived gRPC stream over the TLS connection.
        batches = [batch async for batch in stream.read_session(seq_num=0, count=2)]
    assert [record.body for batch in batches for record in batch.records] == [b"one", b"two"]


def _cli(
    server: TlsServer, *args: str, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CONSOLE_SCRIPT, *args, "--server", server.process.target],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**environment_without_s2s(), **(env or {})},
        timeout=60,
    )


def test_cli_with_tls_ca(server: TlsServer) -> None:
    trust = ["--tls-ca", str(server.ca)]
    assert _cli(server, "basins", "create", "tls-cli-basin", *trust).returncode == 0
    assert _cli(server, "streams", "create", "tls-cli-basin", "events", *trust).returncode == 0
    appended = _cli(server, "append", "tls-cli-basin", "events", *trust, stdin="a\nb\n")
    assert appended.returncode == 0, appended.stderr
    # The same through the environment.
    read = _cli(server, "read", "tls-cli-basin", "events", env={"S2S_TLS_CA": str(server.ca)})
    assert read.stdout.splitlines() == ["a", "b"], read.stderr


def test_cli_refuses_a_certificate_it_does_not_trust(server: TlsServer) -> None:
    """`--tls` alone trusts the system's authorities, which did not sign this certificate."""
    result = _cli(server, "basins", "list", "--tls")
    assert result.returncode == EXIT_FAILED
    assert "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("error: unavailable: ") and "CERTIFICATE_VERIFY_FAILED" in line


# --- plain text is refused -------------------------------------------------------------------


def _plain_text_http(server: TlsServer) -> bytes:
    """What a plain-text HTTP/1.1 request to the TLS port gets back."""
    with socket.create_connection(("127.0.0.1", server.process.http_port), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        try:
            return sock.recv(1024)
        except ConnectionResetError:
            return b""


async def _plain_text_grpc(server: TlsServer) -> S2SError:
    async with S2SClient(server.process.target, retries=0) as client:
        with pytest.raises(S2SError) as refused:
            await asyncio.wait_for(client.list_basins(), timeout=30)
    return refused.value


async def test_plain_text_is_refused_on_both_ports(server: TlsServer) -> None:
    answer = _plain_text_http(server)
    assert not answer.startswith(b"HTTP/"), answer
    assert (await _plain_text_grpc(server)).code == "unavailable"
    # A refused handshake is the client's failure, not the server's: nothing logged as one.
    await asyncio.sleep(0.5)
    log = "".join(server.process.log)
    assert "Traceback" not in log and " ERROR " not in log, log


# --- the HTTP port's protocols ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("offered", "chosen"), [(["h2", "http/1.1"], "h2"), (["http/1.1"], "http/1.1")]
)
def test_alpn(server: TlsServer, offered: list[str], chosen: str) -> None:
    context = ssl.create_default_context(cafile=str(server.ca))
    context.set_alpn_protocols(offered)
    with (
        socket.create_connection(("127.0.0.1", server.process.http_port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as sock,
    ):
        assert sock.selected_alpn_protocol() == chosen
        if chosen == "http/1.1":
            sock.sendall(b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")
            assert sock.recv(1024).startswith(b"HTTP/1.1 200")


# --- bad settings ----------------------------------------------------------------------------


def _serve(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """`s2s serve` that must not start: its one line on stderr, exit code checked by caller."""
    result = subprocess.run(
        [*CONSOLE_SCRIPT, "serve", "--data-dir", str(data_dir), *FREE_PORTS, *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**environment_without_s2s(), **(env or {})},
        timeout=60,
    )
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return f"{result.returncode} {lines[0]}"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> IssuedFiles:
    return issue(tmp_path_factory.mktemp("bad-settings"))


def test_flags_that_do_not_go_together(files: IssuedFiles, tmp_path: Path) -> None:
    cert, key = ["--tls-cert", str(files.cert)], ["--tls-key", str(files.key)]
    assert "--tls-cert and --tls-key go together" in _serve(tmp_path, *cert)
    assert _serve(tmp_path, *key).startswith(f"{EXIT_USAGE} ")
    both = _serve(tmp_path, "--tls-self-signed", *cert, *key)
    assert both.startswith(f"{EXIT_USAGE} ") and "exclude each other" in both
    env = _serve(tmp_path, env={"S2S_TLS_CERT": str(files.cert)})
    assert env.startswith(f"{EXIT_USAGE} ") and "go together" in env
    switch = _serve(tmp_path, env={"S2S_TLS_SELF_SIGNED": "maybe"})
    assert switch.startswith(f"{EXIT_USAGE} ") and "S2S_TLS_SELF_SIGNED must be 1, true" in switch


def test_files_that_do_not_serve(files: IssuedFiles, tmp_path: Path) -> None:
    other_key = tmp_path / "other.key"
    other_key.write_bytes(_pem(ec.generate_private_key(ec.SECP256R1())))
    encrypted_key = tmp_path / "encrypted.key"
    server_key = serialization.load_pem_private_key(files.key.read_bytes(), None)
    assert isinstance(server_key, ec.EllipticCurvePrivateKey)
    encrypted_key.write_bytes(_pem(server_key, password=b"secret"))
    expired_key = ec.generate_private_key(ec.SECP256R1())
    expired = tmp_path / "expired.pem"
    expired.write_bytes(
        _certificate("expired", expired_key, expires_in=-datetime.timedelta(days=1)).public_bytes(
            serialization.Encoding.PEM
        )
    )
    expired_key_file = tmp_path / "expired.key"
    expired_key_file.write_bytes(_pem(expired_key))
    data_dir = tmp_path / "data"
    cases = [
        (tmp_path / "missing.pem", files.key, "cannot be read: No such file or directory"),
        (files.key, files.key, "holds no PEM certificate"),
        (files.cert, files.cert, "holds no PEM private key"),
        (files.cert, other_key, "is not the key of --tls-cert"),
        (files.cert, encrypted_key, "is encrypted: give it unencrypted"),
        (expired, expired_key_file, "expired on"),
    ]
    for cert, key, says in cases:
        line = _serve(data_dir, "--tls-cert", str(cert), "--tls-key", str(key))
        assert line.startswith(f"{EXIT_FAILED} error: ") and says in line, line


def test_self_signed_directory_not_writable(tmp_path: Path) -> None:
    (tmp_path / "tls").write_text("a file where the directory goes")
    line = _serve(tmp_path, "--tls-self-signed")
    assert line.startswith(f"{EXIT_FAILED} error: cannot write the self-signed certificate")


# --- the self-signed certificate's files -----------------------------------------------------


def test_self_signed_files(self_signed: TlsServer) -> None:
    directory = self_signed.ca.parent
    assert (directory / "key.pem").stat().st_mode & 0o777 == 0o600
    log = "".join(self_signed.process.log)
    assert f"clients trust {self_signed.ca.resolve()}" in log


def test_self_signed_is_reused_while_it_fits(tmp_path: Path) -> None:
    first = self_signed_tls(tmp_path, LOOPBACK)
    assert self_signed_tls(tmp_path, LOOPBACK) == first
    # A wildcard names no address of its own: the loopback certificate still fits.
    assert self_signed_tls(tmp_path, ipaddress.IPv6Address("::")) == first
    # A specific address it does not name: a new certificate that names it, and still the
    # loopback addresses.
    other = ipaddress.IPv4Address("127.0.0.2")
    second = self_signed_tls(tmp_path, other)
    assert second.cert_pem != first.cert_pem
    names = x509.load_pem_x509_certificate(second.cert_pem).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert set(names.value.get_values_for_type(x509.IPAddress)) == {
        LOOPBACK,
        ipaddress.IPv6Address("::1"),
        other,
    }
    assert names.value.get_values_for_type(x509.DNSName) == ["localhost"]


def test_self_signed_is_replaced_near_its_end_or_if_broken(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    ending = _certificate(
        "ending", key, expires_in=datetime.timedelta(days=SELF_SIGNED_RENEW_DAYS - 1)
    )
    (tmp_path / "cert.pem").write_bytes(ending.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(_pem(key))
    renewed = self_signed_tls(tmp_path, LOOPBACK)
    assert renewed.cert_pem != (ending.public_bytes(serialization.Encoding.PEM))
    assert load_tls(str(renewed.cert_path), str(renewed.key_path)) == renewed
    # A key that is not the certificate's (a start that died between the two writes).
    (tmp_path / "key.pem").write_bytes(_pem(ec.generate_private_key(ec.SECP256R1())))
    assert self_signed_tls(tmp_path, LOOPBACK).cert_pem != renewed.cert_pem
