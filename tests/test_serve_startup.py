"""`s2s serve` that cannot start says why in one line and exits non-zero, with no traceback:
a port in use, an address that is not an IP or not this machine's, a data directory that is a
file or that another server uses, and a bad value in any S2S_* variable (a usage error, 2).
A bad variable breaks only the command that reads it: `s2s --help` and the client commands
still work.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from server.cli import build_parser, serve_settings
from tests.server_process import (
    REPO,
    SOURCE_TREE_S2S,
    ServerProcess,
    environment_without_s2s,
)

EXIT_FAILED = 1
EXIT_USAGE = 2


def s2s(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SOURCE_TREE_S2S, *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**environment_without_s2s(), **(env or {})},
        timeout=60,
    )


def one_line_error(result: subprocess.CompletedProcess[str], exit_code: int) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert result.returncode == exit_code, result.stderr
    return lines[0]


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port another socket listens on, at 127.0.0.1."""
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        yield blocker.getsockname()[1]


@pytest.mark.parametrize("flag", ["--grpc-port", "--http-port"])
def test_port_in_use(flag: str, taken_port: int, tmp_path: Path) -> None:
    other = "--http-port" if flag == "--grpc-port" else "--grpc-port"
    result = s2s("serve", "--data-dir", str(tmp_path), flag, str(taken_port), other, "0")
    line = one_line_error(result, EXIT_FAILED)
    assert line == (
        f"error: 127.0.0.1:{taken_port} is already in use: stop the process listening there, "
        f"or give another port with {flag} (0 picks a free one)"
    )


@pytest.mark.parametrize(
    ("host", "exit_code", "says"),
    [
        ("localhost", EXIT_USAGE, "'localhost' is not an IP address"),
        ("[127.0.0.1]", EXIT_USAGE, "brackets are for IPv6 addresses only"),
        ("203.0.113.77", EXIT_FAILED, "203.0.113.77 is not an address of this machine"),
    ],
)
def test_bad_host(host: str, exit_code: int, says: str, tmp_path: Path) -> None:
    result = s2s("serve", "--data-dir", str(tmp_path), "--host", host, "--grpc-port", "0")
    assert says in one_line_error(result, exit_code)


