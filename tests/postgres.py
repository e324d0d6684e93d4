"""Starts a throwaway PostgreSQL server from Debian's binaries for tests (`make postgres`).

Each server gets its own `initdb` cluster in a fresh temp dir, listens on a free TCP port on
127.0.0.1 with trust auth, and is stopped and deleted on exit. PostgreSQL refuses to run as root,
so when the tests run as root (CI) the server runs as the `postgres` system user that Debian's
package creates, and its dir is chowned to that user.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

PG_ROOT = Path("/usr/lib/postgresql")
"""Where Debian installs each major version's binaries: /usr/lib/postgresql/<major>/bin."""

SERVER_USER = "postgres"
"""System user that runs the server when we are root (created by Debian's package)."""

SUPERUSER = "postgres"
"""Database superuser name given to initdb, whatever OS user runs the server."""

_INSTALL_HINT = "run `make postgres` (installs Debian's `postgresql` package)"


@dataclass(frozen=True)
class PostgresServer:
    """A running server reachable over TCP with trust auth."""

    host: str
    port: int
    user: str
    dbname: str
    bin_dir: Path

    def libpq(self) -> str:
        """Key/value libpq connection string for `dbname`."""
        return f"dbname={self.dbname} host={self.host} port={self.port} user={self.user}"

    def ducklake_catalog(self) -> str:
        """Catalog part of `ATTACH 'ducklake:<this>' AS lake (DATA_PATH ...)`."""
        return f"postgres:{self.libpq()}"

    def psql(self, sql: str, dbname: str | None = None) -> str:
        """Runs `sql` with psql; returns unaligned, tuples-only output (`|`-separated)."""
        result = subprocess.run(
            [
                str(self.bin_dir / "psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-U",
                self.user,
                "-d",
                dbname or self.dbname,
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            timeout=30,
            env=_client_env(),
        )
        if result.returncode != 0:
            raise RuntimeError(f"psql failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout.strip()


def find_bin_dir() -> Path:
    """Bin dir of the newest PostgreSQL major version installed under /usr/lib/postgresql."""
    found: list[tuple[int, Path]] = []
    for initdb in PG_ROOT.glob("*/bin/initdb"):
        major = initdb.parent.parent.name
        if re.fullmatch(r"\d+", major) and os.access(initdb, os.X_OK):
            found.append((int(major), initdb.parent))
    if not found:
        raise RuntimeError(f"no PostgreSQL server binaries under {PG_ROOT}/*/bin: {_INSTALL_HINT}")
    return max(found)[1]


@contextmanager
def running_postgres(
    dbname: str = "s2s_test", timeout_s: float = 60.0, durable: bool = False
) -> Iterator[PostgresServer]:
    """A fresh PostgreSQL server with an empty database `dbname`, removed on exit. `durable`:
    with fsync and synchronous commits, as the stream log needs; otherwise without (a
    throwaway catalog, faster)."""
    bin_dir = find_bin_dir()
    as_root = os.geteuid() == 0
    if as_root:
        try:
            owner = pwd.getpwnam(SERVER_USER)
        except KeyError:
            raise RuntimeError(
                f"running as root, but there is no {SERVER_USER!r} user to run the server: "
                f"{_INSTALL_HINT}"
            ) from None
    # Not pytest's tmp_path: under root that is a 0700 dir the postgres user cannot enter.
    base = Path(tempfile.mkdtemp(prefix="s2s-pg-"))
    data_dir = base / "data"
    log_file = base / "server.log"
    started = False
    try:
        if as_root:
            os.chown(base, owner.pw_uid, owner.pw_gid)
        _run_server_tool(
            as_root,
            base,
            [
                str(bin_dir / "initdb"),
                "--pgdata",
                str(data_dir),
                "--username",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
            ],
            timeout_s,
        )
        port = _start(as_root, bin_dir, base, data_dir, log_file, timeout_s, durable)
        started = True
        server = PostgresServer("127.0.0.1", port, SUPERUSER, dbname, bin_dir)
        _wait_ready(server, timeout_s)
        server.psql(f'CREATE DATABASE "{dbname}"', dbname="postgres")
        yield server
    finally:
        try:
            if started:
                _run_server_tool(
                    as_root,
                    base,
                    [str(bin_dir / "pg_ctl"), "stop", "-D", str(data_dir), "-m", "fast", "-w"],
                    timeout_s,
                )
        finally:
            shutil.rmtree(base, ignore_errors=True)


def _start(
    as_root: bool,
    bin_dir: Path,
    base: Path,
    data_dir: Path,
    log_file: Path,
    timeout_s: float,
    durable: bool,
) -> int:
    """Starts the server on a free port (retrying if another process grabs it first)."""
    last_error: RuntimeError | None = None
    for _ in range(3):
        port = _free_port()
        options = " ".join(
            [
                "-c listen_addresses=127.0.0.1",
                f"-c port={port}",
                f"-c unix_socket_directories={base}",
                # A throwaway cluster: durability only costs time.
                *([] if durable else ["-c fsync=off", "-c synchronous_commit=off"]),
                *([] if durable else ["-c full_page_writes=off"]),
            ]
        )
        try:
            _run_server_tool(
                as_root,
                base,
                [
                    str(bin_dir / "pg_ctl"),
                    "start",
                    "-D",
                    str(data_dir),
                    "-l",
                    str(log_file),
                    "-o",
                    options,
                    "-w",
                    "-t",
                    str(int(timeout_s)),
                ],
                timeout_s + 10,
            )
            return port
        except RuntimeError as error:
            log = log_file.read_text(errors="replace") if log_file.exists() else ""
            last_error = RuntimeError(f"{error}\nserver log:\n{log}")
            if "could not bind" not in log and "in use" not in log:
                break
    assert last_error is not None
    raise last_error


def _wait_ready(server: PostgresServer, timeout_s: float) -> None:
    """Polls pg_isready over TCP until the server accepts connections."""
    deadline = time.monotonic() + timeout_s
    command = [
        str(server.bin_dir / "pg_isready"),
        "-q",
        "-h",
        server.host,
        "-p",
        str(server.port),
        "-U",
        server.user,
        "-d",
        "postgres",
    ]
    while True:
        if subprocess.run(command, env=_client_env(), timeout=30).returncode == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"PostgreSQL on port {server.port} not ready after {timeout_s}s")
        time.sleep(0.05)


def _run_server_tool(as_root: bool, cwd: Path, command: Sequence[str], timeout_s: float) -> None:
    """Runs initdb/pg_ctl, as the postgres user when we are root; raises with its output."""
    if as_root:
        if shutil.which("runuser"):
            command = ["runuser", "-u", SERVER_USER, "--", *command]
        else:
            command = ["su", SERVER_USER, "-s", "/bin/sh", "-c", shlex.join(command)]
    # cwd: the postgres user may not be able to enter ours (e.g. /root).
    result = subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=timeout_s, env=_client_env()
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
        )


def _client_env() -> dict[str, str]:
    """Our environment minus PG* variables, so only the explicit arguments pick the server."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
