"""bench/soak.py still runs: a 9-second soak against a real server prints its per-interval
lines (memory, descriptors, latency per kind) and the verdict, with no failed operation."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.server_process import REPO

_INTERVAL_LINE = re.compile(
    r"^min +[\d.]+ rss +[\d.]+ anon +[\d.]+ pyblocks +\d+ malloc used +[\d.]+ free +[\d.]+ "
    r"duckdb +[\d.]+ \(transaction +[\d.]+\) MB fds \d+ threads \d+ ops (\d+) errors (\S+) ",
    re.MULTILINE,
)


def test_a_short_soak_reports_every_interval_and_no_errors() -> None:
    result = subprocess.run(
        [sys.executable, "bench/soak.py", "--minutes", "0.15", "--interval-s", "3"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    intervals = _INTERVAL_LINE.findall(result.stdout)
    # Minute 0, then one line per 3 s.
    assert len(intervals) == 4, result.stdout
    assert all(int(ops) > 0 and errors == "0" for ops, errors in intervals[1:]), result.stdout
    for kind in ("grpc-unary", "grpc-session", "s2s-session", "http-json", "ingest-merge"):
        assert f" {kind}=" in result.stdout, kind
    assert "verdict: anonymous memory" in result.stdout
    assert "errors: 0 ({}); server log tracebacks: 0" in result.stdout
