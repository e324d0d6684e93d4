"""Persists materialization definitions and checkpoints in the lake's `s2s` schema.

Every function takes the writer thread's cursor: the lake has one writer, so these never race
with a batch commit (see connection.py for the tables and the exactly-once invariant).
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from server.lake.connection import META_SCHEMA
from server.lake.definition import Materialization


@dataclass(frozen=True)
class Checkpoint:
    last_seq_num: int
    """The last sequence number whose effects are committed; -1 before the first commit."""
    rows_applied: int
    rows_rejected: int


def load_all(cursor: duckdb.DuckDBPyConnection) -> list[tuple[Materialization, Checkpoint]]:
    rows = cursor.execute(
        f"SELECT m.definition, c.last_seq_num, c.rows_applied, c.rows_rejected "
        f"FROM {META_SCHEMA}.materializations AS m LEFT JOIN {META_SCHEMA}.checkpoints AS c "
        "USING (name) ORDER BY m.name"
    ).fetchall()
    return [
        (
            Materialization.from_json(str(definition)),
            Checkpoint(
                -1 if last is None else int(last),
                int(applied or 0),
                int(rejected or 0),
            ),
        )
        for definition, last, applied, rejected in rows
    ]


def checkpoint(cursor: duckdb.DuckDBPyConnection, name: str) -> Checkpoint | None:
    row = cursor.execute(
        f"SELECT last_seq_num, rows_applied, rows_rejected FROM {META_SCHEMA}.checkpoints "
        "WHERE name = $name",
        {"name": name},
    ).fetchone()
    return None if row is None else Checkpoint(int(row[0]), int(row[1]), int(row[2]))


def insert(cursor: duckdb.DuckDBPyConnection, definition: Materialization) -> bool:
    """Store a new definition with an empty checkpoint; False if the name is taken."""
    cursor.execute("BEGIN")
    try:
        taken = cursor.execute(
            f"SELECT count(*) FROM {META_SCHEMA}.materializations WHERE name = $name",
            {"name": definition.name},
        ).fetchone()
        if taken and taken[0]:
            cursor.execute("ROLLBACK")
            return False
        cursor.execute(
            f"INSERT INTO {META_SCHEMA}.materializations VALUES ($name, $definition)",
            {"name": definition.name, "definition": definition.to_json()},
        )
        cursor.execute(
            f"DELETE FROM {META_SCHEMA}.checkpoints WHERE name = $name", {"name": definition.name}
        )
        cursor.execute(
            f"INSERT INTO {META_SCHEMA}.checkpoints VALUES ($name, -1, 0, 0, now())",
            {"name": definition.name},
        )
        cursor.execute("COMMIT")
    except BaseException:
        cursor.execute("ROLLBACK")
        raise
    return True


def update(cursor: duckdb.DuckDBPyConnection, definition: Materialization) -> None:
    cursor.execute(
        f"UPDATE {META_SCHEMA}.materializations SET definition = $definition WHERE name = $name",
        {"name": definition.name, "definition": definition.to_json()},
    )


def delete(cursor: duckdb.DuckDBPyConnection, name: str) -> None:
    """Forget the definition and its checkpoint; the table and its dead letters stay."""
    cursor.execute("BEGIN")
    try:
        for table in ("materializations", "checkpoints"):
            cursor.execute(f"DELETE FROM {META_SCHEMA}.{table} WHERE name = $name", {"name": name})
        cursor.execute("COMMIT")
    except BaseException:
        cursor.execute("ROLLBACK")
        raise