def test_data_dir_that_is_a_file(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("not a directory")
    result = s2s("serve", "--data-dir", str(path), "--grpc-port", "0", "--http-port", "0")
    assert one_line_error(result, EXIT_FAILED) == (
        f"error: --data-dir {str(path)!r} is not a directory: give a directory "
        "(it is created if missing)"
    )


def test_data_dir_in_use_by_another_server(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = ServerProcess(str(data_dir), env=environment_without_s2s()).start()
    try:
        result = s2s("serve", "--data-dir", str(data_dir), "--grpc-port", "0", "--http-port", "0")
        assert one_line_error(result, EXIT_FAILED) == (
            f"error: --data-dir {str(data_dir)!r} is in use by another s2s server "
            f"(pid {first.pid}): stop it, or give this one another --data-dir"
        )
        assert httpx.get(f"{first.http_url}/health").status_code == 200, "the first serves on"
    finally:
        first.kill()
    # The lock goes with the process that held it, even one killed with SIGKILL: a restart
    # takes the directory.
    ServerProcess(str(data_dir), env=environment_without_s2s()).start().stop()


BAD_ENVIRONMENT = [
    ("S2S_HOST", "not-an-ip"),
    ("S2S_GRPC_PORT", "abc"),
    ("S2S_GRPC_PORT", "70000"),
    ("S2S_HTTP_PORT", "-1"),
    ("S2S_MAX_STORAGE_GIB", "0"),
    ("S2S_MAX_STORAGE_GIB", "1.5"),
    ("S2S_LAKE_LINGER_MS", "-5"),
    ("S2S_LAKE_BATCH_ROWS", "0"),
    ("S2S_LAKE_THREADS", "0"),
    ("S2S_LAKE_THREADS", "1e9"),
    ("S2S_LAKE_MEMORY_LIMIT_MIB", "63"),
    ("S2S_LAKE_MAINTENANCE_INTERVAL_S", "nan"),
    ("S2S_LAKE_MAINTENANCE_INTERVAL_S", "-1"),
    ("S2S_PRODUCER_EXPIRY_HOURS", "0"),
    ("S2S_PRODUCER_EXPIRY_HOURS", "1.5"),
    ("S2S_SERVER", "no-port-here"),
    ("S2S_SERVER", "host:\u00b2"),
]


@pytest.mark.parametrize(("name", "value"), BAD_ENVIRONMENT)
def test_bad_environment_variable_is_one_usage_line(name: str, value: str, tmp_path: Path) -> None:
    command = ["tail", "some-basin", "events"] if name == "S2S_SERVER" else ["serve"]
    # Free ports and a temporary directory, should the server wrongly start.
    settings = {"S2S_GRPC_PORT": "0", "S2S_HTTP_PORT": "0", "S2S_DATA_DIR": str(tmp_path)}
    result = s2s(*command, env={**settings, name: value})
    line = one_line_error(result, EXIT_USAGE)
    assert line.startswith(f"s2s {command[0]}: error: environment variable {name} "), line
    assert repr(value) in line


def test_bad_environment_variables_leave_help_and_client_commands() -> None:
    environment = {name: "!bad!" for name, _ in BAD_ENVIRONMENT}
    for command in (["--help"], ["serve", "--help"], ["read", "--help"]):
        result = s2s(*command, env=environment)
        assert result.returncode == 0 and not result.stderr, result.stderr
    # A client command reads S2S_SERVER only, not the server's settings.
    del environment["S2S_SERVER"]
    unreachable = s2s("tail", "b", "s", "--server", "127.0.0.1:1", env=environment)
    assert "is the server running at 127.0.0.1:1?" in one_line_error(unreachable, EXIT_FAILED)


def test_producer_expiry_reaches_the_jobs(tmp_path: Path) -> None:
    parse = build_parser().parse_args
    default = serve_settings(parse(["serve", "--data-dir", str(tmp_path)]))
    assert default.jobs.producer_expiry_s == 7 * 24 * 3600
    hours = ["serve", "--data-dir", str(tmp_path), "--producer-expiry-hours", "2"]
    assert serve_settings(parse(hours)).jobs.producer_expiry_s == 7200


def test_lake_catalog_needs_a_data_path(tmp_path: Path) -> None:
    result = s2s("serve", "--data-dir", str(tmp_path), "--lake-catalog", "postgres:dbname=x")
    assert "--lake-catalog needs --lake-data-path" in one_line_error(result, EXIT_USAGE)


CONSOLE_SCRIPT = (
    sys.executable,
    "-c",
    "import sys; from server.console import main; sys.exit(main())",
)
"""What the installed `s2s` script runs (`python -m server.cli` skips the console module)."""


def _wait_until_loading_extensions(pid: int) -> None:
    """Until the process maps a compiled module from site-packages: the interpreter has
    started and our code is importing its dependencies (an interrupt before that is the
    interpreter's own start-up, which no program can catch)."""
    deadline = time.monotonic() + 30
    maps = Path(f"/proc/{pid}/maps")
    while time.monotonic() < deadline:
        if any("site-packages" in line and ".so" in line for line in maps.read_text().splitlines()):
            return
        time.sleep(0.005)
    raise TimeoutError("the server never started loading its modules")


@pytest.mark.parametrize("delay_s", [0.0, 0.15, 0.6, 1.5])
def test_ctrl_c_while_starting_exits_quietly(delay_s: float, tmp_path: Path) -> None:
    """Interrupted while loading modules, opening the store or the lake: 130; once serving,
    SIGINT is a graceful stop: 0. Never a traceback. (`delay_s` counts from the moment the
    process began loading compiled modules.)"""
    ports = ["--grpc-port", "0", "--http-port", "0"]
    process = subprocess.Popen(
        [*CONSOLE_SCRIPT, "serve", "--data-dir", str(tmp_path), *ports],
        cwd=REPO,
        env=environment_without_s2s(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_until_loading_extensions(process.pid)
    time.sleep(delay_s)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert "Traceback" not in stderr, stderr
    assert process.returncode in (0, 130), stderr
    if process.returncode == 0:
        assert stderr.splitlines()[-1].endswith("INFO s2s: stopped"), stderr
