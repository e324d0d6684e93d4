"""SQL results as files to download: CSV and Parquet, what `POST /v1/lake/query` answers when
the first `accept` type asks for one (the console's download buttons; docs/adr/0014).

CSV holds scalars only: columns of the types below are written by Arrow's CSV writer as they
are; any other column (lists, structs, maps, binary, intervals ...) is written as the JSON text
of each value, in the JSON answer's rules (`lake_json.json_safe`), so every result downloads.
Parquet holds every type a query here returns except intervals, which it has no type for: a
result with one is refused with `invalid`, saying which column to cast.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from s2s.errors import invalid
from server.http_frontend.lake_json import json_safe

CSV_CONTENT_TYPE = "text/csv; charset=utf-8"
PARQUET_CONTENT_TYPE = "application/vnd.apache.parquet"


def _csv_writes_as_is(type_: pa.DataType) -> bool:
    return bool(
        pa.types.is_integer(type_)
        or pa.types.is_floating(type_)
        or pa.types.is_boolean(type_)
        or pa.types.is_string(type_)
        or pa.types.is_large_string(type_)
        or pa.types.is_decimal(type_)
        or pa.types.is_date(type_)
        or pa.types.is_time(type_)
        or pa.types.is_timestamp(type_)
        or pa.types.is_null(type_)
    )


def csv_bytes(table: pa.Table) -> bytes:
    """The result as CSV with a header row (RFC 4180 quoting, UTF-8)."""
    columns = []
    for column in table.columns:
        if _csv_writes_as_is(column.type):
            columns.append(column)
        else:
            texts = [_json_text(value) for value in column.to_pylist()]
            columns.append(pa.array(texts, pa.string()))
    sink = pa.BufferOutputStream()
    pa_csv.write_csv(pa.Table.from_arrays(columns, names=table.column_names), sink)
    data: bytes = sink.getvalue().to_pybytes()
    return data


def _json_text(value: object) -> str | None:
    if value is None:
        return None
    safe = json_safe(value)
    return safe if isinstance(safe, str) else json.dumps(safe, separators=(",", ":"))


def parquet_bytes(table: pa.Table) -> bytes:
    """The result as one Parquet file (zstd-compressed)."""
    for field in table.schema:
        if pa.types.is_interval(field.type):
            raise invalid(
                f"column {field.name!r} is an interval, which Parquet cannot hold: cast it in "
                "the query (e.g. to VARCHAR) or download CSV"
            )
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    data: bytes = sink.getvalue().to_pybytes()
    return data
