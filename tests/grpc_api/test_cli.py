"""The `s2s` command line against a real server process."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from tests.server_process import REPO, ServerProcess


def s2s(server: ServerProcess, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args, "--server", server.target],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )


def test_append_read_tail_fence_trim(server: ServerProcess) -> None:
    assert s2s(server, "basins", "create", "cli-basin").returncode == 0
    assert "cli-basin\tactive" in s2s(server, "basins", "list").stdout
    assert s2s(server, "streams", "create", "cli-basin", "events").returncode == 0
    appended = s2s(server, "append", "cli-basin", "events", stdin="one\ntwo\nthree\n")
    assert appended.returncode == 0 and "seq_num 0..2" in appended.stdout
    assert s2s(server, "read", "cli-basin", "events").stdout.splitlines() == ["one", "two", "three"]
    tail = json.loads(s2s(server, "tail", "cli-basin", "events").stdout)
    assert tail["seq_num"] == 3
    assert s2s(server, "fence", "cli-basin", "events", "owner").returncode == 0
    refused = s2s(server, "append", "cli-basin", "events", "--fencing-token", "x", stdin="no\n")
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: fencing_token_mismatch")
    ndjson = '{"body": "four", "headers": [["k", "v"]]}\n'
    ok = s2s(
        server,
        "append",
        "cli-basin",
        "events",
        "--ndjson",
        "--fencing-token",
        "owner",
        stdin=ndjson,
    )
    assert ok.returncode == 0, ok.stderr
    last = json.loads(
        s2s(server, "read", "cli-basin", "events", "--ndjson", "--tail-offset", "1").stdout
    )
    assert last == {
        "seq_num": 4,
        "timestamp": last["timestamp"],
        "headers": [["k", "v"]],
        "body": "four",
    }
    assert s2s(server, "trim", "cli-basin", "events", "3").returncode == 0
    remaining = s2s(server, "read", "cli-basin", "events", "--ndjson").stdout.splitlines()
    assert [json.loads(line)["seq_num"] for line in remaining] == [3, 4, 5]
    config = json.loads(s2s(server, "streams", "config", "cli-basin", "events").stdout)
    assert config["retention_policy"] == {"age": 604800}


def test_read_follow_prints_new_records(server: ServerProcess) -> None:
    s2s(server, "basins", "create", "follow-basin")
    s2s(server, "streams", "create", "follow-basin", "live")
    follower = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "server.cli",
            "read",
            "follow-basin",
            "live",
            "--follow",
            "--server",
            server.target,
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        time.sleep(1.0)
        s2s(server, "append", "follow-basin", "live", stdin="arrived\n")
        assert follower.stdout is not None
        assert follower.stdout.readline() == "arrived\n"
    finally:
        follower.kill()
        follower.wait()


def test_errors_are_one_line_and_nonzero(server: ServerProcess) -> None:
    missing = s2s(server, "tail", "no-such-basin", "x")
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines() == [
        "error: basin_not_found: basin 'no-such-basin' does not exist"
    ]
    bad = s2s(server, "basins", "create", "NOPE")
    assert bad.returncode == 1 and bad.stderr.startswith("error: invalid")


def test_bench_reports_throughput_and_latency(server: ServerProcess) -> None:
    s2s(server, "basins", "create", "bench-basin")
    result = s2s(server, "bench", "bench-basin", "--seconds", "1", "--batch-records", "10")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["batches"] > 0 and report["records_per_s"] > 0
    assert report["ack_latency_ms"]["p50"] <= report["ack_latency_ms"]["p99"]
