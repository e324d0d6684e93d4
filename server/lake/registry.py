"""Persists materialization definitions and checkpoints in the lake's `s2s` schema.

Every function takes the writer thread's cursor: the lake has one writer, so these never race
with a batch commit of this server (see connection.py for the tables and the exactly-once
invariant). With a catalog shared by several servers, another server's commit can conflict
with a change of a definition; the change is then made again (`CONFLICT_ATTEMPTS_MAX`).

Reading them back never trusts them: a row the server did not write as it writes them (a
definition that is not valid JSON, or not what a declaration would produce, a missing name, a
name stored twice, a checkpoint stored twice or without its sequence number) is returned as
`Damaged`, with the reason, instead of stopping the server from starting.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import duckdb

from s2s.errors import S2Error
from server.lake.connection import (
    CATALOG_ALIAS,
    CHECKPOINT_COLUMNS,
    MATERIALIZATION_COLUMNS,
    META_SCHEMA,
    fetch_one,
)
from server.lake.data_files import DataFiles, LakeConflict, transaction
from server.lake.definition import Materialization

T = TypeVar("T")

CONFLICT_ATTEMPTS_MAX = 5
"""How often a change of a definition is tried while other servers' commits conflict with
it. Each attempt takes milliseconds and a materialization commits every `linger_s` or so."""


@dataclass(frozen=True)
class Checkpoint:
    last_seq_num: int
    """The last sequence number whose effects are committed; -1 before the first commit."""
    rows_applied: int
    rows_rejected: int


@dataclass(frozen=True)
class Damaged:
    """A stored materialization that cannot run; `name` is None if even that is unreadable."""

    name: str | None
    reason: str


@dataclass(frozen=True)
class Loaded:
    materializations: list[tuple[Materialization, Checkpoint]] = field(default_factory=list)
    damaged: list[Damaged] = field(default_factory=list)


def load_all(cursor: duckdb.DuckDBPyConnection) -> Loaded:
    definitions = cursor.execute(
        f"SELECT name, definition FROM {META_SCHEMA}.materializations ORDER BY name"
    ).fetchall()
    checkpoints: dict[Any, list[tuple[Any, Any, Any]]] = collections.defaultdict(list)
    for name, last, applied, rejected in cursor.execute(
        f"SELECT name, last_seq_num, rows_applied, rows_rejected FROM {META_SCHEMA}.checkpoints"
    ).fetchall():
        checkpoints[name].append((last, applied, rejected))
    names = collections.Counter(name for name, _ in definitions)
    loaded = Loaded()
    for name, text in definitions:
        if not isinstance(name, str):
            loaded.damaged.append(Damaged(None, "a row without a name"))
            continue
        if names[name] > 1:
            loaded.damaged.append(Damaged(name, f"{names[name]} definitions are stored"))
            continue
        try:
            definition = Materialization.from_json(str(text))
        # Any failure, whatever its type, means the same thing here: this row cannot run.
        except Exception as error:
            loaded.damaged.append(Damaged(name, f"its definition is unreadable: {error}"))
            continue
        if definition.name != name:
            loaded.damaged.append(Damaged(name, f"its definition names {definition.name!r}"))
            continue
        stored = checkpoints.get(name, [])
        if len(stored) > 1:
            loaded.damaged.append(Damaged(name, f"{len(stored)} checkpoints are stored"))
            continue
        if not stored:  # as stored before the first commit
            loaded.materializations.append((definition, Checkpoint(-1, 0, 0)))
            continue
        ((last, applied, rejected),) = stored
        if not isinstance(last, int):
            loaded.damaged.append(Damaged(name, "its checkpoint has no sequence number"))
            continue
        checkpoint = Checkpoint(last, int(applied or 0), int(rejected or 0))
        loaded.materializations.append((definition, checkpoint))
    return loaded


@dataclass(frozen=True)
class Progress:
    """What a materialization's commits did after a checkpoint, as another server sees them."""

    checkpoint: Checkpoint
    rejections: tuple[tuple[int, str], ...]
    """`(seq_num, reason)` of the dead letters after the checkpoint asked about, up to this
    one, in sequence order."""
    snapshot_id: int | None
    """A snapshot holding this checkpoint's rows (the current one when read); None if the
    checkpoint did not move."""


