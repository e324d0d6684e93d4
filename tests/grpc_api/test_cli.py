"""The `s2s` command line against a real server process."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from tests.server_process import REPO, ServerProcess


def s2s(server: ServerProcess, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server.console", *args, "--server", server.target],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )


def test_append_read_tail_fence_trim(server: ServerProcess) -> None:
    assert s2s(server, "basins", "create", "cli-basin").returncode == 0
    listed = [
        json.loads(line) for line in s2s(server, "basins", "list", "--json").stdout.splitlines()
    ]
    assert {"name": "cli-basin", "state": "active"}.items() <= listed[0].items()
    assert s2s(server, "streams", "create", "cli-basin", "events").returncode == 0
    appended = s2s(server, "append", "cli-basin", "events", stdin="one\ntwo\nthree\n")
    assert appended.returncode == 0 and "seq_num 0..2" in appended.stdout
    assert s2s(server, "read", "cli-basin", "events").stdout.splitlines() == ["one", "two", "three"]
    tail = json.loads(s2s(server, "check-tail", "cli-basin", "events", "--json").stdout)
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
            "server.console",
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
    missing = s2s(server, "check-tail", "no-such-basin", "x")
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines() == [
        "error: basin_not_found: basin 'no-such-basin' does not exist"
    ]
    bad = s2s(server, "basins", "create", "NOPE")
    assert bad.returncode == 1 and bad.stderr.startswith("error: invalid")


def test_bench_reports_throughput_and_latency(server: ServerProcess) -> None:
    s2s(server, "basins", "create", "bench-basin")
    result = s2s(
        server, "bench", "bench-basin", "--seconds", "1", "--batch-records", "10", "--json"
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["batches"] > 0 and report["records_per_s"] > 0
    assert report["ack_latency_ms"]["p50"] <= report["ack_latency_ms"]["p99"]


# --- bad input as a new user would give it: one line on stderr, no traceback ------------------

UNREACHABLE = "127.0.0.1:1"
"""No server: a usage error must come before anything is sent (a call would exit 1)."""


def s2s_raw(target: str, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    """`s2s` with stdin given as bytes (not necessarily UTF-8); output decoded."""
    result = subprocess.run(
        [sys.executable, "-m", "server.console", *args, "--server", target],
        input=stdin,
        capture_output=True,
        cwd=REPO,
        timeout=60,
    )
    return subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
    )


def s2s_bytes(
    server: ServerProcess, *args: str, stdin: bytes
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "server.console", *args, "--server", server.target],
        input=stdin,
        capture_output=True,
        cwd=REPO,
        timeout=60,
    )


def one_line(result: subprocess.CompletedProcess[str], exit_code: int) -> str:
    """The single stderr line of a failed command."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert result.returncode == exit_code, (result.returncode, result.stderr)
    return lines[0]


USAGE_ERRORS = [
    (["read", "b", "s", "--count", "-1"], "-n/--count: must be a whole number from 1"),
    (["read", "b", "s", "--from-seq", "1" + "0" * 20], "argument --from-seq: must be a whole"),
    (["trim", "b", "s", "-5"], "argument seq_num: must be a whole number from 0"),
    (["append", "b", "s", "--match-seq-num", "-3"], "-m/--match-seq-num: must be"),
    (["bench", "b", "--seconds", "0"], "argument --seconds: must be a number greater than 0"),
    (["bench", "b", "--seconds", "nan"], "argument --seconds: must be a number greater than 0"),
    (["bench", "b", "--inflight", "0"], "argument --inflight: must be a whole number from 1"),
    (["bench", "b", "--batch-records", "0"], "argument --batch-records: must be a whole number"),
    (["bench", "b", "--record-bytes", "-1"], "argument --record-bytes: must be a whole number"),
    (["bench", "b", "--record-bytes", "2000"], "2008000 metered bytes, more than an append takes"),
    (["sql", "select 1", "--limit", "-1"], "argument --limit: must be a whole number from 1"),
    (["streams", "create", "b", "s", "--config", "{retention"], "--config: is not valid JSON"),
    (["streams", "create", "b", "s", "--config", '{"retention_policy": 5}'], "must be a JSON ob"),
    (["streams", "create", "b", "s", "--config", "[" * 2_000], "--config: is JSON nested too"),
    (["basins", "create", "basin-x", "--config", '{"nope": 1}'], "unknown basin config field"),
    (["streams", "list", "b", "--config", "{}"], "--config only goes with create, config or re"),
    (["streams", "delete", "b", "s", "--prefix", "x"], "--prefix only goes with list"),
    (["basins", "create"], "basins create needs a basin name"),
    (["materializations", "get", "m", "--table", "a.b"], "--table only goes with create"),
    (["fence", "b", "s", "\udcff"], "token: '\\udcff' is not valid UTF-8 text"),
    (["tail", "b", "s", "--server", ""], "argument --server: must be HOST:PORT"),
]


