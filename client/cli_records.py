"""Records in and out of the command line: the lines `s2s append` takes and the lines `s2s read`
and `s2s tail` print, in one of three formats (S2's CLI names them the same way):

- `text`: a line is a record's body, its bytes as they are (not necessarily UTF-8). Headers
  cannot be shown, so command records (fence, trim) are left out of the output and reported on
  the log at info. `--template` prints chosen fields instead, like kcat's `-f`.
- `json`: one object per line, `{"seq_num", "timestamp", "headers": [[name, value]], "body"}`;
  text fields are UTF-8 (invalid bytes printed as U+FFFD). On input `seq_num` is ignored (the
  stream assigns it), so a read's output can be appended elsewhere; a body that is not a
  string is stored as its JSON text.
- `json-base64`: the same objects with body, header names and values in base64, so any bytes
  survive a round trip.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
from collections.abc import Callable, Sequence
from typing import Any

from client.cli_args import UsageError
from s2s.records import COMMAND_FENCE, is_command_record
from s2s.v1 import records_pb2 as pb
from s2s.wire import U64_MAX

TEXT = "text"
JSON = "json"
JSON_BASE64 = "json-base64"
RECORD_FORMATS = (TEXT, JSON, JSON_BASE64)
FORMAT_ALIASES = {"raw": JSON, "ndjson": JSON, "base64": JSON_BASE64, "json-binsafe": JSON_BASE64}
"""S2's CLI also accepts `raw`, `base64` and `json-binsafe`."""

INPUT_FIELDS = ("body", "headers", "timestamp", "seq_num")


def record_format(text: str) -> str:
    """`--format`'s argument type: a format's name or one of its aliases."""
    name = FORMAT_ALIASES.get(text, text)
    if name not in RECORD_FORMATS:
        raise argparse.ArgumentTypeError(
            f"must be one of {', '.join(RECORD_FORMATS)}, got {text!r}"
        )
    return name


# --- input ---------------------------------------------------------------------------------


def parse_line(line: bytes, line_format: str, where: str) -> pb.AppendRecord:
    """The record one input line stands for; a bad line is a `UsageError` naming `where`."""
    if line_format == TEXT:
        return pb.AppendRecord(body=line)
    obj = _json_object(line, where)
    unknown = sorted(set(obj) - set(INPUT_FIELDS))
    if unknown:
        raise UsageError(
            f"{where} has the field {unknown[0]!r}: the fields are {', '.join(INPUT_FIELDS[:3])}"
        )
    binary = line_format == JSON_BASE64
    record = pb.AppendRecord()
    if "body" in obj:
        record.body = _base64(obj["body"], f"{where} body") if binary else _json_body(obj, where)
    for name, value in _header_pairs(obj.get("headers"), where):
        if binary:
            record.headers.add(
                name=_base64(name, f"{where} header name"),
                value=_base64(value, f"{where} header value"),
            )
        else:
            record.headers.add(name=_utf8(name, where), value=_utf8(value, where))
    timestamp = obj.get("timestamp")
    if timestamp is not None:
        if isinstance(timestamp, bool) or not isinstance(timestamp, int):
            raise UsageError(f"{where} timestamp must be milliseconds since the epoch, a number")
        if not 0 <= timestamp <= U64_MAX:
            raise UsageError(f"{where} timestamp must be from 0 to {U64_MAX}")
        record.timestamp = timestamp
    return record


def _json_object(line: bytes, where: str) -> dict[str, Any]:
    try:
        obj = json.loads(line.decode())
    except UnicodeDecodeError as error:
        raise UsageError(f"{where} is not UTF-8 (byte {error.start + 1}): JSON is text") from None
    except json.JSONDecodeError as error:
        raise UsageError(f"{where} is not JSON: {error.msg} at column {error.colno}") from None
    except RecursionError:
        raise UsageError(f"{where} is JSON nested too deeply") from None
    if not isinstance(obj, dict):
        raise UsageError(f'{where} must be a JSON object such as {{"body": "text"}}')
    return obj


def _json_body(obj: dict[str, Any], where: str) -> bytes:
    """A string body is stored as its text; any other JSON value as its compact JSON text,
    which is what reading it back and parsing it expects."""
    value = obj["body"]
    if isinstance(value, str):
        return _utf8(value, f"{where} body")
    try:
        # allow_nan=False: Python reads 1e400 as infinity and NaN as nan, which would be stored
        # as the non-JSON words Infinity and NaN, unreadable to every other JSON parser.
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:
        raise UsageError(
            f"{where} body has a number JSON cannot hold (NaN, Infinity, or too large)"
        ) from None
    return _utf8(text, f"{where} body")


def _header_pairs(headers: Any, where: str) -> list[tuple[str, str]]:
    if headers is None:
        return []
    if not isinstance(headers, list):
        raise UsageError(f'{where} headers must be a list of ["name", "value"] pairs')
    pairs = []
    for header in headers:
        if not (
            isinstance(header, list)
            and len(header) == 2
            and all(isinstance(part, str) for part in header)
        ):
            raise UsageError(
                f'{where} headers must be a list of ["name", "value"] string pairs, got '
                f"{json.dumps(header, ensure_ascii=False)[:80]}"
            )
        pairs.append((header[0], header[1]))
    return pairs


