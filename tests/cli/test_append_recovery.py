"""`s2s append` when the server goes away: fed through a pipe, it rides through a kill -9 and a
restart of the server (same data, same port) and through connections cut while acks are being
lost, every line appended once and in order; it gives up after `--retry-s`; a refusal that is
not worth retrying still ends it at once, saying which lines were appended."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import httpx

from tests.cli.runner import ok, s2s
from tests.lossy_proxy import LossyProxy
from tests.server_process import REPO, ServerProcess, environment_without_s2s

T = TypeVar("T")

LINE_INTERVAL_S = 0.002
"""A line every 2 ms while the server goes away: there are batches in flight when it does."""
EXIT_S_MAX = 10.0
"""How long a refused append may take to end by itself, its input still open."""


def _popen(target: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "server.console", *args, "--server", target],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
        env=environment_without_s2s(),
    )


class LineFeed:
    """Writes `line N` lines to an append's stdin from a thread, one every LINE_INTERVAL_S,
    until `stop`; a write blocks while the append holds back its input (the server is gone)."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdin is not None
        self._stdin = process.stdin
        self.written = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._stdin.write(b"line %d\n" % self.written)
            self._stdin.flush()
            self.written += 1
            time.sleep(LINE_INTERVAL_S)

    def stop(self) -> int:
        """Stops writing; returns how many lines went. (`_finished` then closes stdin.)"""
        self._stopping.set()
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), "the append stopped reading its input"
        return self.written


def _tail(server: ServerProcess, uri: str) -> int:
    return int(json.loads(ok(s2s(server, "check-tail", uri, "--json")))["seq_num"])


def _wait_for_tail(server: ServerProcess, uri: str, seq_num: int, deadline_s: float = 10) -> None:
    started = time.monotonic()
    while _tail(server, uri) < seq_num:
        assert time.monotonic() - started < deadline_s, f"{uri} did not reach {seq_num}"
        time.sleep(0.05)


def _finished(process: subprocess.Popen[bytes]) -> tuple[str, str]:
    """Closes stdin (the append's EOF, if it still reads) and waits for the end."""
    out, err = process.communicate(timeout=60)
    return out.decode(), err.decode()


def _warnings(err: str) -> tuple[list[str], list[str]]:
    """The append's warning lines: sessions lost, and sessions back."""
    lines = err.splitlines()
    lost = [line for line in lines if line.startswith("warning: append session to ")]
    back = [line for line in lost if " back after " in line]
    return [line for line in lost if line not in back], back


def _retries_answered(server: ServerProcess, basin: str) -> int:
    """The server's `s2s_append_retries_total` for `basin`: batches answered as resends."""
    text = httpx.get(f"{server.http_url}/metrics", timeout=10).text
    match = re.search(rf's2s_append_retries_total{{basin="{basin}"}} (\S+)', text)
    return 0 if match is None else int(float(match.group(1)))


def test_append_rides_through_a_kill_and_a_restart(tmp_path: Path) -> None:
    data_dir = str(tmp_path / "data")
    first = ServerProcess(data_dir).start()
    servers = [first]
    uri = "s2://append-restart/log"
    try:
        ok(s2s(first, "basins", "create", "append-restart"))
        ok(s2s(first, "streams", "create", uri))
        feed = _popen(first.target, "append", uri)
        lines = LineFeed(feed)
        _wait_for_tail(first, uri, 100)
        first.kill()  # lines keep coming: some batches are in flight, some acks lost
        killed_at = lines.written
        time.sleep(0.3)
        second = ServerProcess(data_dir, grpc_port=first.grpc_port).start()
        servers.append(second)
        _wait_for_tail(second, uri, killed_at + 100, deadline_s=15)
        written = lines.stop()
        out, err = _finished(feed)
        assert feed.returncode == 0, err
        assert out == f"appended {written} records, seq_num 0..{written - 1}\n"
        bodies = ok(s2s(second, "read", uri)).splitlines()
        assert bodies == [f"line {i}" for i in range(written)]
        lost, back = _warnings(err)
        assert len(lost) == 1 and len(back) == 1, err  # one each, however many attempts
        assert "lost (" in lost[0] and "for up to 60 s" in lost[0], err
        assert err.count("\n") == 2, err  # nothing else on stderr
    finally:
        for server in servers:
            if server.process is not None and server.process.poll() is None:
                server.stop()


