"""The client commands as a new user meets them: `ls` and `s2://` URIs, reconfigure, `--ago`,
`--json` on every command of the table, `--version`, shell completion, help on every flag,
`s2s sql` (file, stdin, formats, interactive) and `s2s bench`."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from client.cli import COMMANDS
from server.cli import build_parser
from tests.cli.runner import ok, s2s, usage_error
from tests.server_process import ServerProcess


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def test_ls_and_uris(server: ServerProcess) -> None:
    ok(s2s(server, "basins", "create", "s2://uri-basin"))
    for name in ("a-one", "a-two", "b-one"):
        ok(s2s(server, "streams", "create", f"s2://uri-basin/{name}"))
    ok(s2s(server, "streams", "create", "uri-basin", "nested/name"))
    basins = ok(s2s(server, "ls")).splitlines()
    assert basins[0].split() == ["NAME", "STATE", "CREATED"]
    assert any(line.split()[:2] == ["uri-basin", "active"] for line in basins[1:])
    streams = ok(s2s(server, "ls", "s2://uri-basin")).splitlines()
    assert streams[0].split() == ["STREAM", "STATE", "CREATED"]
    assert [line.split()[0] for line in streams[1:]] == [
        "s2://uri-basin/a-one",
        "s2://uri-basin/a-two",
        "s2://uri-basin/b-one",
        "s2://uri-basin/nested/name",
    ]
    prefixed = _json_lines(ok(s2s(server, "ls", "s2://uri-basin/a-", "--json")))
    assert [item["name"] for item in prefixed] == ["a-one", "a-two"]
    first = _json_lines(ok(s2s(server, "ls", "uri-basin", "--limit", "1", "--json")))
    assert [item["name"] for item in first] == ["a-one"]
    listed = s2s(server, "streams", "list", "uri-basin", "--start-after", "a-one", "--json")
    after = _json_lines(ok(listed))
    assert [item["name"] for item in after] == ["a-two", "b-one", "nested/name"]
    # A stream with a slash in its name, by URI, in both forms of every stream command.
    ok(s2s(server, "append", "s2://uri-basin/nested/name", stdin="x\n"))
    assert ok(s2s(server, "read", "uri-basin", "nested/name")) == "x\n"
    assert "next seq_num 1" in ok(s2s(server, "check-tail", "s2://uri-basin/nested/name"))
    twice = s2s(server, "ls", "s2://uri-basin/a-", "--prefix", "b")
    assert "give the prefix once" in usage_error(twice)


def test_reconfigure_with_flags_and_json(server: ServerProcess) -> None:
    ok(s2s(server, "basins", "create", "reconf-basin", "--retention-policy", "2d"))
    config = json.loads(ok(s2s(server, "basins", "config", "reconf-basin")))
    assert config["default_stream_config"]["retention_policy"] == {"age": 2 * 86400}
    ok(s2s(server, "streams", "create", "s2://reconf-basin/s", "--timestamping-mode", "arrival"))
    changed = s2s(
        server, "streams", "reconfigure", "s2://reconf-basin/s",
        "--retention-policy", "infinite", "--delete-on-empty-min-age", "1h",
        "--timestamping-uncapped", "true",
    )  # fmt: skip
    config = json.loads(ok(changed))
    assert config["retention_policy"] == {"infinite": {}}
    assert config["delete_on_empty"] == {"min_age_secs": 3600}
    assert config["timestamping"] == {"mode": "arrival", "uncapped": True}
    basin = s2s(
        server, "basins", "reconfigure", "reconf-basin",
        "--create-stream-on-append", "true", "--config", '{"create_stream_on_read": true}',
    )  # fmt: skip
    config = json.loads(ok(basin))
    assert (config["create_stream_on_append"], config["create_stream_on_read"]) == (True, True)
    # Unchanged by the basin reconfiguration: its stream defaults.
    assert config["default_stream_config"]["retention_policy"] == {"age": 2 * 86400}
    nothing = s2s(server, "streams", "reconfigure", "reconf-basin", "s")
    assert "streams reconfigure needs a change" in usage_error(nothing)
    both = s2s(
        server, "streams", "reconfigure", "reconf-basin", "s",
        "--storage-class", "standard", "--config", '{"storage_class": "express"}',
    )  # fmt: skip
    assert "storage_class is set by --config and by a flag" in usage_error(both)
    zero = s2s(server, "streams", "reconfigure", "reconf-basin", "s", "--retention-policy", "0s")
    assert "--retention-policy: must be at least 1s, or infinite" in usage_error(zero)
    listed = s2s(server, "streams", "list", "reconf-basin", "--storage-class", "express")
    assert "--storage-class only goes with create, config or reconfigure" in usage_error(listed)


def test_read_ago_starts_by_timestamp(server: ServerProcess) -> None:
    uri = "s2://ago-basin/events"
    ok(s2s(server, "basins", "create", "ago-basin"))
    ok(s2s(server, "streams", "create", uri))
    now_ms = int(time.time() * 1000)
    old = [{"body": f"old-{i}", "timestamp": now_ms - 3 * 3600_000 + i} for i in range(3)]
    recent = [{"body": f"new-{i}", "timestamp": now_ms - 60_000 + i} for i in range(2)]
    stdin = "".join(json.dumps(record) + "\n" for record in old + recent)
    ok(s2s(server, "append", uri, "--format", "json", stdin=stdin))
    assert ok(s2s(server, "read", uri, "--ago", "1h")).split() == ["new-0", "new-1"]
    assert ok(s2s(server, "read", uri, "--ago", "4h", "-n", "2")).split() == ["old-0", "old-1"]
    assert ok(s2s(server, "read", uri, "--ago", "30s")) == ""  # nothing that recent
    assert ok(s2s(server, "read", uri, "--seq-num", "3")).split() == ["new-0", "new-1"]
    assert ok(s2s(server, "read", uri, "--from-seq", "4")).split() == ["new-1"]
    # The other limits: timestamps before --until, metered bytes (body + 8 each), and a
    # follower that stops at its count.
    until = str(now_ms - 3600_000)
    assert ok(s2s(server, "read", uri, "--until", until)).split() == ["old-0", "old-1", "old-2"]
    assert ok(s2s(server, "read", uri, "--bytes", "26")).split() == ["old-0", "old-1"]
    assert ok(s2s(server, "read", uri, "--follow", "-n", "2", "-s", "3")).split() == [
        "new-0",
        "new-1",
    ]
    both = s2s(server, "read", uri, "--ago", "1h", "--seq-num", "1")
    assert "not allowed with argument" in usage_error(both)


# --- --json on every command ---------------------------------------------------------------

JSON_BASIN = "json-basin"
JSON_STREAM = f"s2://{JSON_BASIN}/events"
JSON_EXAMPLES: dict[str, tuple[list[str], str, str]] = {
    # command: (arguments, stdin, a key each JSON line of its output has)
    "ls": (["ls", JSON_BASIN], "", "uri"),
    "basins": (["basins", "create", "json-basin-made"], "", "created_at"),
    "streams": (["streams", "create", f"s2://{JSON_BASIN}/made"], "", "uri"),
    "append": (["append", JSON_STREAM], "one\ntwo\n", "appended"),
    "read": (["read", JSON_STREAM], "", "seq_num"),
    "tail": (["tail", JSON_STREAM, "-n", "1"], "", "body"),
    "check-tail": (["check-tail", JSON_STREAM], "", "seq_num"),
    "fence": (["fence", f"s2://{JSON_BASIN}/fenced", "owner"], "", "fenced"),
    "trim": (["trim", JSON_STREAM, "0"], "", "trim_point"),
    "tokens": (
        ["tokens", "issue", "json-token", "--scope", '{"op_groups": {"account": {"read": true}}}'],
        "",
        "access_token",
    ),
    "materializations": (
        [
            *("materializations", "create", "json-m", "--table", "cli.json_m", "--create-table"),
            *("--basin", JSON_BASIN, "--stream", "events"),
        ],
        "",
        "state",
    ),
    "sql": (["sql", "SELECT 1 AS one UNION ALL SELECT 2"], "", "one"),
    "kv": (["kv", "put", "json-store", "color", "blue", "--basin", JSON_BASIN], "", "revision"),
    "bench": (["bench", JSON_BASIN, "--seconds", "0.3", "--batch-records", "10"], "", "catchup"),
}


def test_every_command_has_a_json_example() -> None:
    assert set(JSON_EXAMPLES) == {command.name for command in COMMANDS}


@pytest.fixture(scope="module")
def json_stream(server: ServerProcess) -> str:
    ok(s2s(server, "basins", "create", JSON_BASIN))
    ok(s2s(server, "streams", "create", JSON_STREAM))
    ok(s2s(server, "streams", "create", f"s2://{JSON_BASIN}/fenced"))
    ok(s2s(server, "append", JSON_STREAM, stdin="zero\n"))
    return JSON_STREAM


@pytest.mark.parametrize("name", list(JSON_EXAMPLES))
def test_json_output(server: ServerProcess, json_stream: str, name: str) -> None:
    args, stdin, key = JSON_EXAMPLES[name]
    lines = _json_lines(ok(s2s(server, *args, "--json", stdin=stdin)))
    assert lines, f"s2s {name} --json printed nothing"
    assert all(key in line for line in lines), lines


# --- help, version, completion -------------------------------------------------------------

UNIT_SUFFIXES = ("-ms", "-s", "-bytes", "-mib", "-gib")
UNIT_WORDS = (
    "millisecond", "second", "byte", "MiB", "record", "row", "batch", "core", "commit",
    "duration", "basin", "port", "sequence number", " ms", "e.g. 1h",
)  # fmt: skip


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(subparsers.choices)


def _options() -> list[tuple[str, argparse.Action]]:
    found = []
    for name, command in _commands().items():
        for action in command._actions:
            if not isinstance(action, argparse._HelpAction):
                found.append((name, action))
    return found


def test_every_flag_has_help_and_numbers_have_units() -> None:
    missing = [
        f"s2s {name} {'/'.join(action.option_strings) or action.dest}"
        for name, action in _options()
        if not action.help
    ]
    assert missing == []
    numbers = [
        (name, action)
        for name, action in _options()
        if action.option_strings
        and action.type is not None
        and getattr(action.type, "__name__", "") in ("parse", "duration_ms", "duration_s")
        and action.dest not in ("server",)
    ]
    assert len(numbers) > 20
    unitless = [
        f"s2s {name} {action.option_strings[-1]}: {action.help}"
        for name, action in numbers
        if not action.option_strings[-1].endswith(UNIT_SUFFIXES)
        and not any(word in str(action.help) for word in UNIT_WORDS)
    ]
    assert unitless == []


def test_every_command_prints_its_help() -> None:
    for name in ["", *_commands()]:
        result = s2s(None, *([name] if name else []), "--help")
        assert ok(result).startswith(f"usage: s2s {name}".rstrip()), name


def test_version() -> None:
    assert ok(s2s(None, "--version")) == f"s2s {importlib.metadata.version('s2s')}\n"


def _complete(line: str, tmp_path: Path) -> list[str]:
    """What the shell would offer for `line` (argcomplete's protocol, as its bash code runs
    it: the line and cursor in variables, the words written to a file)."""
    out = tmp_path / "completions"
    env = {
        "_ARGCOMPLETE": "1",
        "COMP_LINE": line,
        "COMP_POINT": str(len(line)),
        "_ARGCOMPLETE_STDOUT_FILENAME": str(out),
        "_ARGCOMPLETE_IFS": "\n",
    }
    ok(s2s(None, env=env))
    return out.read_text().split("\n")


def test_shell_completion(tmp_path: Path) -> None:
    commands = _complete("s2s ", tmp_path)
    assert {"serve", "ls", "append", "read", "tail", "check-tail", "sql", "completion"} <= set(
        commands
    )
    assert _complete("s2s rea", tmp_path) == ["read "]
    assert {"--follow", "--format"} <= set(_complete("s2s read --fo", tmp_path))
    assert set(_complete("s2s basins re", tmp_path)) == {"reconfigure "}
    script = ok(s2s(None, "completion", "bash"))
    assert "_python_argcomplete" in script and "complete " in script


# --- sql -----------------------------------------------------------------------------------

QUERY = "SELECT n, 'v|' || n AS label FROM range(3) t(n) ORDER BY n"


def test_sql_formats(server: ServerProcess) -> None:
    table = ok(s2s(server, "sql", QUERY)).splitlines()
    assert table[0].split() == ["n", "|", "label"] and table[-1] == "(3 rows)"
    assert ok(s2s(server, "sql", QUERY, "--format", "csv")) == "n,label\n0,v|0\n1,v|1\n2,v|2\n"
    assert _json_lines(ok(s2s(server, "sql", QUERY, "--format", "json"))) == [
        {"n": 0, "label": "v|0"},
        {"n": 1, "label": "v|1"},
        {"n": 2, "label": "v|2"},
    ]
    assert ok(s2s(server, "sql", QUERY, "--format", "markdown")).splitlines() == [
        "| n | label |",
        "| ---: | --- |",
        "| 0 | v\\|0 |",
        "| 1 | v\\|1 |",
        "| 2 | v\\|2 |",
    ]
    cut = s2s(server, "sql", QUERY, "--format", "csv", "--limit", "1")
    assert ok(cut) == "n,label\n0,v|0\n"
    assert cut.stderr.startswith("warning: truncated: more rows matched")


def test_sql_from_a_file_stdin_and_interactively(server: ServerProcess, tmp_path: Path) -> None:
    query_file = tmp_path / "q.sql"
    query_file.write_text("-- a comment\nSELECT 42 AS answer;\n")
    assert _json_lines(ok(s2s(server, "sql", "-f", str(query_file), "--json"))) == [{"answer": 42}]
    piped = s2s(server, "sql", "--format", "csv", stdin="SELECT 7 AS seven")
    assert ok(piped) == "seven\n7\n"
    session = (
        "SELECT 1 AS a;\nSELECT\n  2 AS b;\nDROP TABLE x;\n\\format csv\nSELECT 3 AS c;\n\\q\n"
    )
    interactive = s2s(server, "sql", "-i", stdin=session)
    assert ok(interactive) == "a\n-\n1\n(1 row)\nb\n-\n2\n(1 row)\nc\n3\n"
    # The refused statement is reported, and the session went on.
    assert interactive.stderr.startswith("error: read_only_sql: "), interactive.stderr
    empty = s2s(server, "sql", "-f", os.devnull)
    assert "holds no query" in usage_error(empty)


# --- bench ---------------------------------------------------------------------------------


def test_bench_reports_and_deletes_its_stream(server: ServerProcess) -> None:
    ok(s2s(server, "basins", "create", "bench-report"))
    args = ("bench", "s2://bench-report", "--seconds", "0.5", "--batch-records", "20")
    report = json.loads(ok(s2s(server, *args, "--json")))
    assert report["records"] == report["batches"] * 20 > 0
    assert report["bytes"] == report["records"] * (1024 + 8)
    latency = report["ack_latency_ms"]
    assert (
        0 < latency["min"] <= latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
    )
    assert report["catchup"]["records"] == report["records"]
    assert report["catchup"]["mib_per_s"] > 0 and report["deleted"] is True
    stream = report["stream"].removeprefix("s2://bench-report/")
    assert stream.startswith("s2s-bench-")
    # Deleted: gone from the listing (or still there, marked deleting), and not readable.
    listed = _json_lines(ok(s2s(server, "ls", "bench-report", "--json")))
    assert all(item["state"] == "deleting" for item in listed if item["name"] == stream)
    gone = s2s(server, "check-tail", report["stream"])
    assert gone.returncode == 1 and "stream_" in gone.stderr
    text = ok(s2s(server, *args)).splitlines()
    assert [line.split()[0] for line in text] == ["stream", "write", "ack", "catch-up"]
    assert "p99" in text[2] and text[0].endswith("(deleted)")
    # A stream named to bench must not exist: bench deletes what it wrote.
    ok(s2s(server, "streams", "create", "s2://bench-report/mine"))
    kept = s2s(server, *args, "--stream", "mine")
    assert "--stream mine exists" in usage_error(kept)
    assert ok(s2s(server, "check-tail", "bench-report", "mine"))
