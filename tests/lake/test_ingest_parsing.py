"""Parsing and validation of `POST /v2/stream` ingest bodies (server/lake/ingest.py)."""

from __future__ import annotations

import gzip
import json
import tracemalloc
import zlib
from typing import Any

import pytest
import zstandard

from s2s.errors import S2Error
from server.lake.ingest import (
    MAX_DEPTH,
    MAX_FIELD_BYTES,
    MAX_PAYLOAD_BYTES,
    MAX_ROW_BYTES,
    MAX_ROWS,
    IngestRequest,
    parse_ingest_request,
)

NDJSON = "application/x-ndjson"
TABLE = "bronze.customers"


def parse(
    body: bytes,
    content_type: str | None = "application/json",
    encoding: str | None = None,
    query: dict[str, str] | None = None,
) -> IngestRequest:
    return parse_ingest_request(
        body, content_type=content_type, content_encoding=encoding, query=query or {}
    )


def json_body(data: Any, **config: Any) -> bytes:
    config.setdefault("table", TABLE)
    return json.dumps({"data": data, "config": config}).encode()


def ndjson_body(*rows: Any) -> bytes:
    return "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows).encode()


def parse_ndjson(body: bytes, **query: str) -> IngestRequest:
    query.setdefault("table", TABLE)
    return parse(body, NDJSON, query=query)


def expect_error(status: int, code: str, body: bytes, **kwargs: Any) -> S2Error:
    with pytest.raises(S2Error) as info:
        parse(body, **kwargs)
    assert (info.value.kind.http_status, info.value.code) == (status, code), info.value.message
    return info.value


def expect_ndjson_error(status: int, code: str, body: bytes, **query: str) -> S2Error:
    query.setdefault("table", TABLE)
    return expect_error(status, code, body, content_type=NDJSON, query=query)


def codes(request: IngestRequest) -> list[tuple[int, str]]:
    return [(r.index, r.code) for r in request.rejected]


def padded_json(size: int) -> bytes:
    """A valid JSON request of exactly `size` bytes, padded with insignificant whitespace."""
    body = json_body([{"id": 1}])
    return body + b" " * (size - len(body))


def nested_row(depth: int) -> dict[str, Any]:
    """A row nested `depth` levels deep, alternating objects and arrays."""
    value: Any = 1
    for level in range(depth - 1):
        value = [value] if level % 2 else {"k": value}
    return {"a": value}


