"""The `s2s` command line as a new user runs it: a subprocess of this tree's `s2s`, its
environment free of the caller's S2S_* variables."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from tests.server_process import REPO, ServerProcess, environment_without_s2s


def s2s(
    server: ServerProcess | None,
    *args: str,
    stdin: bytes | str = b"",
    env: Mapping[str, str] | None = None,
    cwd: Path = REPO,
) -> subprocess.CompletedProcess[str]:
    """`s2s ARGS` (with `--server` of `server`, if given), stdin as given; output as text,
    undecodable bytes replaced."""
    result = s2s_bytes(server, *args, stdin=stdin, env=env, cwd=cwd)
    return subprocess.CompletedProcess(
        result.args,
        result.returncode,
        result.stdout.decode(errors="replace"),
        result.stderr.decode(errors="replace"),
    )


def s2s_bytes(
    server: ServerProcess | None,
    *args: str,
    stdin: bytes | str = b"",
    env: Mapping[str, str] | None = None,
    cwd: Path = REPO,
) -> subprocess.CompletedProcess[bytes]:
    target = () if server is None else ("--server", server.target)
    environment = environment_without_s2s()
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "server.console", *args, *target],
        input=stdin.encode() if isinstance(stdin, str) else stdin,
        capture_output=True,
        cwd=cwd,
        env=environment,
        timeout=60,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    """The output of a command that must have succeeded."""
    assert result.returncode == 0, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    return result.stdout


def usage_error(result: subprocess.CompletedProcess[str]) -> str:
    """The one stderr line of a command that must have been refused as a usage error."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]
