"""Hypothesis strategies for malformed requests: every HTTP route of the server, with paths,
headers, query strings and bodies that are mostly almost right (so they get past the first
check into the parsers behind it) and sometimes plain garbage.

A request is raw bytes on the wire (`RawRequest`), so paths and headers can carry what an HTTP
library would refuse to send: bad percent-escapes, non-UTF-8 bytes, odd media types.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_from_bytes

import zstandard
from hypothesis import strategies as st

BASIN = "fuzz-basin"
STREAM = "fuzz-stream"
MATERIALIZATION = "fuzz_m"
TABLE = "bronze.fuzz_m"
KV_STORE = "fuzz_kv"
KV_KEY = "k"

# (methods, path template): the routes of server/http_frontend/app.py. `{basin}`, `{stream}`,
# `{name}`, `{store}` and `{key}` are filled with the real resources above or with generated
# segments.
ROUTES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("GET",), "/health"),
    (("GET",), "/ping"),
    (("GET",), "/metrics"),
    (("GET",), "/"),
    (("GET",), "/console/{name}"),
    (("GET",), "/v1/whoami"),
    (("GET", "POST"), "/v1/basins"),
    (("GET", "PUT", "PATCH", "DELETE"), "/v1/basins/{basin}"),
    (("GET", "POST"), "/v1/streams"),
    (("GET", "PUT", "PATCH", "DELETE"), "/v1/streams/{stream}"),
    (("GET", "POST"), "/v1/streams/{stream}/records"),
    (("GET",), "/v1/streams/{stream}/records/tail"),
    (("GET",), "/v1/streams/{stream}/status"),
    (("GET",), "/v1/locations"),
    (("GET", "PUT"), "/v1/locations/default"),
    (("GET", "POST"), "/v1/access-tokens"),
    (("DELETE",), "/v1/access-tokens/{name}"),
    (("GET",), "/v1/metrics"),
    (("GET",), "/v1/metrics/{basin}"),
    (("GET",), "/v1/metrics/{basin}/{stream}"),
    (("POST",), "/v2/stream"),
    (("GET",), "/v2/stream/errors"),
    (("POST",), "/v1/lake/query"),
    (("GET", "POST"), "/v1/lake/materializations"),
    (("GET", "DELETE"), "/v1/lake/materializations/{name}"),
    (("POST",), "/v1/lake/materializations/{name}/pause"),
    (("POST",), "/v1/lake/materializations/{name}/resume"),
    (("GET",), "/v1/kv/{basin}/{store}"),
    (("GET",), "/v1/kv/{basin}/{store}/keys"),
    (("GET", "PUT", "DELETE"), "/v1/kv/{basin}/{store}/keys/{key}"),
    (("GET",), "/v1/kv/{basin}/{store}/keys/{key}/history"),
    (("POST",), "/v1/kv/{basin}/{store}/commit"),
)

QUERY_NAMES = (
    "seq_num",
    "timestamp",
    "tail_offset",
    "count",
    "bytes",
    "until",
    "clamp",
    "wait",
    "prefix",
    "start_after",
    "limit",
    "table",
    "mode",
    "primary_key",
    "format",
    "set",
    "start",
    "end",
    "interval",
    "expected_revision",
    "values",
)

CONTENT_TYPES = (
    "application/json",
    "application/protobuf",
    "application/x-protobuf",
    "s2s/proto",
    "application/x-ndjson",
    "text/event-stream",
    "text/plain",
    "application/json; charset=utf-8",
    "application/vnd.apache.arrow.stream",
    "text/csv",
    "application/vnd.apache.parquet",
    "",
)


@dataclass(frozen=True)
class RawRequest:
    method: str
    target: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes

    def encode(self) -> bytes:
        lines = [self.method.encode() + b" " + self.target + b" HTTP/1.1", b"host: fuzz"]
        lines += [name + b": " + value for name, value in self.headers]
        lines += [b"content-length: " + str(len(self.body)).encode(), b"connection: close"]
        return b"\r\n".join(lines) + b"\r\n\r\n" + self.body


# --- values --------------------------------------------------------------------------------

_numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, -1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 10**30]),
)
_texts = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", " ", "1e9", "0x10", "-0", "١٢٣", "NaN", "true", "null", "\x00"]),
)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    _numbers,
    st.floats(allow_nan=False, allow_infinity=False),
    _texts,
)
json_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)


def _deeply_nested(depth: int, opener: str) -> bytes:
    if opener == "[":
        return b"[" * depth + b"1" + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


_record = st.fixed_dictionaries(
    {},
    optional={
        "body": st.one_of(_texts, json_values),
        "headers": st.one_of(st.lists(st.lists(_texts, max_size=3), max_size=3), json_values),
        "timestamp": st.one_of(_numbers, _texts),
    },
)
_append_json = st.fixed_dictionaries(
    {"records": st.one_of(st.lists(_record, max_size=4), json_values)},
    optional={
        "match_seq_num": st.one_of(_numbers, _texts, st.none()),
        "fencing_token": st.one_of(_texts, json_values),
    },
)
_config_json = st.fixed_dictionaries(
    {},
    optional={
        "retention_policy": json_values,
        "timestamping": json_values,
        "delete_on_empty": json_values,
        "storage_class": json_values,
        "default_stream_config": json_values,
        "create_stream_on_append": json_values,
        "create_stream_on_read": json_values,
    },
)
_create_json = st.one_of(
    st.fixed_dictionaries(
        {"basin": st.one_of(_texts, json_values)},
        optional={"config": st.one_of(_config_json, json_values)},
    ),
    st.fixed_dictionaries(
        {"stream": st.one_of(_texts, json_values)},
        optional={"config": st.one_of(_config_json, json_values)},
    ),
    st.fixed_dictionaries({}, optional={"config": st.one_of(_config_json, json_values)}),
)
_sql = st.one_of(
    st.text(max_size=60),
    st.sampled_from(
        [
            "SELECT 1",
            f"SELECT * FROM {TABLE}",
            "SELECT * FROM read_blob('**')",
            "EXPLAIN ANALYZE SELECT 1",
            "SELECT current_setting('temp_directory')",
            "PRAGMA database_list",
            "SELECT * FROM duckdb_settings()",
            "SELECT 1; SELECT 2",
            "DESCRIBE " + TABLE,
            "SELECT 'x' || repeat('y', 10)",
        ]
    ),
)
_lake_json = st.one_of(
    st.fixed_dictionaries({"sql": st.one_of(_sql, json_values)}, optional={"limit": json_values}),
    st.fixed_dictionaries(
        {
            "data": json_values,
            "config": st.one_of(
                json_values,
                st.fixed_dictionaries(
                    {"table": st.one_of(st.just(TABLE), _texts)},
                    optional={"mode": json_values, "primary_key": json_values, "wait": json_values},
                ),
            ),
        }
    ),
    st.fixed_dictionaries(
        {"name": st.one_of(st.just(MATERIALIZATION + "2"), _texts)},
        optional={
            "table": st.one_of(st.just("bronze.fuzz_other"), _texts),
            "basin": json_values,
            "stream": json_values,
            "mode": json_values,
            "primary_key": json_values,
            "select": st.one_of(_sql, json_values),
            "where": st.one_of(_sql, json_values),
            "partition_by": json_values,
            "create_table": json_values,
            "paused": json_values,
        },
    ),
)


_kv_change = st.fixed_dictionaries(
    {"op": st.one_of(st.sampled_from(["put", "delete"]), json_values), "key": json_values},
    optional={"value": st.one_of(_texts, json_values)},
)
_kv_json = st.one_of(
    st.fixed_dictionaries({"value": st.one_of(_texts, json_values)}),
    st.fixed_dictionaries(
        {"changes": st.one_of(st.lists(_kv_change, max_size=3), json_values)},
        optional={"expected_revision": st.one_of(_numbers, json_values)},
    ),
)


def _compress(data: bytes, codec: str, cut: float) -> bytes:
    packed = gzip.compress(data) if codec == "gzip" else zstandard.ZstdCompressor().compress(data)
    return packed[: int(len(packed) * cut)] if cut < 1 else packed


def _frame(body: bytes, flags: int) -> bytes:
    return (1 + len(body)).to_bytes(3, "big") + bytes([flags]) + body


@st.composite
def bodies(draw: st.DrawFn) -> tuple[bytes, str | None]:
    """A body and the content-encoding that says how it is compressed (None: not)."""
    kind = draw(st.sampled_from(["json"] * 6 + ["bytes", "deep", "frames", "empty"]))
    if kind == "empty":
        data = b""
    elif kind == "bytes":
        data = draw(st.binary(max_size=200))
    elif kind == "deep":
        data = _deeply_nested(
            draw(st.sampled_from([100, 1000, 100_000])), draw(st.sampled_from("[{"))
        )
    elif kind == "frames":
        frames = draw(
            st.lists(
                st.tuples(st.binary(max_size=64), st.integers(min_value=0, max_value=255)),
                max_size=3,
            )
        )
        data = b"".join(_frame(body, flags) for body, flags in frames)
        data += draw(st.binary(max_size=4))
    else:
        value: Any = draw(st.one_of(_append_json, _create_json, _lake_json, _kv_json, json_values))
        text = json.dumps(value)
        if draw(st.booleans()):
            # Break it somewhere, or put a lone surrogate or a non-ASCII body in.
            text = draw(
                st.sampled_from(
                    [
                        text[: len(text) // 2],
                        text + "x",
                        text.replace('"', '"\\ud800', 1),
                        text.replace('""', '"é"', 1),
                    ]
                )
            )
        data = text.encode("utf-8", "surrogatepass")
    codec = draw(st.sampled_from([None, None, None, "gzip", "zstd", "identity", "br"]))
    if codec in ("gzip", "zstd") and data:
        data = _compress(data, codec, draw(st.sampled_from([1.0, 1.0, 0.5, 0.9])))
    return data, codec


_segment_bytes = st.one_of(
    st.binary(min_size=0, max_size=12).map(lambda b: quote_from_bytes(b, safe="").encode()),
    st.sampled_from([b"%", b"%zz", b"%ff%fe", b"..", b".", b"a%2Fb", b"%00", b"x" * 600]),
)


@st.composite
def requests(draw: st.DrawFn) -> RawRequest:
    methods, template = draw(st.sampled_from(ROUTES))
    method = draw(
        st.one_of(
            st.sampled_from(methods),
            st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]),
        )
    )
    known = {
        "{basin}": BASIN.encode(),
        "{stream}": STREAM.encode(),
        "{name}": MATERIALIZATION.encode(),
        "{store}": KV_STORE.encode(),
        "{key}": KV_KEY.encode(),
    }
    target = template.encode()
    for placeholder, real in known.items():
        if placeholder.encode() in target:
            # Never delete the resources every other example relies on.
            use_real = method != "DELETE" and draw(st.booleans())
            target = target.replace(
                placeholder.encode(), real if use_real else draw(_segment_bytes)
            )
    query = draw(
        st.dictionaries(
            st.sampled_from(QUERY_NAMES),
            st.one_of(_numbers.map(str), _texts).map(
                lambda v: quote_from_bytes(v.encode("utf-8", "surrogatepass"), safe="")
            ),
            max_size=4,
        )
    )
    if "wait" in query:
        # A read may wait as long as asked (up to 60 s): keep examples quick.
        query["wait"] = draw(st.sampled_from(["0", "1", "-1", "x", "4294967296", ""]))
    if query:
        target += b"?" + "&".join(f"{k}={v}" for k, v in query.items()).encode()
    if draw(st.integers(0, 9)) == 0:
        target += b"?" + draw(st.binary(max_size=12)).replace(b" ", b"%20").replace(
            b"\r", b""
        ).replace(b"\n", b"")
    body, codec = draw(bodies())
    headers: list[tuple[bytes, bytes]] = []
    if draw(st.integers(0, 5)):
        headers.append(
            (b"s2-basin", BASIN.encode() if draw(st.booleans()) else draw(_segment_bytes))
        )
    content_type = draw(st.one_of(st.just("application/json"), st.sampled_from(CONTENT_TYPES)))
    headers.append((b"content-type", content_type.encode()))
    if draw(st.booleans()):
        headers.append((b"accept", draw(st.sampled_from(CONTENT_TYPES)).encode()))
    if codec is not None:
        headers.append((b"content-encoding", codec.encode()))
    if draw(st.booleans()):
        headers.append(
            (b"s2-format", draw(st.sampled_from([b"raw", b"base64", b"json", b"\xff", b""])))
        )
    if draw(st.integers(0, 3)) == 0:
        name = draw(
            st.sampled_from(
                [
                    b"last-event-id",
                    b"s2-request-token",
                    b"accept-encoding",
                    b"authorization",
                    b"x-odd",
                ]
            )
        )
        value = (
            draw(st.binary(max_size=20)).replace(b"\r", b"").replace(b"\n", b"").replace(b"\0", b"")
        )
        headers.append((name, value))
    return RawRequest(method, target, tuple(headers), body)
