"""The function rule shared by the SQL guard and the projection check, on DuckDB's own
function list: what it refuses, and that no macro reading the catalog slips through."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from server.lake.connection import LakeSettings, lake_cursor, open_lake
from server.lake.sql_rules import FunctionRules, parse


@pytest.fixture(scope="module")
def cursor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[duckdb.DuckDBPyConnection]:
    root: Path = tmp_path_factory.mktemp("sql-rules") / "lake"
    conn = open_lake(LakeSettings(root=root))
    try:
        yield lake_cursor(conn)
    finally:
        conn.close()


def test_refused_functions(cursor: duckdb.DuckDBPyConnection) -> None:
    rules = FunctionRules.load(cursor)
    for name in ["current_setting", "getvariable", "nextval", "setseed", "sleep_ms", "write_log",
                 "json_serialize_plan", "get_block_size", "pg_sleep"]:  # fmt: skip
        assert name in rules.denied, name
    for name in ["random", "uuid", "gen_random_uuid", "error", "now", "upper", "sha256"]:
        assert name not in rules.denied, name
    (tree,) = parse(cursor, "SELECT upper(x), main.CURRENT_SETTING('threads')")
    assert rules.refusal(tree) == (
        "function current_setting() is not allowed: it shows server settings, which hold "
        "absolute paths"
    )


def test_every_macro_that_reads_a_table_is_refused(cursor: duckdb.DuckDBPyConnection) -> None:
    """An independent check by text: a macro body with SELECT or FROM in it reads a table
    when it expands (every overload counts: `pg_get_constraintdef` has two)."""
    rules = FunctionRules.load(cursor)
    reading = {
        str(name).lower()
        for name, body in cursor.execute(
            "SELECT function_name, macro_definition FROM duckdb_functions() "
            "WHERE function_type = 'macro'"
        ).fetchall()
        if body is not None and re.search(r"\b(SELECT|FROM)\b", str(body), re.IGNORECASE)
    }
    assert reading, "DuckDB has macros that query its catalog (pg_get_viewdef ...)"
    assert sorted(reading - set(rules.denied)) == []
