"""Checks a materialization's SQL fragments: `select` and `where` are expressions over one
record, `partition_by` entries are columns or DuckLake partition transforms.

The fragments are composed into SQL that runs on every batch (apply.py: `projection_sql`,
`ALTER TABLE ... SET PARTITIONED BY`), so a fragment that is more than an expression runs
with the materializer's rights: `(SELECT count(*) FROM ducklake_expire_snapshots(...))`
expired snapshots on every batch, and a `where` of `true) OR (1=1` rewrote the predicate.
Each fragment is parsed on its own (`SELECT <fragment>`, by DuckDB) and must be:

- `select`: a select list and nothing else: no FROM, WHERE, GROUP BY, HAVING, QUALIFY, ORDER
  BY, LIMIT, DISTINCT, set operation or CTE;
- `where`: exactly one expression;
- both: no subquery and no table reference (a projection sees one record, never a table),
  no window function (it would see the other records of the batch, which batching decides),
  and no function refused by `FunctionRules` (the same rule as user queries);
- `partition_by`: a column name, `year|month|day|hour(column)` or `bucket(n, column)`.

Then the composed statement is parsed too and must be exactly the template with the
fragments' trees in their places: nothing in a fragment (a comment, a quote) may change what
surrounds it.
"""

from __future__ import annotations

from typing import Any

import duckdb

from s2s.errors import S2Error, invalid
from server.lake.apply import projection_sql
from server.lake.definition import Materialization
from server.lake.sql_rules import (
    FunctionRules,
    SqlSyntaxError,
    Tree,
    nodes,
    parse,
    reads_a_table,
    without_locations,
)

_PARTITION_TRANSFORMS = ("year", "month", "day", "hour")
_PARTITION_FORM = (
    "partition_by entries must be column names, year(col), month(col), day(col), hour(col) "
    "or bucket(n, col)"
)
_SELECT_LIST_ONLY: dict[str, Any] = {
    "modifiers": [],
    "cte_map": {"map": []},
    "from_table": {"type": "EMPTY", "alias": "", "sample": None},
    "where_clause": None,
    "group_expressions": [],
    "group_sets": [],
    "aggregate_handling": "STANDARD_HANDLING",
    "having": None,
    "sample": None,
    "qualify": None,
}
"""A SELECT node's clauses when it is a select list and nothing else."""


def check_projection(
    cursor: duckdb.DuckDBPyConnection, rules: FunctionRules, definition: Materialization
) -> None:
    """Raise `invalid`, saying what to fix, unless every fragment of `definition` is what the
    module docstring allows."""
    try:
        _check(cursor, rules, definition)
    except RecursionError:  # comparing two deep trees; parsing alone stops at about this depth
        raise invalid("select/where/partition_by nest too deeply") from None


def _check(
    cursor: duckdb.DuckDBPyConnection, rules: FunctionRules, definition: Materialization
) -> None:
    select = _expressions(cursor, rules, definition.select, "select")
    where = _expressions(cursor, rules, definition.where, "where")
    if where is not None and len(where) != 1:
        raise invalid(f"where must be exactly one expression, not {len(where)}")
    if where is not None and where[0].get("alias"):
        raise invalid("where must be one expression, without AS")
    if select is not None or where is not None:
        _check_composed(cursor, definition, select, where)
    _check_partitions(cursor, definition.partition_by)


def _parse_one(cursor: duckdb.DuckDBPyConnection, sql: str, what: str) -> Tree:
    try:
        statements = parse(cursor, sql)
    except SqlSyntaxError as error:
        raise invalid(f"{what} does not parse: {error}") from None
    if len(statements) != 1:
        raise invalid(f"{what} must be a single expression list, without ';'")
    return statements[0]


