"""Runs a real `s2s serve` process on free ports for integration tests: this source tree's, or
an installed `s2s` script. The ports are learned from the log, whatever the `--host` form
(`[::1]:port` included). In the suite's PostgreSQL mode (tests/storage_mode.py) a server not
given a storage of its own serves its data directory's database."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.storage_mode import postgres_mode, storage_for

REPO = Path(__file__).resolve().parent.parent
SOURCE_TREE_S2S = (sys.executable, "-m", "server.cli")
"""`s2s` from this source tree."""
_LISTENING = re.compile(r"gRPC listening on \S+:(\d+)")
_HTTP_LISTENING = re.compile(r"HTTP listening on \S+:(\d+)")


def environment_without_s2s() -> dict[str, str]:
    """The environment minus what would point Python at the source tree or change the
    server's settings (S2S_*)."""
    return {
        key: value
        for key, value in os.environ.items()
        if key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV") and not key.startswith("S2S_")
    }


class ServerProcess:
    """`s2s serve` on a data dir and given ports (0: any free one, learned from the log)."""

    def __init__(
        self,
        data_dir: str,
        grpc_port: int = 0,
        http_port: int = 0,
        extra_args: Sequence[str] = (),
        command: Sequence[str | Path] = SOURCE_TREE_S2S,
        cwd: Path = REPO,
        env: Mapping[str, str] | None = None,
        auth: bool = False,
    ) -> None:
        """`auth` false runs the server with `--no-auth`: the tests of everything but access
        control make their calls without tokens."""
        self.data_dir = data_dir
        self.extra_args = list(extra_args)
        self.auth = auth
        self.command = [str(part) for part in command]
        self.cwd = cwd
        self.env = env
        self.process: subprocess.Popen[str] | None = None
        self.grpc_port = grpc_port
        self.http_port = http_port
        self.log: list[str] = []

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def root_token(self) -> str:
        """The root access token's secret, which the server wrote at its first start."""
        return (Path(self.data_dir) / "root.token").read_text().strip()

    def _storage_args(self) -> list[str]:
        """`--storage` of the suite's mode, unless the test chose a storage itself."""
        chosen = any(arg == "--storage" or arg.startswith("--storage=") for arg in self.extra_args)
        if chosen or "S2S_STORAGE" in (self.env or {}) or not postgres_mode():
            return []
        return ["--storage", storage_for(self.data_dir)]

    def start(self, timeout_s: float = 30.0) -> ServerProcess:
        self.process = subprocess.Popen(
            [
                *self.command,
                "serve",
                "--data-dir",
                self.data_dir,
                "--grpc-port",
                str(self.grpc_port),
                "--http-port",
                str(self.http_port),
                *([] if self.auth else ["--no-auth"]),
                *self._storage_args(),
                *self.extra_args,
            ],
            cwd=self.cwd,
            env=self.env,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        assert self.process.stderr is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self.process.stderr.readline()
            if not line:
                raise RuntimeError("server exited early:\n" + "".join(self.log))
            self.log.append(line)
            match = _LISTENING.search(line)
            if match:
                self.grpc_port = int(match.group(1))
            match = _HTTP_LISTENING.search(line)
            if match:
                self.http_port = int(match.group(1))
                # Keep draining the log so the server never blocks on a full pipe.
                threading.Thread(target=self._drain, daemon=True).start()
                return self
        raise TimeoutError("server did not start:\n" + "".join(self.log))

    def _drain(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self, timeout_s: float = 20.0) -> int:
        """SIGTERM, then wait for a clean exit."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout_s)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Stopped, unless a test killed or stopped it already."""
        self.stop()
