"""Decides whether user SQL only reads the lake's tables, by what DuckDB will execute.

`/v1/lake/query` (and gRPC `Query`, `s2s sql`) runs user SQL on the lake's own DuckDB. The
statement type is not enough: `EXPLAIN ANALYZE COPY ... TO '<catalog file>'` is an EXPLAIN
that writes, and a SELECT can call `read_blob`, `glob`, `duckdb_settings()` or a DuckLake
maintenance function. So a statement runs only if all of these hold, checked in this order
(each check needs the ones before it to be safe):

1. Exactly one statement, of type SELECT (DESCRIBE, SHOW, SUMMARIZE, WITH, FROM-first,
   VALUES and PIVOT parse as SELECT). EXPLAIN is refused outright: EXPLAIN ANALYZE executes
   the statement it explains, and DuckDB does not serialize an EXPLAIN's inner statement,
   so it could be checked only by its text.
2. The parse tree (sql_rules.py): every table function is one of `_TABLE_FUNCTIONS` (no file
   function, no `query()`, no `duckdb_*()` or `pragma_*`, no DuckLake maintenance); every
   scalar function passes `FunctionRules`; every table name is an identifier in the lake's
   catalog (a quoted path is a file: DuckDB would scan it with `read_csv`, and even binding
   that reads the file); no other catalog is named. This runs before anything is bound,
   because binding already does work: a file function reads its file to learn its columns.
3. The bound, optimized plan (`EXPLAIN (FORMAT JSON)`, which plans and does not execute):
   every operator is one of `_PLAN_OPERATORS`, read-only by construction, or a scan of
   `_PLAN_SCANS`. This catches what the text does not show: views expand here
   (`information_schema.*`, `pg_catalog.*`, `SHOW DATABASES` become `duckdb_*()` calls),
   and a table name resolves to its catalog (a `__ducklake_metadata_lake` table is a
   `SEQ_SCAN`; only the lake's DuckLake tables are `DUCKLAKE_SCAN`).

The fences around it stay (query.py): the transaction is always rolled back, DuckDB's
external access is off outside the lake's directories, a watchdog interrupts long queries,
and results are capped.
"""

from __future__ import annotations

import json
import re
from typing import Any

import duckdb

from s2s.errors import S2Error
from server.lake.connection import CATALOG_ALIAS
from server.lake.sql_rules import (
    FunctionRules,
    NotSerializable,
    SqlSyntaxError,
    Tree,
    nodes,
    parse,
)
from server.lake.sqltext import first_line

