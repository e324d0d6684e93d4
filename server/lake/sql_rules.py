"""SQL as DuckDB parsed it, and the one rule for which functions user SQL may call.

User SQL reaches DuckDB in two places: `/v1/lake/query` (sql_guard.py) and a materialization's
`select`/`where` (projection.py). Both decide on DuckDB's own parse tree
(`json_serialize_sql`), never on the text: a keyword can hide in a string, a comment or a
subquery, a parse tree cannot.

The function rule (`FunctionRules`) refuses a scalar function, wherever it is called, if:

- it shows the server's configuration: `current_setting` (settings hold the data directory,
  the extension and temp directories), `getenv`, `getvariable`;
- it binds SQL text it is handed (`json_serialize_plan`): binding a file function reads the
  file, so it would run what the guard refused, out of the guard's sight;
- it raises a DuckDB internal error on a DuckLake transaction (`txid_current`): internal
  errors are DuckDB's own bugs, and some invalidate the whole database;
- DuckDB reports it has side effects (`duckdb_functions().has_side_effects`): `nextval`,
  `setseed`, `write_log`, `sleep_ms` (holds a query thread) ... Exceptions: the functions
  that only draw random values (`random`, `uuid` ...), which change nothing outside the
  query and are what sampling needs, and `error`, which only fails the query;
- it is a macro whose body (read from `duckdb_functions()`, expanded transitively) reads a
  table or calls a refused function, e.g. `get_block_size` (`pragma_database_size`):
  macros expand when the statement is bound, after the parse tree was checked.

The list is built from the running DuckDB at start, so functions added by an upgrade or an
extension are judged by the same rule.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import duckdb

from server.lake.connection import fetch_one

Tree = dict[str, Any]

_DENIED_BY_NAME = {
    "current_setting": "it shows server settings, which hold absolute paths",
    "getenv": "it shows the server's environment",
    "getvariable": "it shows server variables",
    "json_serialize_plan": "it binds the SQL it is given, out of this check's sight",
    "txid_current": "it fails inside DuckDB on the lake's transactions (an internal error)",
}
_RANDOM_VALUES = frozenset({"random", "uuid", "gen_random_uuid", "uuidv4", "uuidv7", "error"})
"""Flagged as having side effects by DuckDB, but they only draw a random value (or, `error`,
fail the query): nothing outside the query changes."""
_SIDE_EFFECTS = "it has side effects"
_MACROS_ROUNDS_MAX = 16
"""Macros calling macros: the closure is recomputed until stable; DuckDB's own macros nest
two or three deep, so hitting this bound means something is wrong with the input."""


class SqlSyntaxError(Exception):
    """DuckDB could not parse the text; the message is DuckDB's."""


class NotSerializable(SqlSyntaxError):
    """DuckDB parsed the text but cannot show its parse tree (a PRAGMA parses as a SELECT of
    a pragma function, but is no SELECT it can serialize)."""


def parse(cursor: duckdb.DuckDBPyConnection, sql: str) -> list[Tree]:
    """The parse trees of the statements in `sql` (SELECT statements only: DuckDB serializes
    no other kind)."""
    row = fetch_one(cursor, "SELECT json_serialize_sql($sql)", {"sql": sql})
    assert row is not None
    try:
        tree = json.loads(str(row[0]))
    except RecursionError:
        raise SqlSyntaxError("the statement nests too deeply") from None
    if tree.get("error"):
        message = str(tree.get("error_message") or "the statement does not parse")
        if tree.get("error_type") == "not implemented":
            raise NotSerializable(message)
        raise SqlSyntaxError(message)
    statements: list[Tree] = [statement["node"] for statement in tree["statements"]]
    return statements


def nodes(tree: Any) -> Iterator[Tree]:
    """Every object in a parse tree or plan, at any depth (iteratively: a deep tree must not
    exhaust Python's stack)."""
    stack = [tree]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def without_locations(tree: Any) -> Any:
    """A copy of a parse tree without its text offsets, to compare the trees of two texts
    (iteratively, like `nodes`)."""
    copied: list[Any] = [None]
    stack: list[tuple[Any, Any, Any]] = [(tree, copied, 0)]
    while stack:
        item, parent, key = stack.pop()
        copy: Any = item
        if isinstance(item, dict):
            copy = {}
            stack.extend((v, copy, k) for k, v in item.items() if k != "query_location")
        elif isinstance(item, list):
            copy = [None] * len(item)
            stack.extend((v, copy, i) for i, v in enumerate(item))
        parent[key] = copy
    return copied[0]


def function_calls(tree: Any) -> Iterator[str]:
    """The lower-case name of every function called in a tree (scalar, aggregate, window and
    the function of a table-function reference)."""
    for node in nodes(tree):
        if node.get("class") in ("FUNCTION", "WINDOW") and isinstance(
            node.get("function_name"), str
        ):
            yield node["function_name"].lower()


def reads_a_table(tree: Any) -> bool:
    """Whether a tree has a subquery or a table reference of any kind."""
    return any(
        node.get("class") == "SUBQUERY"
        or node.get("type") in ("BASE_TABLE", "TABLE_FUNCTION", "SUBQUERY", "JOIN")
        for node in nodes(tree)
    )


@dataclass(frozen=True)
class FunctionRules:
    denied: dict[str, str]
    """Refused scalar functions (lower case) and why."""

    @classmethod
    def load(cls, cursor: duckdb.DuckDBPyConnection) -> FunctionRules:
        denied = dict(_DENIED_BY_NAME)
        for (name,) in cursor.execute(
            "SELECT DISTINCT function_name FROM duckdb_functions() WHERE has_side_effects"
        ).fetchall():
            if str(name).lower() not in _RANDOM_VALUES:
                denied.setdefault(str(name).lower(), _SIDE_EFFECTS)
        macros: dict[str, list[Any]] = {}  # a macro may have overloads: one body each
        for name, definition in cursor.execute(
            "SELECT function_name, macro_definition FROM duckdb_functions() "
            "WHERE function_type = 'macro' AND macro_definition IS NOT NULL"
        ).fetchall():
            try:
                body = parse(cursor, f"SELECT {definition}")
            except SqlSyntaxError:
                denied[str(name).lower()] = "its definition could not be checked"
                continue
            macros.setdefault(str(name).lower(), []).append(body)
        for _ in range(_MACROS_ROUNDS_MAX):
            added = False
            for name, bodies in macros.items():
                if name in denied:
                    continue
                called = next((f for f in function_calls(bodies) if f in denied), None)
                if reads_a_table(bodies):
                    denied[name] = "it reads the catalog when it is expanded"
                    added = True
                elif called is not None:
                    denied[name] = f"it calls {called}(), which is refused"
                    added = True
            if not added:
                break
        return cls(denied)

    def refusal(self, tree: Any) -> str | None:
        """Why a tree may not run (the first refused call), or None."""
        for name in function_calls(tree):
            reason = self.denied.get(name)
            if reason is not None:
                return f"function {name}() is not allowed: {reason}"
        return None
