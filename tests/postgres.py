"""Starts a throwaway PostgreSQL server from Debian's binaries for tests (`make postgres`), or a
primary with a synchronous streaming-replication standby, to kill and fail over.

Each server gets its own `initdb` cluster in a fresh temp dir, listens on a free TCP port on
127.0.0.1 with trust auth, and is stopped and deleted on exit. PostgreSQL refuses to run as root,
so when the tests run as root (CI) the server runs as the `postgres` system user that Debian's
package creates, and its dir is chowned to that user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
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
    base = _make_base(as_root)
    data_dir = base / "data"
    started = False
    try:
        _initdb(as_root, bin_dir, base, data_dir, timeout_s)
        port = _start(as_root, bin_dir, base, data_dir, base / "server.log", timeout_s, durable)
        started = True
        server = PostgresServer("127.0.0.1", port, SUPERUSER, dbname, bin_dir)
        _wait_ready(server, timeout_s)
        server.psql(f'CREATE DATABASE "{dbname}"', dbname="postgres")
        yield server
    finally:
        try:
            if started:
                _stop(as_root, bin_dir, base, data_dir, timeout_s)
        finally:
            shutil.rmtree(base, ignore_errors=True)


STANDBY_NAME = "s2s_standby"
"""The standby's `cluster_name`, hence the `application_name` its WAL receiver connects with,
which the primary's `synchronous_standby_names` names."""