def compress(body: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.compress(body, compresslevel=1)
    return zstandard.ZstdCompressor(level=1).compress(body)


# --- shapes and content types ---------------------------------------------------------------


def test_json_array_rows_are_compact_and_in_request_order() -> None:
    request = parse(json_body([{"id": 1, "name": "Zoë"}, {"id": 2, "tags": [1, {"x": None}]}]))
    assert request.rows == ['{"id":1,"name":"Zoë"}'.encode(), b'{"id":2,"tags":[1,{"x":null}]}']
    assert request.row_indexes == [0, 1]
    assert request.rejected == []
    assert (request.schema, request.table, request.qualified_table) == (
        "bronze",
        "customers",
        TABLE,
    )
    assert (request.mode, request.primary_key, request.wait, request.tags) == (
        "append",
        None,
        False,
        {},
    )


def test_json_single_object_is_one_row() -> None:
    request = parse(json_body({"id": 7}))
    assert request.rows == [b'{"id":7}']
    assert request.row_indexes == [0]


def test_json_config_options_are_read() -> None:
    body = json_body(
        [{"id": 1}], mode="merge", primary_key=["id"], wait=True, tags={"src": "crm", "n": 2}
    )
    request = parse(body)
    assert (request.mode, request.primary_key, request.wait, request.tags) == (
        "merge",
        "id",
        True,
        {"src": "crm", "n": 2},
    )


def test_primary_key_may_be_a_plain_string() -> None:
    assert parse(json_body([{"id": 1}], mode="merge", primary_key="id")).primary_key == "id"


def test_append_mode_ignores_primary_key() -> None:
    request = parse(json_body([{"id": 1}], primary_key=["a", "b"]))
    assert (request.mode, request.primary_key) == ("append", None)


@pytest.mark.parametrize("content_type", [None, "", "application/json; charset=utf-8"])
def test_missing_or_parameterized_content_type_means_json(content_type: str | None) -> None:
    assert parse(json_body([{"id": 1}]), content_type).rows == [b'{"id":1}']


def test_json_takes_config_from_body_only() -> None:
    body = json.dumps({"data": [{"id": 1}], "config": {}}).encode()
    error = expect_error(400, "invalid_request", body, query={"table": TABLE})
    assert "config.table" in error.message


def test_byte_order_mark_is_tolerated() -> None:
    assert parse(b"\xef\xbb\xbf" + json_body([{"id": 1}])).rows == [b'{"id":1}']


@pytest.mark.parametrize(
    "content_type",
    [
        NDJSON,
        "application/jsonl",
        "application/json-lines",
        "application/x-jsonlines",
        "Application/X-NDJSON; charset=utf-8",
    ],
)
def test_ndjson_content_types(content_type: str) -> None:
    request = parse(b'{"id":1}\n{"id":2}\n', content_type, query={"table": TABLE})
    assert request.rows == [b'{"id":1}', b'{"id":2}']
    assert request.qualified_table == TABLE


def test_ndjson_skips_blank_lines_and_indexes_non_blank_lines() -> None:
    request = parse_ndjson(b'\n{"id":1}\r\n  \n\t\n{"id":2}\n[3]\n\n')
    assert request.rows == [b'{"id":1}', b'{"id":2}']
    assert request.row_indexes == [0, 1]
    assert codes(request) == [(2, "not_an_object")]


def test_ndjson_splits_on_newline_only() -> None:
    request = parse_ndjson('{"s":"a\u2028b\x85c"}\n{"id":2}'.encode())
    assert request.rows == ['{"s":"a\u2028b\x85c"}'.encode(), b'{"id":2}']


def test_ndjson_config_from_query() -> None:
    request = parse_ndjson(b'{"id":1}', table="LAKE.silver.t", mode="merge", primary_key=" id ")
    assert (request.schema, request.table, request.mode, request.primary_key) == (
        "silver",
        "t",
        "merge",
        "id",
    )
    assert (request.wait, request.tags) == (False, {})


@pytest.mark.parametrize(
    ("raw", "expected"), [("TRUE", True), ("1", True), ("False", False), ("0", False)]
)
def test_ndjson_wait_query_parameter(raw: str, expected: bool) -> None:
    assert parse_ndjson(b'{"id":1}', wait=raw).wait is expected


def test_ndjson_bad_wait_is_rejected() -> None:
    expect_ndjson_error(400, "invalid_request", b'{"id":1}', wait="yes")


def test_ndjson_missing_table_is_rejected() -> None:
    error = expect_error(400, "invalid_request", b'{"id":1}', content_type=NDJSON)
    assert "table" in error.message


def test_unknown_content_type_is_rejected() -> None:
    expect_error(415, "unsupported_media_type", json_body([{"id": 1}]), content_type="text/csv")


# --- content encodings ----------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["gzip", "zstd"])
def test_compressed_bodies(encoding: str) -> None:
    assert parse(compress(json_body([{"id": 1}]), encoding), encoding=encoding).rows == [
        b'{"id":1}'
    ]
    ndjson = compress(ndjson_body({"id": 1}, {"id": 2}), encoding)
    assert parse(ndjson, NDJSON, encoding, {"table": TABLE}).row_indexes == [0, 1]


@pytest.mark.parametrize("encoding", ["gzip", "zstd"])
def test_concatenated_members_or_frames_are_decompressed(encoding: str) -> None:
    body = compress(b'{"id":1}\n', encoding) + compress(b'{"id":2}\n', encoding)
    assert parse(body, NDJSON, encoding, {"table": TABLE}).rows == [b'{"id":1}', b'{"id":2}']


def test_identity_encoding_and_header_case() -> None:
    assert parse(json_body({"id": 1}), encoding="identity").rows == [b'{"id":1}']
    assert parse(gzip.compress(json_body({"id": 1})), encoding=" GZIP ").rows == [b'{"id":1}']


def test_unsupported_encoding_is_rejected() -> None:
    expect_error(415, "unsupported_encoding", json_body([{"id": 1}]), encoding="br")


@pytest.mark.parametrize("encoding", ["gzip", "zstd"])
def test_corrupt_compressed_body_is_rejected(encoding: str) -> None:
    expect_error(400, "invalid_encoding", b"definitely not compressed", encoding=encoding)


@pytest.mark.parametrize("encoding", ["gzip", "zstd"])
def test_truncated_compressed_body_is_rejected(encoding: str) -> None:
    whole = compress(ndjson_body(*({"id": i, "pad": "x" * i} for i in range(2000))), encoding)
    expect_error(400, "invalid_encoding", whole[: len(whole) // 2], encoding=encoding)
    expect_error(400, "invalid_encoding", b"", encoding=encoding)


# --- size limits ----------------------------------------------------------------------------


def test_payload_exactly_at_limit_is_accepted() -> None:
    assert parse(padded_json(MAX_PAYLOAD_BYTES)).rows == [b'{"id":1}']


def test_payload_over_limit_is_rejected_naming_the_limit() -> None:
    error = expect_error(413, "payload_too_large", padded_json(MAX_PAYLOAD_BYTES + 1))
    assert str(MAX_PAYLOAD_BYTES) in error.message
    assert "10 MiB" in error.message


@pytest.mark.parametrize("encoding", ["gzip", "zstd"])
def test_decompressed_payload_limit(encoding: str) -> None:
    at_limit = compress(padded_json(MAX_PAYLOAD_BYTES), encoding)
    assert parse(at_limit, encoding=encoding).rows == [b'{"id":1}']
    over = compress(padded_json(MAX_PAYLOAD_BYTES + 1), encoding)
    error = expect_error(413, "payload_too_large", over, encoding=encoding)
    assert "decompressed" in error.message


def gzip_bomb(size: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(1024 * 1024)
    parts = [compressor.compress(zeros) for _ in range(size // len(zeros))]
    return b"".join([*parts, compressor.flush()])


def zstd_bomb(size: int) -> bytes:
    compressor = zstandard.ZstdCompressor(level=1).compressobj()
    zeros = bytes(1024 * 1024)
    parts = [compressor.compress(zeros) for _ in range(size // len(zeros))]
    return b"".join([*parts, compressor.flush()])


@pytest.mark.parametrize("make_bomb", [gzip_bomb, zstd_bomb])
def test_zip_bomb_is_refused_without_inflating_it(make_bomb: Any) -> None:
    bomb = make_bomb(64 * 1024 * 1024)
    assert len(bomb) < 256 * 1024
    encoding = "gzip" if make_bomb is gzip_bomb else "zstd"
    tracemalloc.start()
    try:
        expect_error(413, "payload_too_large", bomb, encoding=encoding)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < MAX_PAYLOAD_BYTES * 1.5


def test_row_count_exactly_at_limit_is_accepted() -> None:
    assert len(parse_ndjson(b"{}\n" * MAX_ROWS).rows) == MAX_ROWS


@pytest.mark.parametrize("ndjson", [False, True])
def test_too_many_rows_is_rejected_naming_limit_and_count(ndjson: bool) -> None:
    if ndjson:
        error = expect_ndjson_error(422, "too_many_rows", b"{}\n" * (MAX_ROWS + 1))
    else:
        error = expect_error(422, "too_many_rows", json_body([{}] * (MAX_ROWS + 1)))
    assert str(MAX_ROWS) in error.message
    assert str(MAX_ROWS + 1) in error.message


def test_depth_is_counted_from_the_row_object() -> None:
    assert nested_row(1) == {"a": 1}
    assert nested_row(3) == {"a": [{"k": 1}]}
    assert parse(json_body([{"a": [1]}, {"a": {"b": {}}}])).row_indexes == [0, 1]


def test_depth_exactly_at_limit_is_accepted() -> None:
    assert len(parse(json_body([nested_row(MAX_DEPTH)])).rows) == 1


@pytest.mark.parametrize("ndjson", [False, True])
def test_depth_over_limit_is_rejected_naming_row_and_limit(ndjson: bool) -> None:
    rows = [{"id": 0}, {"id": 1}, nested_row(MAX_DEPTH + 1)]
    if ndjson:
        error = expect_ndjson_error(422, "nesting_too_deep", ndjson_body(*rows))
    else:
        error = expect_error(422, "nesting_too_deep", json_body(rows))
    assert "row 2" in error.message
    assert str(MAX_DEPTH) in error.message


def test_nesting_beyond_the_parser_is_too_deep_not_a_crash() -> None:
    deep = b"[" * 200_000 + b"]" * 200_000
    expect_ndjson_error(422, "nesting_too_deep", b'{"a":' + deep + b"}")
    expect_error(422, "nesting_too_deep", b'{"data":' + deep + b"}")


def test_field_size_counts_utf8_bytes_of_strings() -> None:
    # A field at the limit passes the field check, but no row holding it fits in a record.
    at_limit = "é" * (MAX_FIELD_BYTES // 2)
    expect_error(422, "row_too_large", json_body([{"s": at_limit}]))
    error = expect_error(422, "field_too_large", json_body([{"id": 1}, {"s": at_limit + "a"}]))
    assert "row 1" in error.message
    assert "'s'" in error.message
    assert str(MAX_FIELD_BYTES) in error.message


def test_non_string_field_size_uses_its_json_encoding() -> None:
    big_list = [1] * (MAX_FIELD_BYTES // 2)  # "[1,1,...]" is one byte over the limit
    error = expect_ndjson_error(422, "field_too_large", ndjson_body({"list": big_list}))
    assert "'list'" in error.message


def test_row_exactly_at_row_limit_is_accepted() -> None:
    row = {"s": "x" * (MAX_ROW_BYTES - len('{"s":""}'))}
    request = parse(json_body([row]))
    assert len(request.rows[0]) == MAX_ROW_BYTES


@pytest.mark.parametrize("ndjson", [False, True])
def test_row_over_row_limit_is_rejected(ndjson: bool) -> None:
    row = {"s": "x" * (MAX_ROW_BYTES - len('{"s":""}') + 1)}
    if ndjson:
        error = expect_ndjson_error(422, "row_too_large", ndjson_body(row))
    else:
        error = expect_error(422, "row_too_large", json_body([row]))
    assert "row 0" in error.message
    assert str(MAX_ROW_BYTES) in error.message


def test_ndjson_row_that_fits_once_compacted_is_accepted() -> None:
    value = "x" * (MAX_ROW_BYTES - len('{"s":""}'))
    line = '{ "s" :   "' + value + '" }'
    request = parse_ndjson(line.encode())
    assert request.rows == [('{"s":"' + value + '"}').encode()]


# --- per-row rejections ---------------------------------------------------------------------


def test_non_objects_in_data_are_rejected_per_row() -> None:
    request = parse(json_body([1, {"id": 1}, [2], "s", None, True, {"id": 2}]))
    assert request.row_indexes == [1, 6]
    assert request.rows == [b'{"id":1}', b'{"id":2}']
    assert codes(request) == [(i, "not_an_object") for i in (0, 2, 3, 4, 5)]
    assert "array" in request.rejected[1].message


def test_invalid_ndjson_lines_are_rejected_per_row() -> None:
    request = parse_ndjson(b'{"id":1}\n{"id":\n\n7\n{"x": NaN}\n{"id":2} trailing\n{"id":3}')
    assert request.row_indexes == [0, 5]
    assert codes(request) == [
        (1, "invalid_json"),
        (2, "not_an_object"),
        (3, "invalid_json"),
        (4, "invalid_json"),
    ]


def test_ndjson_lines_are_kept_as_sent_when_safe() -> None:
    request = parse_ndjson(b'{"a": 1.50, "b": "\xc3\xa9"}\n{"c": "\\u00e9"}')
    assert request.rows == ['{"a": 1.50, "b": "é"}'.encode(), '{"c":"é"}'.encode()]


@pytest.mark.parametrize("ndjson", [False, True])
def test_unpaired_surrogates_are_rejected_per_row(ndjson: bool) -> None:
    rows = ['{"id":1}', '{"s":"\\ud800"}']
    if ndjson:
        request = parse_ndjson("\n".join(rows).encode())
    else:
        request = parse(('{"data":[' + ",".join(rows) + '],"config":{"table":"s.t"}}').encode())
    assert request.row_indexes == [0]
    assert codes(request) == [(1, "invalid_json")]


def test_out_of_range_number_is_rejected_per_row_in_json() -> None:
    request = parse(b'{"data":[{"x":1e400},{"x":1}],"config":{"table":"s.t"}}')
    assert codes(request) == [(0, "invalid_json")]


@pytest.mark.parametrize(
    "number", ["1e400", "-1E+999", "2.5e0309", "9" * 309 + ".0", "17976931348623159e292"]
)
def test_out_of_range_number_is_rejected_per_row_in_ndjson(number: str) -> None:
    """Found by the ingest fuzz target's row invariant: NDJSON rows were kept as sent,
    without re-encoding, so `1e400` was stored and materialized as infinity."""
    request = parse_ndjson(f'{{"x":{number}}}\n{{"x":1e300,"y":-2.5E-400}}'.encode())
    assert codes(request) == [(0, "invalid_json")]
    assert "too large for a double" in request.rejected[0].message
    assert request.rows == [b'{"x":1e300,"y":-2.5E-400}']


def test_all_rows_rejected_is_not_a_request_error() -> None:
    request = parse(json_body([1, 2]))
    assert request.rows == []
    assert codes(request) == [(0, "not_an_object"), (1, "not_an_object")]


# --- merge mode -----------------------------------------------------------------------------


def merge(rows: list[Any]) -> IngestRequest:
    return parse(json_body(rows, mode="merge", primary_key=["id"]))


def test_merge_accepts_string_and_integer_keys_and_rejects_bad_ones() -> None:
    request = merge(
        [
            {"id": 1},
            {"id": "1"},
            {"name": "no key"},
            {"id": None},
            {"id": 1.5},
            {"id": True},
            {"id": [1]},
            {"id": {"a": 1}},
            {"id": "b"},
        ]
    )
    assert request.row_indexes == [0, 1, 8]
    assert codes(request) == [
        (2, "missing_primary_key"),
        (3, "missing_primary_key"),
        (4, "invalid_primary_key"),
        (5, "invalid_primary_key"),
        (6, "invalid_primary_key"),
        (7, "invalid_primary_key"),
    ]


@pytest.mark.parametrize("ndjson", [False, True])
def test_duplicate_primary_keys_reject_the_request_naming_both_rows(ndjson: bool) -> None:
    rows = [{"id": "a"}, {"id": 2}, {"id": None}, {"id": 2}]
    if ndjson:
        body = ndjson_body(*rows)
        error = expect_ndjson_error(
            422, "duplicate_primary_key", body, mode="merge", primary_key="id"
        )
    else:
        error = expect_error(
            422, "duplicate_primary_key", json_body(rows, mode="merge", primary_key="id")
        )
    assert "rows 1 and 3" in error.message


def test_duplicates_among_rejected_rows_do_not_count() -> None:
    assert merge([{"id": 1.0}, {"id": 1.0}, {"id": 1}]).row_indexes == [2]


def test_same_key_in_append_mode_is_fine() -> None:
    assert parse(json_body([{"id": 1}, {"id": 1}])).row_indexes == [0, 1]


@pytest.mark.parametrize("primary_key", [None, [], ["a", "b"], [""]])
def test_merge_needs_exactly_one_key_column(primary_key: Any) -> None:
    config: dict[str, Any] = {"mode": "merge"}
    if primary_key is not None:
        config["primary_key"] = primary_key
    expect_error(422, "invalid_primary_key", json_body([{"a": 1}], **config))


@pytest.mark.parametrize("primary_key", ["", "a,b", " , "])
def test_ndjson_merge_needs_exactly_one_key_column(primary_key: str) -> None:
    body = b'{"a":1}'
    expect_ndjson_error(422, "invalid_primary_key", body, mode="merge", primary_key=primary_key)


def test_malformed_primary_key_in_merge_mode_is_rejected() -> None:
    expect_error(400, "invalid_request", json_body([{"a": 1}], mode="merge", primary_key=5))


# --- table names and request structure ------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("bronze.customers", ("bronze", "customers")),
        ("LAKE.bronze.customers", ("bronze", "customers")),
        ("lake.Bronze._t1", ("Bronze", "_t1")),
        ("lake.x", ("lake", "x")),
        ("s." + "t" * 63, ("s", "t" * 63)),
    ],
)
def test_valid_table_names(name: str, expected: tuple[str, str]) -> None:
    request = parse(json_body([{"id": 1}], table=name))
    assert (request.schema, request.table) == expected


@pytest.mark.parametrize(
    "name",
    [
        "customers",
        "a.b.c",
        "lake.a.b.c",
        "1bad.t",
        "s.t-x",
        "s.",
        ".t",
        "s.t ",
        "s." + "t" * 64,
        "s.tä",
    ],
)
def test_invalid_table_names(name: str) -> None:
    error = expect_error(400, "invalid_table", json_body([{"id": 1}], table=name))
    assert "schema.table" in error.message
    expect_ndjson_error(400, "invalid_table", b'{"id":1}', table=name)


def test_non_string_table_is_rejected() -> None:
    expect_error(400, "invalid_request", json_body([{"id": 1}], table=["s", "t"]))


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"config":{"table":"s.t"}}', "'data'"),
        (b'{"data":[{"id":1}]}', "'config'"),
        (b'{"data":[{"id":1}],"config":{"mode":"append"}}', "'config.table'"),
    ],
)
def test_missing_fields_are_named(body: bytes, field: str) -> None:
    assert field in expect_error(400, "invalid_request", body).message


@pytest.mark.parametrize(
    "body",
    [
        b"[]",
        b'{"data":"row","config":{"table":"s.t"}}',
        b'{"data":[{"id":1}],"config":"s.t"}',
        json_body([{"id": 1}], mode="upsert"),
        json_body([{"id": 1}], mode="APPEND"),
        json_body([{"id": 1}], wait="true"),
        json_body([{"id": 1}], tags=["a"]),
        json_body([{"id": 1}], tags={"k": "\ud800"}),  # headers are UTF-8
        json_body([{"id": 1}], tags={"\udc00": "v"}),
    ],
)
def test_malformed_requests_are_rejected(body: bytes) -> None:
    expect_error(400, "invalid_request", body)


@pytest.mark.parametrize("body", [b"", b"{", b'{"data":[NaN]}', b"\xff\xfe{}", b'{"a":1}x'])
def test_invalid_json_bodies_are_rejected(body: bytes) -> None:
    expect_error(400, "invalid_json", body)


def test_non_utf8_ndjson_is_rejected_as_a_whole() -> None:
    expect_ndjson_error(400, "invalid_json", b'{"id":1}\n{"s":"\xff"}')


@pytest.mark.parametrize("ndjson", [False, True])
def test_empty_data_is_rejected(ndjson: bool) -> None:
    if ndjson:
        error = expect_ndjson_error(400, "invalid_request", b"\n \n\r\n")
    else:
        error = expect_error(400, "invalid_request", json_body([]))
    assert "no rows" in error.message


# --- validation order -----------------------------------------------------------------------


def test_size_is_checked_before_content_type() -> None:
    expect_error(413, "payload_too_large", b" " * (MAX_PAYLOAD_BYTES + 1), content_type="text/csv")


def test_encoding_is_checked_before_json() -> None:
    expect_error(415, "unsupported_encoding", b"{", encoding="br")


def test_config_is_checked_before_row_limits() -> None:
    body = json_body([{}] * (MAX_ROWS + 1), table="nope")
    expect_error(400, "invalid_table", body)


def test_limits_take_precedence_over_duplicate_keys() -> None:
    rows = [{"id": 1}, {"id": 1}, {"id": 2, "deep": nested_row(MAX_DEPTH)}]
    body = json_body(rows, mode="merge", primary_key=["id"])
    expect_error(422, "nesting_too_deep", body)
