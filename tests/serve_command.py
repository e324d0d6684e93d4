"""`s2s serve` run as a given command (the source tree's module, or an installed script) on
free ports, which it learns from the log whatever the `--host` form (`[::1]:port` included)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from tests.server_process import REPO

SOURCE_TREE_S2S = (sys.executable, "-m", "server.cli")
"""`s2s` from this source tree, as the other integration tests run it."""

_GRPC_LISTENING = re.compile(r"gRPC listening on (\S+):(\d+)")
_HTTP_LISTENING = re.compile(r"HTTP listening on (\S+):(\d+)")


def environment_without_s2s() -> dict[str, str]:
    """The environment minus what would point Python at the source tree or change the
    server's settings (S2S_*)."""
    return {
        key: value
        for key, value in os.environ.items()
        if key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV") and not key.startswith("S2S_")
    }


class ServeCommand:
    """`<command> serve --data-dir D --grpc-port 0 --http-port 0 <extra args>`."""

    def __init__(
        self,
        command: Sequence[str | Path],
        data_dir: Path,
        extra_args: Sequence[str] = (),
        cwd: Path = REPO,
    ) -> None:
        self.argv = [str(part) for part in command]
        self.argv += ["serve", "--data-dir", str(data_dir), "--grpc-port", "0", "--http-port", "0"]
        self.argv += extra_args
        self.cwd = cwd
        self.log: list[str] = []
        self.process: subprocess.Popen[str] | None = None
        self.grpc_port = 0
        self.http_port = 0

    def start(self, timeout_s: float = 60.0) -> ServeCommand:
        self.process = subprocess.Popen(
            self.argv,
            cwd=self.cwd,
            env=environment_without_s2s(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stderr is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self.process.stderr.readline()
            if not line:
                raise AssertionError("server exited early:\n" + "".join(self.log))
            self.log.append(line)
            if match := _GRPC_LISTENING.search(line):
                self.grpc_port = int(match.group(2))
            if match := _HTTP_LISTENING.search(line):
                self.http_port = int(match.group(2))
                # Keep draining the log so the server never blocks on a full pipe.
                threading.Thread(target=self._drain, daemon=True).start()
                return self
        raise AssertionError("server did not start:\n" + "".join(self.log))

    def _drain(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        self.log.extend(self.process.stderr)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, then wait for the exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout_s)