@pytest.mark.parametrize(
    ("args", "says"), USAGE_ERRORS, ids=[" ".join(a)[:80] for a, _ in USAGE_ERRORS]
)
def test_usage_errors_are_one_line_and_exit_2(args: list[str], says: str) -> None:
    line = one_line(s2s_raw(UNREACHABLE, *args), 2)
    assert line.startswith(f"s2s {args[0]}: error: ") and says in line, line


NDJSON_USAGE_ERRORS = [
    (b'{"body": "ok"}\n\xff\n', "stdin line 2 is not UTF-8 (byte 1)"),
    (b"{body}\n", "stdin line 1 is not JSON"),
    (b"[1]\n", "stdin line 1 must be a JSON object"),
    (b'{"bdy": "x"}\n', "stdin line 1 has the field 'bdy': the fields are body, headers"),
    (b'{"body": "\\ud800"}\n', "a lone surrogate"),
    (b'{"headers": [["a"]]}\n', 'headers must be a list of ["name", "value"] string pairs'),
    (b'{"headers": {"a": "b"}}\n', 'headers must be a list of ["name", "value"] pairs'),
    (b'{"timestamp": -1}\n', "timestamp must be from 0 to"),
    (b'{"timestamp": "now"}\n', "timestamp must be milliseconds since the epoch"),
    (b"[" * 100_000 + b"\n", "nested too deeply"),
    (b'{"body": {"x": 1e400}}\n', "a number JSON cannot hold"),
    (b'{"body": [NaN]}\n', "a number JSON cannot hold"),
]


@pytest.mark.parametrize(("stdin", "says"), NDJSON_USAGE_ERRORS)
def test_bad_ndjson_lines_are_usage_errors(stdin: bytes, says: str) -> None:
    command = ("append", "ndjson-basin", "s", "--ndjson")
    line = one_line(s2s_raw(UNREACHABLE, *command, stdin=stdin), 2)
    assert says in line, line


def test_unreachable_server_is_one_line() -> None:
    line = one_line(s2s_raw(UNREACHABLE, "tail", "b", "s"), 1)
    assert line.startswith("error: unavailable: ")
    assert line.endswith(
        f"(is the server running at {UNREACHABLE}? set --server or S2S_SERVER, and --tls if "
        "it serves TLS)"
    )


def test_append_takes_bytes_and_ndjson_bodies_as_json_text(server: ServerProcess) -> None:
    assert s2s(server, "basins", "create", "input-basin").returncode == 0
    assert s2s(server, "streams", "create", "input-basin", "raw").returncode == 0
    # A plain line is stored as the bytes it was, UTF-8 or not, and read back the same.
    plain = s2s_bytes(server, "append", "input-basin", "raw", stdin=b"\xff\xfe\nok\n")
    assert plain.returncode == 0, plain.stderr
    read = s2s_bytes(server, "read", "input-basin", "raw", stdin=b"")
    assert read.stdout == b"\xff\xfe\nok\n"
    # A body that is not a string is stored as its JSON text, not as a Python repr.
    lines = [
        '{"body": {"a": 1, "b": [true, null]}}',
        '{"body": [1, 2]}',
        '{"body": 3.5}',
        '{"body": "text"}',
        "{}",
    ]
    ndjson = "".join(f"{line}\n" for line in lines)
    assert s2s(server, "append", "input-basin", "raw", "--ndjson", stdin=ndjson).returncode == 0
    bodies = s2s(server, "read", "input-basin", "raw", "--from-seq", "2").stdout.splitlines()
    assert bodies == ['{"a":1,"b":[true,null]}', "[1,2]", "3.5", "text", ""]


