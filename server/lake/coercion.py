"""How JSON values become column values: type inference for new columns and the cast rules.

Inference (a column's type, from the JSON values of the first batch that has the field):
integers → BIGINT; any fractional number → DOUBLE; booleans → BOOLEAN; strings that are all
ISO-8601 dates → DATE, all date-times → TIMESTAMPTZ, otherwise VARCHAR; objects, arrays or
a mix of strings and other scalars → JSON. A field that is only ever null gets no column yet.

Casting (a JSON value into an existing column) never loses information silently; a value that
does not fit is rejected and its record goes to the dead-letter table:
- VARCHAR takes anything: strings as they are, other values as their JSON text.
- integer columns take integers, numbers with no fractional part (2.0), and strings holding
  either ("42"); 2.5, true and "abc" are rejected. Out-of-range values are rejected.
- floating and decimal columns take numbers and numeric strings.
- BOOLEAN takes true/false and the strings "true"/"false" (any case).
- dates and times take ISO-8601 strings; numbers are rejected (seconds or milliseconds would
  be a guess).
- JSON takes anything. Other types take the value's text when DuckDB casts it exactly.
Null, or a missing field, is NULL in any column.
"""

from __future__ import annotations

_INTEGER_TYPES = {
    "TINYINT",
    "SMALLINT",
    "INTEGER",
    "BIGINT",
    "HUGEINT",
    "UTINYINT",
    "USMALLINT",
    "UINTEGER",
    "UBIGINT",
    "UHUGEINT",
}
_FLOAT_TYPES = {"FLOAT", "DOUBLE", "REAL"}
_TEMPORAL_TYPES = {"DATE", "TIME", "TIMESTAMP", "TIMESTAMP WITH TIME ZONE", "TIMESTAMPTZ"}
_DATE_PATTERN = r"^\d{4}-\d{2}-\d{2}$"
_DATETIME_PATTERN = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}(:?\d{2})?)?$"


def json_path(key: str) -> str:
    """A JSONPath selecting one top-level key, whatever characters it holds."""
    return "$." + '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'


def inference_inputs(value: str, index: int) -> str:
    """Select-list items computing, once per JSON value, what `inference_aggregates` reads:
    its JSON type and, for strings, the text."""
    return (
        f"json_type({value}) AS kind{index}, "
        f"CASE WHEN kind{index} = 'VARCHAR' THEN {value}->>'$' END AS text{index}"
    )


def inference_aggregates(index: int) -> str:
    """Three aggregates that `infer_type` turns into a column type: the JSON types seen, and
    whether every string is a date / a date-time."""
    text = f"text{index}"
    datetime = (
        f"CASE WHEN {text} IS NULL THEN NULL "  # not a string: bool_and skips it
        f"WHEN regexp_matches({text}, '{_DATETIME_PATTERN}') "
        f"THEN TRY_CAST({text} AS TIMESTAMPTZ) IS NOT NULL ELSE false END"
    )
    return (
        f"list(DISTINCT kind{index}), "
        f"bool_and(regexp_matches({text}, '{_DATE_PATTERN}')), "
        f"bool_and({datetime})"
    )


def infer_type(kinds: list[str], all_dates: bool | None, all_datetimes: bool | None) -> str | None:
    """The column type for the JSON types seen (None: only nulls, no column yet)."""
    seen = {kind for kind in kinds if kind not in (None, "NULL")}
    if not seen:
        return None
    if seen <= {"BIGINT", "UBIGINT"}:
        return "BIGINT"
    if seen <= {"BIGINT", "UBIGINT", "DOUBLE"}:
        return "DOUBLE"
    if seen == {"BOOLEAN"}:
        return "BOOLEAN"
    if seen == {"VARCHAR"}:
        if all_dates:
            return "DATE"
        if all_datetimes:
            return "TIMESTAMP WITH TIME ZONE"  # as the catalog spells it (Applier.commit compares)
        return "VARCHAR"
    return "JSON"


def _scalar_text(value: str) -> str:
    """The value's text for casting: strings unquoted, numbers as written, others NULL."""
    return (
        f"(CASE json_type({value}) WHEN 'VARCHAR' THEN trim({value}->>'$') "
        f"WHEN 'BIGINT' THEN {value}::VARCHAR WHEN 'UBIGINT' THEN {value}::VARCHAR "
        f"WHEN 'DOUBLE' THEN {value}::VARCHAR END)"
    )


def cast_from_json(value: str, column_type: str) -> str:
    """SQL casting JSON `value` to `column_type`; NULL where the value does not fit.

    Each rule starts with the JSON type that matches the column, which DuckDB casts natively;
    the slower text path runs only for values of another type.
    """
    upper = column_type.upper()
    kind = f"json_type({value})"
    if upper == "JSON":
        return f"(CASE WHEN {kind} <> 'NULL' THEN {value} END)"
    if upper == "VARCHAR":
        return (
            f"(CASE {kind} WHEN 'VARCHAR' THEN {value}->>'$' "
            f"WHEN 'NULL' THEN NULL ELSE {value}::VARCHAR END)"
        )
    text = _scalar_text(value)
    if upper in _INTEGER_TYPES:
        number = f"TRY_CAST({text} AS DOUBLE)"
        return (
            f"(CASE WHEN {kind} IN ('BIGINT', 'UBIGINT') THEN TRY_CAST({value} AS {upper}) "
            f"WHEN regexp_full_match({text}, '[+-]?\\d+') THEN TRY_CAST({text} AS {upper}) "
            f"WHEN {number} = trunc({number}) THEN TRY_CAST({number} AS {upper}) END)"
        )
    if upper in _FLOAT_TYPES or upper.startswith("DECIMAL"):
        return (
            f"(CASE WHEN {kind} IN ('DOUBLE', 'BIGINT', 'UBIGINT') "
            f"THEN TRY_CAST({value} AS {column_type}) "
            f"ELSE TRY_CAST({text} AS {column_type}) END)"
        )
    if upper == "BOOLEAN":
        return (
            f"(CASE {kind} WHEN 'BOOLEAN' THEN TRY_CAST({value} AS BOOLEAN) "
            f"WHEN 'VARCHAR' THEN CASE WHEN lower({value}->>'$') IN ('true', 'false') "
            f"THEN ({value}->>'$')::BOOLEAN END END)"
        )
    if upper in _TEMPORAL_TYPES:
        return f"(CASE WHEN {kind} = 'VARCHAR' THEN TRY_CAST({value}->>'$' AS {column_type}) END)"
    if upper.endswith("]") or upper.startswith(("STRUCT", "MAP", "LIST")):
        return f"(CASE WHEN {kind} <> 'NULL' THEN TRY_CAST({value} AS {column_type}) END)"
    return f"TRY_CAST({text} AS {column_type})"


def cast_typed(value: str, source_type: str, column_type: str) -> str:
    """SQL casting an already typed projection column to the table's column type."""
    if source_type.upper() == column_type.upper():
        return value
    if column_type.upper() == "JSON":
        return f"to_json({value})"
    if source_type.upper() == "JSON":
        return cast_from_json(value, column_type)
    return f"TRY_CAST({value} AS {column_type})"


def is_null_json(value: str) -> str:
    return f"({value} IS NULL OR json_type({value}) = 'NULL')"
