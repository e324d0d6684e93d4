"""The CLI kept open: `s2s append` as a live feed, `s2s read --follow` through a server
restart, and `s2s tail` (-n, -f)."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from tests.cli.runner import ok, s2s
from tests.server_process import REPO, ServerProcess, environment_without_s2s

LIVE_DEADLINE_S = 1.5
"""A line written to a live feed must be readable within this, its pipe still open."""


def _popen(server: ServerProcess, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "server.console", *args, "--server", server.target],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
        env=environment_without_s2s(),
    )


def _tail_seq_num(server: ServerProcess, uri: str) -> int:
    return int(json.loads(ok(s2s(server, "check-tail", uri, "--json")))["seq_num"])


def _wait_for_tail(server: ServerProcess, uri: str, seq_num: int, deadline_s: float) -> float:
    """Seconds until the stream's tail reached `seq_num`; fails past `deadline_s`."""
    started = time.monotonic()
    while _tail_seq_num(server, uri) < seq_num:
        assert time.monotonic() - started < deadline_s, f"{uri} did not reach {seq_num}"
        time.sleep(0.05)
    return time.monotonic() - started


class OutputLines:
    """A child's output line by line, each wait bounded (no test hangs); reads the pipe
    itself, since a buffered reader would hide buffered lines from `select`."""

    def __init__(self, stream: IO[bytes] | None) -> None:
        assert stream is not None
        self._fd = stream.fileno()
        self._buffer = b""

    def next(self, timeout_s: float) -> bytes:
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buffer:
            ready, _, _ = select.select([self._fd], [], [], max(0, deadline - time.monotonic()))
            assert ready, f"no line within {timeout_s} s (so far {self._buffer!r})"
            data = os.read(self._fd, 65536)
            assert data, f"the output ended (so far {self._buffer!r})"
            self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line + b"\n"


def test_append_sends_lines_as_they_arrive(server: ServerProcess) -> None:
    uri = "s2://live-feed/app-log"
    ok(s2s(server, "basins", "create", "live-feed"))
    ok(s2s(server, "streams", "create", uri))
    feed = _popen(server, "append", uri)
    assert feed.stdin is not None
    try:
        feed.stdin.write(b"first line\n")
        feed.stdin.flush()
        # The pipe stays open: the line must be appended now, not at EOF. (check-tail is a
        # process start each time: ~0.5 s of the budget.)
        _wait_for_tail(server, uri, 1, LIVE_DEADLINE_S + 1.0)
        feed.stdin.write(b"second line\n")
        feed.stdin.flush()
        _wait_for_tail(server, uri, 2, LIVE_DEADLINE_S + 1.0)
        out, err = feed.communicate(timeout=30)  # closes stdin: EOF
    finally:
        feed.kill()
    assert feed.returncode == 0, err
    assert out == b"appended 2 records, seq_num 0..1\n"
    assert ok(s2s(server, "read", uri)) == "first line\nsecond line\n"


def test_tail_prints_the_last_records(server: ServerProcess) -> None:
    uri = "s2://live-tail/s"
    ok(s2s(server, "basins", "create", "live-tail"))
    ok(s2s(server, "streams", "create", uri))
    assert ok(s2s(server, "tail", uri)) == ""  # nothing yet: no output, no error
    ok(s2s(server, "append", uri, stdin="".join(f"r{i}\n" for i in range(15))))
    assert ok(s2s(server, "tail", uri)).split() == [f"r{i}" for i in range(5, 15)]
    assert ok(s2s(server, "tail", uri, "-n", "2")).split() == ["r13", "r14"]
    assert ok(s2s(server, "tail", "live-tail", "s", "--lines", "100")).count("\n") == 15
    last = json.loads(ok(s2s(server, "tail", uri, "-n", "1", "--json")))
    assert (last["seq_num"], last["body"]) == (14, "r14")
    follower = _popen(server, "tail", uri, "-n", "1", "-f")
    lines = OutputLines(follower.stdout)
    try:
        assert lines.next(10) == b"r14\n"
        ok(s2s(server, "append", uri, stdin="r15\n"))
        assert lines.next(10) == b"r15\n"
    finally:
        follower.send_signal(signal.SIGINT)
        follower.communicate(timeout=30)
    assert follower.returncode == 130


def test_read_follow_survives_a_server_restart(tmp_path: Path) -> None:
    """The follower reconnects to the restarted server (same data, same port) and prints
    what is appended after, nothing twice and nothing skipped."""
    first = ServerProcess(str(tmp_path / "data")).start()
    uri = "s2://live-restart/events"
    try:
        ok(s2s(first, "basins", "create", "live-restart"))
        ok(s2s(first, "streams", "create", uri))
        ok(s2s(first, "append", uri, stdin="before\n"))
        follower = _popen(first, "read", uri, "--follow")
        lines = OutputLines(follower.stdout)
        assert lines.next(10) == b"before\n"
        assert first.stop() == 0
        second = ServerProcess(str(tmp_path / "data"), grpc_port=first.grpc_port).start()
        try:
            ok(s2s(second, "append", uri, stdin="after\nand more\n"))
            assert lines.next(20) == b"after\n"
            assert lines.next(5) == b"and more\n"
        finally:
            follower.send_signal(signal.SIGINT)
            _, err = follower.communicate(timeout=30)
            second.stop()
    finally:
        if first.process is not None and first.process.poll() is None:
            first.stop()
    assert follower.returncode == 130
    messages = err.decode().splitlines()
    # unavailable, or server_draining if the server's goodbye arrived first
    assert messages[0].startswith("warning: "), messages
    assert messages[0].endswith("reconnecting, then resuming at seq_num 1"), messages
    assert messages[1].startswith("warning: reconnected after "), messages