_TABLE_FUNCTIONS = (
    "range",
    "generate_series",
    "unnest",
    "ducklake_snapshots",
    "ducklake_table_info",
)
"""Table functions user SQL may call: value generators, and DuckLake's read-only history and
table sizes (neither shows a path; `ducklake_list_files` does, so it is not here)."""
_PLAN_SCANS = frozenset(
    {
        "DUCKLAKE_SCAN",
        *(name.upper() for name in _TABLE_FUNCTIONS),
        # What the information_schema views and SHOW TABLES/DESCRIBE expand to: names and
        # types of schemas, tables, views, columns and constraints, no paths, no settings.
        # DUCKDB_DATABASES (the catalog file's path) and DUCKDB_SETTINGS are not here.
        "DUCKDB_SCHEMAS",
        "DUCKDB_TABLES",
        "DUCKDB_VIEWS",
        "DUCKDB_COLUMNS",
        "DUCKDB_CONSTRAINTS",
    }
)
_PLAN_OPERATORS = frozenset(
    {
        "PROJECTION",
        "FILTER",
        "DUMMY_SCAN",
        "EMPTY_RESULT",
        "COLUMN_DATA_SCAN",
        "CHUNK_SCAN",
        "DELIM_SCAN",
        "CTE",
        "CTE_SCAN",
        "REC_CTE",
        "REC_CTE_SCAN",
        "REC_KEY_CTE",
        "HASH_GROUP_BY",
        "PERFECT_HASH_GROUP_BY",
        "PARTITIONED_AGGREGATE",
        "UNGROUPED_AGGREGATE",
        "HASH_JOIN",
        "NESTED_LOOP_JOIN",
        "BLOCKWISE_NL_JOIN",
        "PIECEWISE_MERGE_JOIN",
        "IE_JOIN",
        "ASOF_JOIN",
        "CROSS_PRODUCT",
        "POSITIONAL_SCAN",
        "POSITIONAL_JOIN",
        "LEFT_DELIM_JOIN",
        "RIGHT_DELIM_JOIN",
        "UNION",
        "ORDER_BY",
        "TOP_N",
        "LIMIT",
        "STREAMING_LIMIT",
        "LIMIT_PERCENT",
        "WINDOW",
        "STREAMING_WINDOW",
        "UNNEST",
        # A table function fed by the rows to its left (`FROM t, unnest(t.xs)`); the plan
        # does not name it, but step 2 allowed only `_TABLE_FUNCTIONS` in the statement, and
        # the views that expand at bind time call none with a lateral input.
        "INOUT_FUNCTION",
        "STREAMING_SAMPLE",
        "RESERVOIR_SAMPLE",
    }
)
"""Operators that compute over their inputs and read or write nothing else: relational
algebra, no scans (those are `_PLAN_SCANS`), no COPY, INSERT, CREATE, PRAGMA or the like."""
_READ_ONLY = "user SQL may only read the lake's tables"
_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class SqlGuard:
    def __init__(self, rules: FunctionRules, other_catalogs: frozenset[str]) -> None:
        self._rules = rules
        self._other_catalogs = other_catalogs

    @classmethod
    def load(cls, cursor: duckdb.DuckDBPyConnection, rules: FunctionRules) -> SqlGuard:
        """The attached catalogs other than the lake (`system`, `temp`, `memory`, the DuckLake
        metadata catalog) are read once: user SQL may not name them."""
        names = cursor.execute("SELECT database_name FROM duckdb_databases()").fetchall()
        others = frozenset(str(row[0]).lower() for row in names) - {CATALOG_ALIAS}
        return cls(rules, others)

    def check(self, cursor: duckdb.DuckDBPyConnection, sql: str) -> None:
        """Raise `bad_sql` if `sql` is malformed, `read_only_sql` if it would do anything but
        read the lake's tables. Binds (plans) the statement on `cursor`, runs nothing."""
        try:
            statements = cursor.extract_statements(sql)
        except duckdb.Error as error:
            raise S2Error("bad_sql", first_line(error)) from None
        if len(statements) != 1:
            raise S2Error("bad_sql", f"send exactly one statement, not {len(statements)}")
        kind = statements[0].type
        if kind == duckdb.StatementType.EXPLAIN:
            raise _refused(
                "EXPLAIN is not supported here: EXPLAIN ANALYZE runs the statement it "
                "explains; send the SELECT itself"
            )
        if kind != duckdb.StatementType.SELECT:
            raise _refused(
                "only reading statements (SELECT, WITH, FROM, VALUES, DESCRIBE, SHOW, "
                f"SUMMARIZE) may run here; this one is {kind.name}"
            )
        try:
            (tree,) = parse(cursor, sql)
        except NotSerializable:
            raise _refused(
                "only plain reading statements (SELECT, WITH, FROM, VALUES, DESCRIBE, SHOW, "
                "SUMMARIZE) may run here; this one (a PRAGMA?) is not one"
            ) from None
        except SqlSyntaxError as error:
            raise S2Error("bad_sql", str(error)) from None
        self._check_tree(tree)
        try:
            rows = cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}").fetchall()
        except duckdb.Error as error:
            raise S2Error("bad_sql", first_line(error)) from None
        _check_plan(rows)

    def _check_tree(self, tree: Tree) -> None:
        refusal = self._rules.refusal(tree)
        if refusal is not None:
            raise _refused(refusal)
        for node in nodes(tree):
            kind = node.get("type")
            if kind == "TABLE_FUNCTION":
                self._check_table_function(node)
            elif kind == "BASE_TABLE":
                self._check_table(node)

    @staticmethod
    def _check_table_function(node: Tree) -> None:
        function = node.get("function") or {}
        name = str(function.get("function_name", "")).lower()
        if name not in _TABLE_FUNCTIONS:
            raise _refused(
                f"table function {name}() is not allowed: {_READ_ONLY} "
                f"(table functions allowed: {', '.join(_TABLE_FUNCTIONS)})"
            )

    def _check_table(self, node: Tree) -> None:
        catalog = str(node.get("catalog_name") or "").lower()
        schema = str(node.get("schema_name") or "").lower()
        table = str(node.get("table_name") or "")
        if not _TABLE_NAME.fullmatch(table):
            raise _refused(
                f"a quoted name in FROM that is not a table name reads a file; {_READ_ONLY}"
            )
        named = catalog or schema  # `x.t` is catalog x's table t when x is a catalog
        if catalog not in ("", CATALOG_ALIAS) or named in self._other_catalogs:
            raise _refused(
                f"catalog {named!r} is not the lake; {_READ_ONLY} (catalog {CATALOG_ALIAS!r})"
            )


def _check_plan(rows: list[Any]) -> None:
    try:
        operators = [operator for _, plan in rows for operator in json.loads(plan)]
    except RecursionError:
        raise S2Error("bad_sql", "the statement's plan nests too deeply") from None
    if not operators:
        # DuckDB plans a PIVOT without an IN list in several statements, and shows none.
        raise _refused(
            "DuckDB shows no plan to check for this statement (a PIVOT needs an explicit "
            "IN list here)"
        )
    for operator in nodes(operators):
        name = operator.get("name")
        if not isinstance(name, str) or "children" not in operator:
            continue  # not an operator: its details (extra_info)
        if name in _PLAN_OPERATORS or name in _PLAN_SCANS:
            continue
        extra = operator.get("extra_info") or {}
        what = extra.get("Table") if isinstance(extra, dict) else None
        raise _refused(
            f"the plan reads with {name}{f' from {what}' if what else ''}, "
            f"which is not one of the lake's tables; {_READ_ONLY}"
        )


def _refused(message: str) -> S2Error:
    return S2Error("read_only_sql", message)