def progress(cursor: duckdb.DuckDBPyConnection, name: str, after: int) -> Progress | None:
    """The stored checkpoint, and what the commits past `after` rejected; None if the
    materialization is not stored."""
    stored = checkpoint(cursor, name)
    if stored is None or stored.last_seq_num <= after:
        return None if stored is None else Progress(stored, (), None)
    rejected = cursor.execute(
        f"SELECT seq_num, reason FROM {META_SCHEMA}.dead_letters WHERE materialization = $name "
        "AND seq_num > $after AND seq_num <= $last ORDER BY seq_num",
        {"name": name, "after": after, "last": stored.last_seq_num},
    ).fetchall()
    snapshot = fetch_one(cursor, f"SELECT id FROM {CATALOG_ALIAS}.current_snapshot()")
    return Progress(
        stored,
        tuple((int(seq_num), str(reason)) for seq_num, reason in rejected),
        int(snapshot[0]) if snapshot else None,
    )


def checkpoint(cursor: duckdb.DuckDBPyConnection, name: str) -> Checkpoint | None:
    row = fetch_one(
        cursor,
        f"SELECT last_seq_num, rows_applied, rows_rejected FROM {META_SCHEMA}.checkpoints "
        "WHERE name = $name",
        {"name": name},
    )
    return None if row is None else Checkpoint(int(row[0]), int(row[1]), int(row[2]))


def _retrying(change: Callable[[], T]) -> T:
    """`change` (one transaction), made again while another server's commit conflicts with
    it; after `CONFLICT_ATTEMPTS_MAX` conflicts, `unavailable` (the client may retry)."""
    for _ in range(CONFLICT_ATTEMPTS_MAX - 1):
        try:
            return change()
        except LakeConflict:
            pass
    try:
        return change()
    except LakeConflict as error:
        raise S2Error(
            "unavailable",
            f"the lake's catalog is busy with other servers' commits ({error}); try again",
        ) from None


def insert(
    cursor: duckdb.DuckDBPyConnection, files: DataFiles, definition: Materialization
) -> bool:
    """Store a new definition with an empty checkpoint; False if the name is taken."""
    return _retrying(lambda: _insert(cursor, files, definition))


def _insert(
    cursor: duckdb.DuckDBPyConnection, files: DataFiles, definition: Materialization
) -> bool:
    with transaction(cursor, files):
        # Rewrites the row every declaration rewrites: of two at once, DuckLake refuses the
        # second's COMMIT, and made again it finds the name taken (connection.py).
        cursor.execute(f"UPDATE {META_SCHEMA}.declarations SET declared = declared + 1")
        taken = fetch_one(
            cursor,
            f"SELECT count(*) FROM {META_SCHEMA}.materializations WHERE name = $name",
            {"name": definition.name},
        )
        if taken and taken[0]:
            return False
        cursor.execute(
            f"INSERT INTO {META_SCHEMA}.materializations ({MATERIALIZATION_COLUMNS}) "
            "VALUES ($name, $definition)",
            {"name": definition.name, "definition": definition.to_json()},
        )
        cursor.execute(
            f"DELETE FROM {META_SCHEMA}.checkpoints WHERE name = $name", {"name": definition.name}
        )
        cursor.execute(
            f"INSERT INTO {META_SCHEMA}.checkpoints ({CHECKPOINT_COLUMNS}) "
            "VALUES ($name, -1, 0, 0, now())",
            {"name": definition.name},
        )
    return True


def update(
    cursor: duckdb.DuckDBPyConnection, files: DataFiles, definition: Materialization
) -> None:
    def change() -> None:
        with transaction(cursor, files):
            cursor.execute(
                f"UPDATE {META_SCHEMA}.materializations SET definition = $definition "
                "WHERE name = $name",
                {"name": definition.name, "definition": definition.to_json()},
            )

    _retrying(change)


def delete(cursor: duckdb.DuckDBPyConnection, files: DataFiles, name: str) -> None:
    """Forget the definition and its checkpoint; the table and its dead letters stay."""

    def change() -> None:
        with transaction(cursor, files):
            for table in ("materializations", "checkpoints"):
                cursor.execute(
                    f"DELETE FROM {META_SCHEMA}.{table} WHERE name = $name", {"name": name}
                )

    _retrying(change)