def _expressions(
    cursor: duckdb.DuckDBPyConnection, rules: FunctionRules, fragment: str | None, what: str
) -> list[Tree] | None:
    """The fragment's expressions, checked; None if there is no fragment."""
    if fragment is None:
        return None
    node = _parse_one(cursor, f"SELECT {fragment}", what)
    if node.get("type") != "SELECT_NODE":
        raise invalid(f"{what} must be expressions, not a set operation (UNION, EXCEPT ...)")
    clauses = {key: without_locations(node.get(key)) for key in _SELECT_LIST_ONLY}
    extra = [key for key, value in clauses.items() if value != _SELECT_LIST_ONLY[key]]
    if extra:
        shown = ", ".join(key.replace("_clause", "").replace("_", " ") for key in extra)
        raise invalid(
            f"{what} must be expressions over one record only, without FROM, WHERE, GROUP BY, "
            f"HAVING, ORDER BY, LIMIT, DISTINCT or WITH (found: {shown})"
        )
    expressions: list[Tree] = node["select_list"]
    if reads_a_table(expressions):
        raise invalid(f"{what} must not contain a subquery: a projection sees one record")
    if any(item.get("class") == "WINDOW" for item in nodes(expressions)):
        raise invalid(f"{what} must not use a window function (OVER): it sees only one record")
    refusal = rules.refusal(expressions)
    if refusal is not None:
        raise invalid(f"{what}: {refusal}")
    return expressions


def _check_composed(
    cursor: duckdb.DuckDBPyConnection,
    definition: Materialization,
    select: list[Tree] | None,
    where: list[Tree] | None,
) -> None:
    """The statement apply.py runs must be the template with the fragments in their places."""
    template = _parse_one(cursor, projection_sql(None, None), "the projection")
    composed = _parse_one(
        cursor, projection_sql(definition.select, definition.where), "select/where"
    )
    expected = dict(without_locations(template))
    if select is not None:
        expected["select_list"] = expected["select_list"][:1] + without_locations(select)
    if where is not None:
        expected["where_clause"] = without_locations(where[0])
    if without_locations(composed) != expected:
        raise invalid(
            "select/where change the statement around them (a comment or an unbalanced "
            "quote or parenthesis?): each must be complete on its own"
        )


def _check_partitions(cursor: duckdb.DuckDBPyConnection, entries: list[str]) -> None:
    if not entries:
        return
    trees = []
    for entry in entries:
        node = _parse_one(cursor, f"SELECT {entry}", "partition_by")
        expressions = node.get("select_list") or []
        if (
            len(expressions) != 1
            or without_locations({k: node.get(k) for k in _SELECT_LIST_ONLY}) != _SELECT_LIST_ONLY
        ):
            raise invalid(f"{_PARTITION_FORM}, one per entry; got {entry!r}")
        if not _is_partition(expressions[0]):
            raise invalid(f"{_PARTITION_FORM}; got {entry!r}")
        trees.append(without_locations(expressions[0]))
    # apply.py joins the entries with ", ": the joined text must mean the same entries.
    joined = _parse_one(cursor, f"SELECT {', '.join(entries)}", "partition_by")
    if without_locations(joined.get("select_list")) != trees:
        raise invalid(f"{_PARTITION_FORM}, each complete on its own (no comments)")


def _is_partition(expression: Tree) -> bool:
    if expression.get("alias"):
        return False
    if _is_column(expression):
        return True
    if (
        expression.get("class") != "FUNCTION"
        or expression.get("schema")
        or expression.get("catalog")
    ):
        return False
    if expression.get("distinct") or expression.get("filter") or _orders(expression):
        return False
    name = str(expression.get("function_name", "")).lower()
    arguments: list[Tree] = expression.get("children") or []
    if name in _PARTITION_TRANSFORMS:
        return len(arguments) == 1 and _is_column(arguments[0])
    if name == "bucket":
        return (
            len(arguments) == 2
            and arguments[0].get("class") == "CONSTANT"
            and _is_column(arguments[1])
        )
    return False


def _is_column(expression: Tree) -> bool:
    names = expression.get("column_names")
    return (
        expression.get("class") == "COLUMN_REF"
        and not expression.get("alias")
        and isinstance(names, list)
        and len(names) == 1
    )


def _orders(expression: Tree) -> Any:
    return (expression.get("order_bys") or {}).get("orders")


def projection_refusal(
    cursor: duckdb.DuckDBPyConnection, rules: FunctionRules, definition: Materialization
) -> str | None:
    """Why a stored definition's fragments would be refused today, or None (used at start:
    a definition stored before these checks must not run unchecked)."""
    try:
        check_projection(cursor, rules, definition)
    except S2Error as error:
        return error.message
    return None