def _utf8(text: str, where: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError as error:
        raise UsageError(
            f"{where} holds {text[error.start : error.end]!r}, a lone surrogate: not valid "
            "Unicode text"
        ) from None


def _base64(value: Any, where: str) -> bytes:
    if not isinstance(value, str):
        raise UsageError(f"{where} must be a base64 string in the json-base64 format")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise UsageError(f"{where} is not valid base64: {value[:40]!r}") from None


# --- output --------------------------------------------------------------------------------

RecordWriter = Callable[[pb.SequencedRecord], bytes | None]
"""A record's output line (newline included), or None for a record the format leaves out."""


def record_writer(
    output_format: str, template: str | None, basin: str, stream: str
) -> RecordWriter:
    """How `s2s read` and `s2s tail` print each record."""
    if template is not None:
        return _template_writer(compile_template(template), basin, stream)
    if output_format == TEXT:
        return _text_line
    binary = output_format == JSON_BASE64
    return lambda record: _json_line(record, binary)


def describe_command(record: pb.SequencedRecord) -> str:
    """What a command record does, for the log (text output leaves commands out)."""
    if record.headers[0].value == COMMAND_FENCE:
        return f"fence: token {record.body.decode('utf-8', errors='replace')!r}"
    return f"trim: records before seq_num {int.from_bytes(record.body, 'big')}"


def _text_line(record: pb.SequencedRecord) -> bytes | None:
    if is_command_record(record):
        return None
    # The body goes out as the bytes appended, so append and read round-trip.
    return record.body + b"\n"


def _json_line(record: pb.SequencedRecord, binary: bool) -> bytes:
    encode: Callable[[bytes], str] = (
        (lambda data: base64.b64encode(data).decode())
        if binary
        else (lambda data: data.decode("utf-8", errors="replace"))
    )
    line = json.dumps(
        {
            "seq_num": record.seq_num,
            "timestamp": record.timestamp,
            "headers": [[encode(h.name), encode(h.value)] for h in record.headers],
            "body": encode(record.body),
        },
        ensure_ascii=False,
    )
    return line.encode() + b"\n"


# --- templates -----------------------------------------------------------------------------

Field = Callable[[pb.SequencedRecord, str, str], bytes]

TEMPLATE_FIELDS: dict[str, tuple[Field, str]] = {
    "s": (lambda r, b, s: r.body, "the body"),
    "S": (lambda r, b, s: str(len(r.body)).encode(), "the body's size in bytes"),
    "o": (lambda r, b, s: str(r.seq_num).encode(), "the sequence number (kcat's offset)"),
    "T": (lambda r, b, s: str(r.timestamp).encode(), "the timestamp, milliseconds since the epoch"),
    "h": (
        lambda r, b, s: b",".join(h.name + b"=" + h.value for h in r.headers),
        "the headers as name=value,name=value",
    ),
    "t": (lambda r, b, s: s.encode(), "the stream's name (kcat's topic)"),
    "b": (lambda r, b, s: b.encode(), "the basin's name"),
    "%": (lambda r, b, s: b"%", "a percent sign"),
}
TEMPLATE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}

TEMPLATE_HELP = (
    "print each record as this template instead, like kcat -f: "
    + ", ".join(f"%{key} {text}" for key, (_, text) in TEMPLATE_FIELDS.items())
    + r"; \n \t \r \\ are escapes, and nothing is added at the end (e.g. '%o %T %s\n'); "
    "command records are left out"
).replace("%", "%%")  # argparse formats help with %

Template = Sequence[bytes | Field]


def compile_template(text: str) -> Template:
    """The template as literal byte strings and fields; an unknown `%x` or `\\x` is refused."""
    parts: list[bytes | Field] = []
    literal: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        following = text[index + 1] if index + 1 < len(text) else ""
        if char == "%" and following in TEMPLATE_FIELDS and following != "%":
            if literal:
                parts.append("".join(literal).encode())
                literal = []
            parts.append(TEMPLATE_FIELDS[following][0])
        elif char == "%" and following == "%":
            literal.append("%")
        elif char == "\\" and following in TEMPLATE_ESCAPES:
            literal.append(TEMPLATE_ESCAPES[following])
        elif char in "%\\":
            shown = char + following if following else char
            raise argparse.ArgumentTypeError(
                f"has {shown!r}, which means nothing: the fields are "
                + " ".join(f"%{key}" for key in TEMPLATE_FIELDS)
                + r" and the escapes \n \t \r \\"
            )
        else:
            literal.append(char)
            index += 1
            continue
        index += 2
    if literal:
        parts.append("".join(literal).encode())
    return parts


def template(text: str) -> str:
    """`--template`'s argument type: checked now, compiled again where it is used."""
    compile_template(text)
    return text


def _template_writer(parts: Template, basin: str, stream: str) -> RecordWriter:
    def write(record: pb.SequencedRecord) -> bytes | None:
        if is_command_record(record):
            return None
        return b"".join(
            part if isinstance(part, bytes) else part(record, basin, stream) for part in parts
        )

    return write
