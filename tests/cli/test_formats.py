"""Record formats in and out of `s2s append`, `s2s read` and `s2s tail`: text, json,
json-base64 (and S2's aliases), `-i FILE`, `-o FILE`, and the kcat-like `--template`."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from tests.cli.runner import ok, s2s, s2s_bytes, usage_error
from tests.server_process import ServerProcess

BINARY_BODIES = [b"\x00\x01\xff\xfe", b"line\nbreak", b"", "é ✓".encode(), bytes(range(256))]


def _stream(server: ServerProcess, basin: str, *streams: str) -> None:
    ok(s2s(server, "basins", "create", basin))
    for stream in streams:
        ok(s2s(server, "streams", "create", f"s2://{basin}/{stream}"))


def _json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines()]


def test_binary_bodies_survive_json_base64_both_ways(server: ServerProcess) -> None:
    _stream(server, "format-b64", "source", "copy")
    header = [base64.b64encode(b"k\x00").decode(), base64.b64encode(b"\xff").decode()]
    lines = [
        json.dumps({"body": base64.b64encode(body).decode(), "headers": [header]})
        for body in BINARY_BODIES
    ]
    appended = s2s(
        server, "append", "s2://format-b64/source", "--format", "json-base64",
        stdin="\n".join(lines) + "\n",
    )  # fmt: skip
    assert ok(appended).startswith("appended 5 records, seq_num 0..4")
    out = ok(s2s(server, "read", "s2://format-b64/source", "--format", "json-base64"))
    records = _json_lines(out)
    assert [base64.b64decode(str(r["body"])) for r in records] == BINARY_BODIES
    assert [r["headers"] for r in records] == [[["awA=", "/w=="]]] * 5
    # A read's output appends elsewhere as it is (seq_num ignored, timestamps kept), under
    # S2's alias for the format.
    copied = s2s(server, "append", "s2://format-b64/copy", "--format", "json-binsafe", stdin=out)
    ok(copied)
    again = ok(s2s(server, "read", "s2://format-b64/copy", "--format", "base64"))
    assert _json_lines(again) == records


def test_text_lines_are_bodies_byte_for_byte(server: ServerProcess) -> None:
    _stream(server, "format-text", "raw")
    data = b"\xff\xfe not utf-8\n\x00nul\n\ttab\r\n"
    assert s2s_bytes(server, "append", "format-text", "raw", stdin=data).returncode == 0
    assert s2s_bytes(server, "read", "format-text", "raw").stdout == data
    # json shows the same bodies as UTF-8 text, invalid bytes replaced.
    shown = _json_lines(ok(s2s(server, "read", "format-text", "raw", "--format", "json")))
    assert [r["body"] for r in shown] == ["\ufffd\ufffd not utf-8", "\x00nul", "\ttab\r"]
    assert [r["seq_num"] for r in shown] == [0, 1, 2]


def test_json_records_keep_headers_and_timestamps(server: ServerProcess) -> None:
    _stream(server, "format-json", "events")
    lines = [
        {"body": "plain", "headers": [["type", "click"]], "timestamp": 1_700_000_000_000},
        {"body": {"nested": [1, True, None]}, "timestamp": 1_700_000_000_500},
        {"headers": [["only", "header"]]},
    ]
    stdin = "".join(json.dumps(line) + "\n" for line in lines)
    ok(s2s(server, "append", "s2://format-json/events", "--format", "json", stdin=stdin))
    records = _json_lines(ok(s2s(server, "read", "s2://format-json/events", "--json")))
    assert [(r["seq_num"], r["body"], r["headers"]) for r in records] == [
        (0, "plain", [["type", "click"]]),
        (1, '{"nested":[1,true,null]}', []),
        (2, "", [["only", "header"]]),
    ]
    assert [r["timestamp"] for r in records[:2]] == [1_700_000_000_000, 1_700_000_000_500]
    # --ndjson and raw are older and S2's spellings of the same format.
    assert ok(s2s(server, "read", "s2://format-json/events", "--ndjson")) == ok(
        s2s(server, "read", "s2://format-json/events", "--format", "raw")
    )


def test_input_and_output_files(server: ServerProcess, tmp_path: Path) -> None:
    _stream(server, "format-files", "logs")
    source = tmp_path / "in.txt"
    source.write_bytes(b"".join(b"line %d\n" % i for i in range(2500)))
    appended = s2s(server, "append", "s2://format-files/logs", "-i", str(source), "--progress")
    assert "appended 2500 records, seq_num 0..2499" in ok(appended)
    assert re.search(r"append in\.txt .* 23\.9/23\.9 kB", appended.stderr), appended.stderr
    target = tmp_path / "out.txt"
    target.write_bytes(b"kept\n")
    read = s2s(server, "read", "s2://format-files/logs", "-o", str(target), "--progress")
    assert ok(read) == ""
    assert "2500/2500 records" in read.stderr, read.stderr
    # -o adds to the end of the file; the lines are the input's.
    assert target.read_bytes() == b"kept\n" + source.read_bytes()
    missing = usage_error(s2s(server, "append", "format-files", "logs", "-i", str(tmp_path)))
    assert "-i" in missing and "Is a directory" in missing


def test_template_prints_chosen_fields(server: ServerProcess) -> None:
    _stream(server, "format-template", "s")
    stdin = '{"body": "hi", "headers": [["a", "1"], ["b", "2"]], "timestamp": 1700000000000}\n'
    ok(s2s(server, "append", "format-template", "s", "--format", "json", stdin=stdin))
    ok(s2s(server, "fence", "format-template", "s", "owner"))
    template = r"%o|%T|%S|%h|%b/%t|%s|100%%\n"
    out = ok(s2s(server, "read", "s2://format-template/s", "--template", template))
    # The fence, a command record, is left out of text output.
    assert out == "0|1700000000000|2|a=1,b=2|format-template/s|hi|100%\n"
    logged = s2s(server, "read", "format-template", "s", "--log-level", "info")
    assert "info: seq_num 1 is a command record (fence: token 'owner')" in logged.stderr
    both = s2s(server, "read", "format-template", "s", "--json", "--template", "%s")
    assert "--template prints text" in usage_error(both)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["read", "b", "s", "--template", "%q"], "--template: has '%q', which means nothing"),
        (["read", "b", "s", "--template", "\\x"], "--template: has '\\\\x', which means nothing"),
        (["read", "b", "s", "--format", "xml"], "--format: must be one of text, json, json-b"),
        (["append", "b", "s", "--ndjson", "--format", "text"], "--ndjson is --format json"),
        (["read", "s2://b"], "'s2://b' must be s2://BASIN/STREAM"),
        (["read", "b"], "read needs a stream: BASIN STREAM, or s2://BASIN/STREAM"),
        (["read", "s2://b/s", "extra"], "s2://b/s already names the stream"),
        (["read", "b", "s", "--ago", "1 hour"], "--ago: must be a duration such as"),
    ],
)
def test_bad_format_arguments_are_usage_errors(args: list[str], says: str) -> None:
    line = usage_error(s2s(None, *args, "--server", "127.0.0.1:1"))
    assert says in line, line


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ('{"body": "not base64!"}', "stdin line 1 body is not valid base64"),
        ('{"body": 5}', "stdin line 1 body must be a base64 string"),
        ('{"headers": [["YQ==", "%%%"]]}', "stdin line 1 header value is not valid base64"),
    ],
)
def test_bad_base64_lines_are_usage_errors(line: str, says: str) -> None:
    args = ("append", "b", "s", "--format", "json-base64", "--server", "127.0.0.1:1")
    assert says in usage_error(s2s(None, *args, stdin=line + "\n"))
