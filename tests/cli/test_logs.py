"""Logs of the command line, client and server: `--log-level` (one line per request at debug,
one per creation, deletion, reconfiguration and error at info or above) and `--log-format
json` (one object per line)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
from pathlib import Path

from tests.cli.runner import ok, s2s, usage_error
from tests.server_process import (
    REPO,
    SOURCE_TREE_S2S,
    ServerProcess,
    environment_without_s2s,
)

REQUEST_LINE = re.compile(r"^debug: request (\w+): (\w+) in \d+\.\d ms$")


def test_info_lines_for_changes_and_debug_lines_for_requests(server: ServerProcess) -> None:
    quiet = s2s(server, "basins", "create", "logs-basin")
    assert ok(quiet) == "created basin logs-basin\n" and quiet.stderr == ""  # default: warning
    info = ("--log-level", "info")
    created = s2s(server, "streams", "create", "s2://logs-basin/s", *info)
    assert created.stderr == "info: created stream s2://logs-basin/s\n"
    reconfigured = s2s(server, "streams", "reconfigure", "logs-basin", "s", "--storage-class",
                       "standard", *info)  # fmt: skip
    assert reconfigured.stderr == "info: reconfigured stream s2://logs-basin/s: storage_class\n"
    deleted = s2s(server, "streams", "delete", "s2://logs-basin/s", *info)
    assert deleted.stderr == "info: deleting stream s2://logs-basin/s\n"
    failed = s2s(server, "streams", "delete", "s2://logs-basin/missing", *info)
    assert failed.returncode == 1
    assert failed.stderr.startswith("error: stream_not_found: ")
    # A read is not a change: no line at info.
    assert s2s(server, "ls", "logs-basin", *info).stderr == ""
    # At debug, one line per request, with its outcome.
    debug = s2s(server, "basins", "create", "logs-basin-2", "--log-level", "debug")
    lines = debug.stderr.splitlines()
    match = REQUEST_LINE.match(lines[0])
    assert match is not None and match.groups() == ("CreateBasin", "OK"), lines
    assert lines[1:] == ["info: created basin logs-basin-2"]
    refused = s2s(server, "basins", "create", "logs-basin-2", "--log-level", "debug")
    assert refused.stderr.splitlines()[0].startswith("debug: request CreateBasin: ALREADY_EXISTS")
    # S2S_LOG_LEVEL does what the flag does.
    by_variable = s2s(server, "ls", env={"S2S_LOG_LEVEL": "debug"})
    assert REQUEST_LINE.match(by_variable.stderr.splitlines()[0]), by_variable.stderr


def test_json_log_lines(server: ServerProcess) -> None:
    result = s2s(
        server,
        "basins",
        "create",
        "logs-json-basin",
        "--log-format",
        "json",
        "--log-level",
        "debug",
    )
    assert ok(result) == "created basin logs-json-basin\n"
    entries = [json.loads(line) for line in result.stderr.splitlines()]
    request, created = entries
    assert request["level"] == "debug" and request["method"] == "/s2s.v1.AccountService/CreateBasin"
    assert request["status"] == "OK" and request["duration_ms"] >= 0
    assert created["level"] == "info" and created["message"] == "created basin logs-json-basin"
    assert (created["event"], created["basin"]) == ("create", "logs-json-basin")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", created["time"])
    # Failures too, usage errors included: nothing but JSON on stderr.
    failed = s2s(server, "check-tail", "s2://logs-json-basin/none", "--log-format", "json")
    error = json.loads(failed.stderr)
    assert failed.returncode == 1 and error["level"] == "error"
    assert error["code"] == "stream_not_found" and "does not exist" in error["message"]
    bad = s2s(server, "read", "s2://logs-json-basin", "--log-format", "json")
    assert bad.returncode == 2
    assert json.loads(bad.stderr)["message"] == "'s2://logs-json-basin' must be s2://BASIN/STREAM"


def test_bad_log_flags_are_usage_errors() -> None:
    line = usage_error(s2s(None, "ls", "--log-level", "loud"))
    assert "--log-level: must be one of debug, info, warning, error, got 'loud'" in line
    line = usage_error(s2s(None, "ls", env={"S2S_LOG_FORMAT": "xml"}))
    assert "environment variable S2S_LOG_FORMAT must be one of text, json" in line


def test_the_server_logs_json(tmp_path: Path) -> None:
    server = ServerProcess(str(tmp_path / "data"), extra_args=["--log-format", "json"]).start()
    try:
        ok(s2s(server, "basins", "create", "served-json"))
    finally:
        assert server.stop() == 0
    entries = [json.loads(line) for line in server.log]
    messages = [entry["message"] for entry in entries]
    assert any(message.startswith("gRPC listening on 127.0.0.1:") for message in messages)
    assert messages[-1] == "stopped"
    assert {entry["level"] for entry in entries} <= {"info", "warning"}
    # At warning, the server's first line is --no-auth's warning: the info lines before it
    # (storage open) are left out.
    quiet = subprocess.Popen(
        [*SOURCE_TREE_S2S, "serve", "--data-dir", str(tmp_path / "data"), "--no-auth",
         "--grpc-port", "0", "--http-port", "0", "--log-level", "warning"],
        stderr=subprocess.PIPE, text=True, cwd=REPO, env=environment_without_s2s(),
    )  # fmt: skip
    assert quiet.stderr is not None
    first = quiet.stderr.readline()
    quiet.send_signal(signal.SIGTERM)
    rest = quiet.communicate(timeout=30)[1]
    assert " WARNING s2s: --no-auth: " in first and " INFO " not in first + rest, first + rest
