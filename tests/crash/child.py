"""Run a crash-test child process and SIGKILL it at a chosen moment.

The child prints one line per fact it makes durable. A reader thread keeps its pipe drained
(so it never blocks on a full pipe while the test waits) and keeps only whole lines: a line cut
off by the kill was never a promise.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class KilledChild:
    lines: list[str]
    """Every whole line the child printed."""
    stderr: str


def run_and_kill(
    module: str,
    args: list[str],
    stderr_path: Path,
    kill_after_s: float,
    start_on: str | None,
    start_timeout_s: float,
) -> KilledChild:
    """Run `python -m module args`, and SIGKILL it `kill_after_s` after it printed a line
    starting with `start_on` (None: after spawning). Fails if it was not running by then."""
    with open(stderr_path, "wb") as stderr:
        child = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdout=subprocess.PIPE,
            stderr=stderr,
            cwd=REPO_ROOT,
        )
    lines: list[str] = []
    started = threading.Event()

    def drain() -> None:
        assert child.stdout is not None
        for raw in child.stdout:
            if not raw.endswith(b"\n"):
                break
            line = raw.decode().rstrip("\n")
            lines.append(line)
            if start_on is not None and line.startswith(start_on):
                started.set()
        started.set()  # EOF: the child died by itself; reported below

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        if start_on is not None:
            assert started.wait(start_timeout_s), f"{module} printed no {start_on!r} in time"
        threading.Event().wait(kill_after_s)
        alive = child.poll() is None
        if alive:
            os.kill(child.pid, signal.SIGKILL)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
        reader.join()
    stderr_text = stderr_path.read_text(errors="replace")
    assert alive, f"{module} exited by itself ({child.returncode}):\n{stderr_text}"
    assert child.returncode == -signal.SIGKILL
    return KilledChild(lines, stderr_text)