def test_a_bad_line_after_full_batches_says_what_was_appended(server: ServerProcess) -> None:
    assert s2s(server, "basins", "create", "partial-basin").returncode == 0
    assert s2s(server, "streams", "create", "partial-basin", "s").returncode == 0
    # The first 1000 lines are a full batch, appended before line 1501 is read.
    stdin = '{"body": "x"}\n' * 1500 + "{broken\n"
    line = one_line(s2s(server, "append", "partial-basin", "s", "--ndjson", stdin=stdin), 2)
    assert line.startswith("s2s append: error: stdin line 1501 is not JSON")
    assert "the first 1000 lines were appended as seq_num 0..999, no more" in line
    tail = s2s(server, "check-tail", "partial-basin", "s", "--json")
    assert json.loads(tail.stdout)["seq_num"] == 1000


def test_config_flag_reconfigures(server: ServerProcess) -> None:
    assert s2s(server, "basins", "create", "config-basin").returncode == 0
    assert s2s(server, "streams", "create", "config-basin", "s").returncode == 0
    changed = s2s(
        server,
        "streams",
        "config",
        "config-basin",
        "s",
        "--config",
        '{"retention_policy": {"age": 5}, "timestamping": {"mode": "arrival"}}',
    )
    assert changed.returncode == 0, changed.stderr
    config = json.loads(s2s(server, "streams", "config", "config-basin", "s").stdout)
    assert config["retention_policy"] == {"age": 5}
    assert config["timestamping"]["mode"] == "arrival"
    # null clears a field back to the basin's default, then the system's.
    cleared = s2s(
        server, "streams", "config", "config-basin", "s", "--config", '{"retention_policy": null}'
    )
    assert json.loads(cleared.stdout)["retention_policy"] == {"age": 604800}
    basin = s2s(
        server,
        "basins",
        "config",
        "config-basin",
        "--config",
        '{"create_stream_on_append": true, "default_stream_config": {"storage_class": "standard"}}',
    )
    assert basin.returncode == 0, basin.stderr
    config = json.loads(s2s(server, "basins", "config", "config-basin").stdout)
    assert config["create_stream_on_append"] is True
    assert config["default_stream_config"]["storage_class"] == "standard"


def test_bench_whose_batches_fail_is_one_line(server: ServerProcess) -> None:
    # bench's records carry no timestamp, which the basin's streams require: every batch fails.
    config = '{"default_stream_config": {"timestamping": {"mode": "client-require"}}}'
    created = s2s(server, "basins", "create", "failing-bench", "--config", config)
    assert created.returncode == 0, created.stderr
    line = one_line(s2s(server, "bench", "failing-bench", "--seconds", "1"), 1)
    assert line.startswith("error: invalid: "), line


def test_ctrl_c_and_a_closed_stdout_end_quietly(server: ServerProcess) -> None:
    assert s2s(server, "basins", "create", "signal-basin").returncode == 0
    assert s2s(server, "streams", "create", "signal-basin", "s").returncode == 0
    many = "".join(f"{i:0100d}\n" for i in range(5000))  # more than a pipe buffer holds
    assert s2s(server, "append", "signal-basin", "s", stdin=many).returncode == 0
    command = [sys.executable, "-m", "server.console", "read", "signal-basin", "s"]
    command += ["--server", server.target]

    follower = subprocess.Popen(
        [*command, "--follow"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO
    )
    assert follower.stdout is not None
    follower.stdout.readline()  # reading: the interrupt lands mid-session
    follower.send_signal(signal.SIGINT)
    _, stderr = follower.communicate(timeout=30)
    assert follower.returncode == 130
    assert stderr == b""

    # `s2s read ... | head -1`: the reader goes away with most of the output unwritten.
    reader = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    assert reader.stdout is not None and reader.stderr is not None
    reader.stdout.readline()
    reader.stdout.close()
    assert reader.wait(30) == 141
    assert reader.stderr.read() == b""
