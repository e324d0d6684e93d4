"""Text for DuckDB: quoting names and values into SQL, and a DuckDB error as one line."""

from __future__ import annotations


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def first_line(error: Exception) -> str:
    """DuckDB errors carry the query and a caret below the message: keep the message."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