class ProxyThread:
    """A `LossyProxy` on an event loop of its own thread, for a test that is not async."""

    def __init__(self, upstream_port: int) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.proxy = LossyProxy(upstream_port)
        self.port = self._run(self.proxy.start())

    def _run(self, work: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(work, self._loop).result(timeout=10)

    def lose_answers(self) -> None:
        self._loop.call_soon_threadsafe(self.proxy.lose_answers)

    def cut(self) -> None:
        self._loop.call_soon_threadsafe(self.proxy.cut)

    def close(self) -> None:
        self._run(self.proxy.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


def test_append_writes_each_line_once_though_acks_are_lost(server: ServerProcess) -> None:
    """Connections cut after the server wrote batches whose acks it then lost: the batches
    sent again are answered from the producer's row, not written twice, and not refused for
    their `--match-seq-num`, which the tail their first sending moved no longer matches."""
    basin, uri = "append-lossy", "s2://append-lossy/log"
    ok(s2s(server, "basins", "create", basin))
    ok(s2s(server, "streams", "create", uri))
    proxy = ProxyThread(server.grpc_port)
    try:
        feed = _popen(f"127.0.0.1:{proxy.port}", "append", uri, "--match-seq-num", "0")
        lines = LineFeed(feed)
        _wait_for_tail(server, uri, 50)
        for _ in range(3):
            proxy.lose_answers()
            time.sleep(0.3)
            proxy.cut()
            time.sleep(0.3)
        written = lines.stop()
        out, err = _finished(feed)
        cuts, answer_bytes_lost = proxy.proxy.cuts, proxy.proxy.answer_bytes_lost
    finally:
        proxy.close()
    assert feed.returncode == 0, err
    assert out == f"appended {written} records, seq_num 0..{written - 1}\n"
    assert ok(s2s(server, "read", uri)).splitlines() == [f"line {i}" for i in range(written)]
    assert cuts == 3 and answer_bytes_lost > 0
    assert _retries_answered(server, basin) > 0, "some batches sent again had been written"
    lost, back = _warnings(err)
    assert 1 <= len(lost) == len(back) <= 3, err


def test_append_gives_up_after_retry_s(tmp_path: Path) -> None:
    server = ServerProcess(str(tmp_path / "data")).start()
    uri = "s2://append-gone/log"
    try:
        ok(s2s(server, "basins", "create", "append-gone"))
        ok(s2s(server, "streams", "create", uri))
        feed = _popen(server.target, "append", uri, "--retry-s", "1")
        assert feed.stdin is not None
        feed.stdin.write(b"before\n")
        feed.stdin.flush()
        _wait_for_tail(server, uri, 1)
    finally:
        server.kill()  # and not started again
    feed.stdin.write(b"after\n")
    feed.stdin.flush()
    started = time.monotonic()
    feed.wait(timeout=EXIT_S_MAX)  # its input still open: it gave up by itself
    assert time.monotonic() - started >= 1.0
    out, err = _finished(feed)
    assert feed.returncode == 1 and out == "", err
    lost, back = _warnings(err)
    assert len(lost) == 1 and back == [], err
    error = err.splitlines()[-1]
    assert error.startswith("error: unavailable: "), err
    assert "given up after 1 s without an ack (--retry-s)" in error
    assert "the first 1 lines were appended as seq_num 0..0; the lines sent after them were " in (
        error
    )
    assert "may have been appended too" in error


def test_a_refusal_not_worth_retrying_ends_the_append_at_once(server: ServerProcess) -> None:
    """A fence set by another writer refuses the next batch: the append ends without retrying
    (its input still open), saying which lines it appended before."""
    uri = "s2://append-fenced/log"
    ok(s2s(server, "basins", "create", "append-fenced"))
    ok(s2s(server, "streams", "create", uri))
    ok(s2s(server, "fence", uri, "mine"))  # seq_num 0: the fence's command record
    feed = _popen(server.target, "append", uri, "--fencing-token", "mine")
    assert feed.stdin is not None
    try:
        feed.stdin.write(b"one\ntwo\nthree\n")
        feed.stdin.flush()
        _wait_for_tail(server, uri, 4)
        ok(s2s(server, "fence", uri, "theirs", "--fencing-token", "mine"))
        feed.stdin.write(b"four\n")
        feed.stdin.flush()
        feed.wait(timeout=EXIT_S_MAX)
        out, err = _finished(feed)
    finally:
        feed.kill()
    assert feed.returncode == 1 and out == "", err
    assert err.splitlines() == [
        "error: fencing_token_mismatch: fencing token does not match the stream's current token "
        "'theirs'; the first 3 lines were appended as seq_num 1..3, no more"
    ]
    assert ok(s2s(server, "read", uri)).splitlines() == ["one", "two", "three"]