class ReplicatedPostgres:
    """A durable primary and a streaming-replication standby on loopback, with synchronous
    commits: a commit returns only once the standby has flushed it too. `kill_primary` and
    `promote_standby` are a failover."""

    def __init__(
        self,
        primary: PostgresServer,
        standby: PostgresServer,
        dirs: tuple[Path, Path, Path],
        as_root: bool,
        timeout_s: float,
    ) -> None:
        self.primary = primary
        self.standby = standby
        self._base, self._primary_dir, self._standby_dir = dirs
        self._as_root = as_root
        self._timeout_s = timeout_s
        self.primary_alive = True
        self.standby_alive = True

    def libpq(self) -> str:
        """A multi-host connection string: whichever of the two accepts writes."""
        return (
            f"dbname={self.primary.dbname} host={self.primary.host},{self.standby.host} "
            f"port={self.primary.port},{self.standby.port} user={self.primary.user} "
            "target_session_attrs=read-write"
        )

    def kill_primary(self) -> None:
        """kill -9 the primary's postmaster and its children (backends, WAL sender, ...) at
        once, as a crash of its machine does; returns once all are gone. The children are
        killed too because each runs in a session of its own and would otherwise live on
        until it noticed the postmaster's death."""
        lines = (self._primary_dir / "postmaster.pid").read_text().splitlines()
        postmaster = int(lines[0])
        children = _children(postmaster)
        for pid in (postmaster, *children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.primary_alive = False
        _wait_until(
            lambda: not any(_running(pid) for pid in (postmaster, *children)),
            self._timeout_s,
            "the primary's processes did not all end after kill -9",
        )
        # Its System V segment (line 7: key, id) outlives a crash; a clean stop removes it.
        shm = lines[6].split() if len(lines) > 6 else []
        if len(shm) == 2:
            subprocess.run(["ipcrm", "-m", shm[1]], capture_output=True, check=False)

    def promote_standby(self) -> None:
        """`pg_ctl promote`; returns once the standby accepts writes."""
        _run_server_tool(
            self._as_root,
            self._base,
            [
                str(self.standby.bin_dir / "pg_ctl"),
                "promote",
                "-D",
                str(self._standby_dir),
                "-w",
                "-t",
                str(int(self._timeout_s)),
            ],
            self._timeout_s + 10,
        )

    def stop_standby(self) -> None:
        """Stop the standby (fast shutdown): the primary's commits then wait for it."""
        _stop(self._as_root, self.standby.bin_dir, self._base, self._standby_dir, self._timeout_s)
        self.standby_alive = False

    def start_standby(self) -> None:
        """Start the stopped standby again on its port; it resumes streaming."""
        _start(
            self._as_root,
            self.standby.bin_dir,
            self._base,
            self._standby_dir,
            self._base / "standby.log",
            self._timeout_s,
            durable=True,
            extra_options=[f"-c cluster_name={STANDBY_NAME}"],
            port=self.standby.port,
        )
        self.standby_alive = True


@contextmanager
def running_replicated_postgres(
    dbname: str = "s2s_test", timeout_s: float = 60.0
) -> Iterator[ReplicatedPostgres]:
    """A primary with an empty database `dbname` and a standby cloned from it with
    `pg_basebackup -R`, both durable (fsync, full_page_writes); the primary's
    `synchronous_standby_names` names the standby, so with `synchronous_commit = on` a commit
    waits for the standby's flush. Removed on exit, whatever was killed or promoted."""
    bin_dir = find_bin_dir()
    as_root = os.geteuid() == 0
    base = _make_base(as_root)
    primary_dir, standby_dir = base / "primary", base / "standby"
    cluster: ReplicatedPostgres | None = None
    primary_started = standby_started = False
    try:
        _initdb(as_root, bin_dir, base, primary_dir, timeout_s)
        port = _start(
            as_root, bin_dir, base, primary_dir, base / "primary.log", timeout_s, durable=True
        )
        primary_started = True
        primary = PostgresServer("127.0.0.1", port, SUPERUSER, dbname, bin_dir)
        _wait_ready(primary, timeout_s)
        primary.psql(f'CREATE DATABASE "{dbname}"', dbname="postgres")
        # initdb's pg_hba.conf lets the superuser replicate over 127.0.0.1 (trust).
        _run_server_tool(
            as_root,
            base,
            [
                str(bin_dir / "pg_basebackup"),
                *("-h", primary.host, "-p", str(primary.port), "-U", SUPERUSER),
                *("-D", str(standby_dir), "-R", "-X", "stream", "-c", "fast"),
            ],
            timeout_s,
        )
        standby_port = _start(
            as_root,
            bin_dir,
            base,
            standby_dir,
            base / "standby.log",
            timeout_s,
            durable=True,
            extra_options=[f"-c cluster_name={STANDBY_NAME}"],
        )
        standby_started = True
        standby = PostgresServer("127.0.0.1", standby_port, SUPERUSER, dbname, bin_dir)
        _wait_ready(standby, timeout_s)
        # Set after the base backup, so the standby does not inherit it: once promoted, it
        # has no standby of its own to wait for.
        primary.psql(f"ALTER SYSTEM SET synchronous_standby_names = '{STANDBY_NAME}'")
        primary.psql("SELECT pg_reload_conf()")
        _wait_until(
            lambda: (
                primary.psql(
                    "SELECT sync_state FROM pg_stat_replication "
                    f"WHERE application_name = '{STANDBY_NAME}'"
                )
                == "sync"
            ),
            timeout_s,
            "the standby did not become synchronous",
        )
        cluster = ReplicatedPostgres(
            primary, standby, (base, primary_dir, standby_dir), as_root, timeout_s
        )
        yield cluster
    finally:
        try:
            alive = (cluster.primary_alive, cluster.standby_alive) if cluster else (True, True)
            for directory, started, still in (
                (standby_dir, standby_started, alive[1]),
                (primary_dir, primary_started, alive[0]),
            ):
                if started and still:
                    _stop(as_root, bin_dir, base, directory, timeout_s)
        finally:
            shutil.rmtree(base, ignore_errors=True)


def _make_base(as_root: bool) -> Path:
    """A fresh temp dir the server's user owns. Not pytest's tmp_path: under root that is a
    0700 dir the postgres user cannot enter."""
    if as_root:
        try:
            owner = pwd.getpwnam(SERVER_USER)
        except KeyError:
            raise RuntimeError(
                f"running as root, but there is no {SERVER_USER!r} user to run the server: "
                f"{_INSTALL_HINT}"
            ) from None
    base = Path(tempfile.mkdtemp(prefix="s2s-pg-"))
    if as_root:
        os.chown(base, owner.pw_uid, owner.pw_gid)
    return base


def _initdb(as_root: bool, bin_dir: Path, base: Path, data_dir: Path, timeout_s: float) -> None:
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


def _stop(as_root: bool, bin_dir: Path, base: Path, data_dir: Path, timeout_s: float) -> None:
    _run_server_tool(
        as_root,
        base,
        [str(bin_dir / "pg_ctl"), "stop", "-D", str(data_dir), "-m", "fast", "-w"],
        timeout_s,
    )


def _children(parent: int) -> list[int]:
    """Pids of the processes whose parent is `parent`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):  # a process that ended meanwhile
            # After the parenthesised command name: state, then the parent's pid.
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == parent:
                found.append(int(stat.parent.name))
    return found


def _running(pid: int) -> bool:
    """Whether `pid` runs (a zombie, which whoever adopted it may be slow to reap, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_until(condition: Callable[[], bool], timeout_s: float, failure: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{failure} within {timeout_s}s")
        time.sleep(0.05)


def _start(
    as_root: bool,
    bin_dir: Path,
    base: Path,
    data_dir: Path,
    log_file: Path,
    timeout_s: float,
    durable: bool,
    extra_options: Sequence[str] = (),
    port: int | None = None,
) -> int:
    """Starts the server on `port`, or a free port (retrying if another process grabs it
    first)."""
    last_error: RuntimeError | None = None
    for _ in range(3 if port is None else 1):
        port_now = _free_port() if port is None else port
        options = " ".join(
            [
                "-c listen_addresses=127.0.0.1",
                f"-c port={port_now}",
                f"-c unix_socket_directories={base}",
                # A throwaway cluster: durability only costs time.
                *([] if durable else ["-c fsync=off", "-c synchronous_commit=off"]),
                *([] if durable else ["-c full_page_writes=off"]),
                *extra_options,
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
            return port_now
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
