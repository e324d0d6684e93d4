"""Parsing and validation of `POST /v2/stream` ingest bodies (the Definite Stream API shape).

Pure functions only: the HTTP frontend hands over the raw body, its content headers and the
query parameters, and gets back an `IngestRequest` (accepted rows as JSON text plus per-row
rejections) or an `S2Error` whose code (the Definite Stream API's, registered in
`s2s.errors`) says why the request is refused as a whole.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from s2s import compression
from s2s.errors import S2Error
from s2s.records import RECORD_METERED_BYTES_MAX, RECORD_METERED_OVERHEAD_BYTES
from server.lake.definition import TableNameError, parse_table

MAX_PAYLOAD_BYTES = 10 * 1024 * 1024
"""Largest body accepted, checked both as received and after decompression."""

MAX_ROWS = 50_000
"""Most rows in one request, counting rows that end up rejected."""

MAX_FIELD_BYTES = 1024 * 1024
"""Largest top-level field value of a row: UTF-8 length for strings, compact JSON otherwise."""

MAX_ROW_BYTES = RECORD_METERED_BYTES_MAX - RECORD_METERED_OVERHEAD_BYTES
"""Largest compact JSON encoding of a row, so that every row fits in one stream record."""

MAX_DEPTH = 10
"""Deepest nesting of a row, the row object itself being depth 1."""

APPEND = "append"
MERGE = "merge"

_JSON_TYPES = frozenset({"", "application/json"})
_NDJSON_TYPES = frozenset(
    {
        "application/x-ndjson",
        "application/jsonl",
        "application/json-lines",
        "application/x-jsonlines",
    }
)
_QUERY_BOOLS = {"true": True, "1": True, "false": False, "0": False}
_CODECS: dict[str, compression.Codec] = {"gzip": "gzip", "x-gzip": "gzip", "zstd": "zstd"}
_PREVIEW_CHARS = 80
_CONTAINER_TYPES = frozenset({dict, list})
_MIB = 1024 * 1024


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value - value != 0:  # infinite: `1e400` parses as infinity
        raise ValueError(f"the number {text[:_PREVIEW_CHARS]} is too large for a double")
    return value


# NaN and Infinity are Python extensions, not JSON; refusing them keeps stored rows portable.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
# An NDJSON row is kept as sent, unlike one of a JSON body, which is re-encoded (refusing
# infinity): its numbers are checked as parsed. Before, NDJSON rows holding `1e400` were
# stored, and materialized as infinity (the ingest fuzz target's row invariant).
_LINE_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


@dataclass(frozen=True)
class RejectedRow:
    """A row left out of an otherwise accepted request."""

    index: int
    code: str
    message: str


@dataclass(frozen=True)
class IngestConfig:
    """Where a request's rows go and how (from the JSON body's `config` or the query)."""

    schema: str
    table: str
    mode: str
    primary_key: str | None
    wait: bool
    tags: dict[str, Any]

    @property
    def qualified_table(self) -> str:
        return f"{self.schema}.{self.table}"


@dataclass(frozen=True)
class IngestRequest(IngestConfig):
    """A validated ingest request: its config and the accepted rows."""

    rows: list[bytes]
    row_indexes: list[int]
    rejected: list[RejectedRow]


def parse_ingest_request(
    body: bytes,
    *,
    content_type: str | None,
    content_encoding: str | None,
    query: Mapping[str, str],
) -> IngestRequest:
    """Decode, parse and validate an ingest body; raises `S2Error` if it is unacceptable.

    JSON bodies carry their own config; NDJSON bodies take it from the query parameters.
    """
    if len(body) > MAX_PAYLOAD_BYTES:
        raise payload_too_large(f"request body is {len(body)} bytes, which")
    ndjson = _is_ndjson(content_type)
    text = _decode_utf8(_decompress(body, content_encoding))
    if ndjson:
        return _parse_ndjson(text, _config_from_query(query))
    return _parse_json(text)


def _is_ndjson(content_type: str | None) -> bool:
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type in _NDJSON_TYPES:
        return True
    if media_type in _JSON_TYPES:
        return False
    raise S2Error(
        "unsupported_media_type",
        f"unsupported Content-Type {content_type!r}; use application/json or application/x-ndjson",
    )


def payload_too_large(subject: str) -> S2Error:
    """The body (`subject`: as received, or decompressed) passed `MAX_PAYLOAD_BYTES`."""
    return S2Error(
        "payload_too_large",
        f"{subject} exceeds the limit of {MAX_PAYLOAD_BYTES} bytes "
        f"({MAX_PAYLOAD_BYTES // _MIB} MiB)",
    )


def _invalid_encoding(detail: str) -> S2Error:
    return S2Error("invalid_encoding", f"cannot decompress body: {detail}")


def _decompress(body: bytes, content_encoding: str | None) -> bytes:
    """The body decoded per `Content-Encoding`: whole (`s2s.compression`), concatenated gzip
    members or zstd frames allowed, refused as soon as it passes `MAX_PAYLOAD_BYTES`."""
    coding = (content_encoding or "").strip().lower()
    if coding in ("", "identity"):
        return body
    codec = _CODECS.get(coding)
    if codec is None:
        raise S2Error(
            "unsupported_encoding",
            f"unsupported Content-Encoding {content_encoding!r}; use gzip, zstd or identity",
        )
    try:
        return compression.decompress(body, codec, MAX_PAYLOAD_BYTES, concatenated=True)
    except compression.CorruptData as error:
        raise _invalid_encoding(str(error)) from None
    except compression.TooLarge:
        raise payload_too_large("decompressed body") from None


def _decode_utf8(raw: bytes) -> str:
    try:
        # utf-8-sig drops a leading byte order mark, which some Windows clients send.
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise S2Error(
            "invalid_json", f"body is not valid UTF-8 (bad byte at offset {exc.start})"
        ) from None


def _invalid_request(message: str) -> S2Error:
    return S2Error("invalid_request", message)


def _nesting_too_deep(where: str) -> S2Error:
    return S2Error("nesting_too_deep", f"{where} nests deeper than the limit of {MAX_DEPTH} levels")


def _parse_json(text: str) -> IngestRequest:
    try:
        document = _DECODER.decode(text)
    except RecursionError:
        raise _nesting_too_deep("request body") from None
    except ValueError as exc:
        raise S2Error("invalid_json", f"body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise _invalid_request("body must be a JSON object with 'data' and 'config'")
    if "data" not in document:
        raise _invalid_request("missing field 'data'")
    if "config" not in document:
        raise _invalid_request("missing field 'config'")
    config = _config_from_body(document["config"])
    data = document["data"]
    if isinstance(data, dict):
        data = [data]
    elif not isinstance(data, list):
        raise _invalid_request("'data' must be an object (one row) or an array of rows")
    _check_row_count(len(data))
    validator = _RowValidator(config.primary_key)
    for index, row in enumerate(data):
        validator.add(index, row)
    return validator.finish(config)


def _parse_ndjson(text: str, config: IngestConfig) -> IngestRequest:
    lines = [stripped for line in text.split("\n") if (stripped := line.strip(" \t\r"))]
    _check_row_count(len(lines))
    validator = _RowValidator(config.primary_key)
    for index, line in enumerate(lines):
        try:
            row = _LINE_DECODER.decode(line)
        except RecursionError:
            raise _nesting_too_deep(f"row {index}") from None
        except ValueError as exc:
            validator.reject(index, "invalid_json", f"line is not valid JSON: {exc}")
        else:
            validator.add(index, row, line)
    return validator.finish(config)


def _check_row_count(count: int) -> None:
    if count == 0:
        raise _invalid_request("no rows: the request must carry at least one row")
    if count > MAX_ROWS:
        raise S2Error("too_many_rows", f"request has {count} rows; the limit is {MAX_ROWS} rows")


def _config_from_body(config: Any) -> IngestConfig:
    if not isinstance(config, dict):
        raise _invalid_request("'config' must be an object")
    if "table" not in config:
        raise _invalid_request("missing field 'config.table'")
    wait = config.get("wait", False)
    if not isinstance(wait, bool):
        raise _invalid_request("'config.wait' must be a boolean")
    tags = config.get("tags", {})
    if not isinstance(tags, dict):
        raise _invalid_request("'config.tags' must be an object")
    for key, value in tags.items():
        try:  # the tag becomes the header `tag:<key>` = `tag_text(value)`, in UTF-8
            f"{key}{tag_text(value)}".encode()
        except UnicodeEncodeError:
            raise _invalid_request("'config.tags' has an unpaired UTF-16 surrogate") from None
    return _make_config(
        config["table"],
        config.get("mode", APPEND),
        lambda: _columns_from_body(config.get("primary_key")),
        wait,
        dict(tags),
    )


def tag_text(value: Any) -> str:
    """A tag's header value: a string as it is, anything else as its JSON text (`2`, `true`,
    `{"a":1}`), never a Python repr."""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _columns_from_body(primary_key: Any) -> list[str]:
    if primary_key is None:
        return []
    if isinstance(primary_key, str):
        return [primary_key]
    if isinstance(primary_key, list) and all(isinstance(column, str) for column in primary_key):
        return primary_key
    raise _invalid_request("'config.primary_key' must be a column name or a list of column names")


def _config_from_query(query: Mapping[str, str]) -> IngestConfig:
    if "table" not in query:
        raise _invalid_request("missing query parameter 'table'")
    wait = _QUERY_BOOLS.get(query.get("wait", "false").strip().lower())
    if wait is None:
        raise _invalid_request("query parameter 'wait' must be true, false, 1 or 0")
    primary_key = query.get("primary_key", "")
    return _make_config(
        query["table"],
        query.get("mode", APPEND),
        lambda: [column.strip() for column in primary_key.split(",") if column.strip()],
        wait,
        {},
    )


def _make_config(
    table: Any, mode: Any, primary_key_columns: Callable[[], list[str]], wait: bool, tags: Any
) -> IngestConfig:
    """Shared checks; the primary key is only looked at in merge mode, where it matters."""
    if not isinstance(table, str):
        raise _invalid_request("the table name must be a string")
    schema, name = _split_table(table)
    if mode not in (APPEND, MERGE):
        raise _invalid_request(f"mode must be {APPEND!r} or {MERGE!r}, got {_preview(mode)}")
    primary_key = _single_key(primary_key_columns()) if mode == MERGE else None
    return IngestConfig(schema, name, mode, primary_key, wait, tags)


def _split_table(qualified: str) -> tuple[str, str]:
    try:
        return parse_table(qualified)
    except TableNameError as error:
        raise S2Error(
            "invalid_table", f"invalid table name {_preview(qualified)}: {error}"
        ) from None


def _single_key(columns: list[str]) -> str:
    if len(columns) != 1 or not columns[0]:
        raise S2Error(
            "invalid_primary_key",
            f"merge mode needs exactly one primary key column, got {_preview(columns)}",
        )
    return columns[0]


class _RowValidator:
    """Checks rows one by one, collecting accepted rows and per-row rejections."""

    def __init__(self, primary_key: str | None) -> None:
        self._primary_key = primary_key
        self._rows: list[bytes] = []
        self._row_indexes: list[int] = []
        self._rejected: list[RejectedRow] = []
        self._first_index_by_key: dict[str | int, int] = {}
        # Raised only after every row was seen, so that limit violations take precedence.
        self._duplicate: S2Error | None = None

    def reject(self, index: int, code: str, message: str) -> None:
        self._rejected.append(RejectedRow(index, code, message))

    def add(self, index: int, row: Any, source: str | None = None) -> None:
        """Validates one parsed row; `source` is its JSON text when it came alone on a line."""
        if type(row) is not dict:
            self.reject(index, "not_an_object", f"row is a JSON {_json_type(row)}, not an object")
            return
        _check_depth(index, row)
        encoded = _verbatim(source) or self._encode(index, row)
        if encoded is None:
            return
        if len(encoded) > MAX_ROW_BYTES:
            _raise_oversized(index, row, len(encoded))
        key_column = self._primary_key
        if key_column is not None and not self._check_key(index, row.get(key_column)):
            return
        self._rows.append(encoded)
        self._row_indexes.append(index)

    def _encode(self, index: int, row: dict[str, Any]) -> bytes | None:
        try:
            return _ENCODER.encode(row).encode("utf-8")
        except UnicodeEncodeError:
            self.reject(index, "invalid_json", "row contains an unpaired UTF-16 surrogate escape")
        except ValueError:
            self.reject(index, "invalid_json", "row contains a number too large for a double")
        return None

    def _check_key(self, index: int, key: Any) -> bool:
        column = self._primary_key
        if key is None:
            self.reject(
                index, "missing_primary_key", f"primary key column {column!r} is missing or null"
            )
            return False
        # bool is excluded although it subclasses int; floats are refused outright, so
        # 1 and 1.0 never meet, and 1 and "1" are different keys.
        if type(key) is not str and type(key) is not int:
            self.reject(
                index,
                "invalid_primary_key",
                f"primary key column {column!r} must be a string or an integer, "
                f"got a JSON {_json_type(key)}",
            )
            return False
        first = self._first_index_by_key.setdefault(key, index)
        if first != index and self._duplicate is None:
            self._duplicate = S2Error(
                "duplicate_primary_key",
                f"rows {first} and {index} have the same primary key {column}={_preview(key)}",
            )
        return True

    def finish(self, config: IngestConfig) -> IngestRequest:
        if self._duplicate is not None:
            raise self._duplicate
        return IngestRequest(
            **vars(config),
            rows=self._rows,
            row_indexes=self._row_indexes,
            rejected=self._rejected,
        )


def _verbatim(source: str | None) -> bytes | None:
    """Reuses a row's own JSON text, re-encoding being the costliest step for large requests.

    Text with escapes is re-encoded instead, so that unpaired surrogates get caught, and so is
    text too large as sent, since its compact form may still fit.
    """
    if source is None or "\\u" in source:
        return None
    encoded = source.encode("utf-8")
    return encoded if len(encoded) <= MAX_ROW_BYTES else None


def _check_depth(index: int, row: dict[str, Any]) -> None:
    if _CONTAINER_TYPES.isdisjoint(map(type, row.values())):
        return
    pending = [(value, 2) for value in row.values() if type(value) in _CONTAINER_TYPES]
    while pending:
        value, depth = pending.pop()
        if depth > MAX_DEPTH:
            raise _nesting_too_deep(f"row {index}")
        children: Iterable[Any] = value.values() if type(value) is dict else value
        pending.extend((child, depth + 1) for child in children if type(child) in _CONTAINER_TYPES)


def _raise_oversized(index: int, row: dict[str, Any], size: int) -> NoReturn:
    """Names the offending field when there is one; only called for rows already too large."""
    for name, value in row.items():
        if _field_size(value) > MAX_FIELD_BYTES:
            raise S2Error(
                "field_too_large",
                f"row {index}: field {_preview(name)} exceeds the limit of {MAX_FIELD_BYTES} bytes",
            )
    raise S2Error(
        "row_too_large",
        f"row {index} is {size} bytes as JSON; the limit is {MAX_ROW_BYTES} bytes",
    )


def _field_size(value: Any) -> int:
    if isinstance(value, str):
        return len(value.encode("utf-8"))
    return len(_ENCODER.encode(value).encode("utf-8"))


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _preview(value: Any) -> str:
    """A repr short enough for an error message, whatever the client sent."""
    text = repr(value)
    return text if len(text) <= _PREVIEW_CHARS else text[: _PREVIEW_CHARS - 3] + "..."
