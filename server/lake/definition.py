"""What a materialization is: a source stream, a target table, a mode, and an optional SQL
projection; validated once, when it is declared, so a running one never meets a bad definition.

The projection sees one row per record with the columns `seq_num` (BIGINT), `timestamp`
(BIGINT, milliseconds), `headers` (MAP(VARCHAR, VARCHAR)) and `body` (JSON), and is a DuckDB
select list (`select`) and predicate (`where`): that covers dropping, masking, renaming,
deriving and sampling. Without `select`, each top-level field of the JSON object becomes a
column.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from types import NoneType
from typing import TypeAlias

from s2s import names
from s2s.errors import S2Error, invalid
from server.lake.connection import CATALOG_ALIAS, META_SCHEMA

MODES = ("append", "merge")
INGEST_BASIN = "lake-ingest"
"""Streams written by `/v2/stream` live here, one per table, named `schema.table`."""

StreamCheck: TypeAlias = Callable[[str, str], None]
"""Called with a basin and stream the lake is about to use for a caller; raises (an `S2Error`,
`permission_denied`) if that caller may not."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
NAME_RULE = (
    "name must be 1-128 characters: letters, digits, '_', '.', '-', starting with a letter or digit"
)
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_SQL_FRAGMENT_BYTES_MAX = 16 * 1024


@dataclass(frozen=True)
class MaterializationSpec:
    """A declaration as a client makes it, before it is checked (`build_materialization`).

    Each frontend builds one from its own form (HTTP JSON, gRPC `MaterializationSpec`); unset
    optional fields are None, or empty, which means the same: the source defaults to the
    table's ingest stream, the mode to append."""

    name: str
    table: str
    """`schema.table` or `lake.schema.table`."""
    basin: str | None = None
    stream: str | None = None
    mode: str | None = None
    primary_key: str | None = None
    """The column merge mode upserts on; other modes ignore it."""
    select: str | None = None
    where: str | None = None
    partition_by: tuple[str, ...] = ()
    create_table: bool = False
    paused: bool = False


@dataclass(frozen=True)
class Materialization:
    name: str
    basin: str
    stream: str
    target_schema: str
    target_table: str
    mode: str = "append"
    primary_key: str | None = None
    select: str | None = None
    where: str | None = None
    partition_by: list[str] = field(default_factory=list)
    create_table: bool = False
    paused: bool = False
    owner: str = ""
    """The id of the server that declared it: with a shared catalog, a server whose stream
    store is its own runs only its own materializations, because their source streams live
    there. Servers that share the stream store too ignore it (materializations.py)."""

    @property
    def target(self) -> str:
        return f"{self.target_schema}.{self.target_table}"

    @property
    def source(self) -> str:
        return f"{self.basin}/{self.stream}"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @staticmethod
    def from_json(text: str) -> Materialization:
        """A stored definition, checked as a declaration is: raises ValueError if it is not
        exactly what `build_materialization` would have stored."""
        data = json.loads(text)
        if not isinstance(data, dict) or set(data) != set(_STORED_TYPES):
            raise ValueError(f"expected a JSON object with the fields {sorted(_STORED_TYPES)}")
        for name, expected in _STORED_TYPES.items():
            if not isinstance(data[name], expected):
                raise ValueError(f"{name} has the wrong type ({type(data[name]).__name__})")
        stored = Materialization(**data)
        if not all(isinstance(part, str) for part in stored.partition_by):
            raise ValueError("partition_by must hold strings")
        spec = MaterializationSpec(
            name=stored.name,
            table=f"{stored.target_schema}.{stored.target_table}",
            basin=stored.basin,
            stream=stored.stream,
            mode=stored.mode,
            primary_key=stored.primary_key,
            select=stored.select,
            where=stored.where,
            partition_by=tuple(stored.partition_by),
            create_table=stored.create_table,
            paused=stored.paused,
        )
        try:
            rebuilt = build_materialization(spec, owner=stored.owner)
        except S2Error as error:
            raise ValueError(error.message) from None
        if rebuilt != stored:
            raise ValueError("its fields are not what a declaration would store")
        return stored

    def with_paused(self, paused: bool) -> Materialization:
        return replace(self, paused=paused)


_STORED_TYPES: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "basin": str,
    "stream": str,
    "target_schema": str,
    "target_table": str,
    "mode": str,
    "primary_key": (str, NoneType),
    "select": (str, NoneType),
    "where": (str, NoneType),
    "partition_by": list,
    "create_table": bool,
    "paused": bool,
    "owner": str,
}
"""What each stored field must be: a definition is read back from the lake, where anything
may have been written, and is checked before it is trusted (`from_json`)."""
assert set(_STORED_TYPES) == {f.name for f in fields(Materialization)}

TABLE_FORM = (
    "'schema.table' or 'lake.schema.table', each part a letter or underscore followed by up "
    "to 62 letters, digits or underscores"
)


class TableNameError(ValueError):
    """A table name a client may not use; the message says why (without the name)."""


def parse_table(table: str) -> tuple[str, str]:
    """(schema, table) from `schema.table` or `lake.schema.table`.

    Every table name a client sends (ingest, materialization targets, dead letters) comes
    through here, so this is where the lake's own schema is fenced off: ingest into
    `s2s.materializations` would make the next start fail, and a column added to
    `s2s.checkpoints` broke every later declaration. DuckDB compares names without case,
    so `S2S` is the same schema.
    """
    parts = table.split(".")
    if len(parts) == 3 and parts[0].lower() == CATALOG_ALIAS:
        parts = parts[1:]
    if len(parts) != 2 or not all(_IDENTIFIER.fullmatch(part) for part in parts):
        raise TableNameError(f"expected {TABLE_FORM}")
    if parts[0].lower() == META_SCHEMA:
        raise TableNameError(
            f"schema {META_SCHEMA!r} holds the server's own state (materializations, "
            "checkpoints, dead letters) and takes no rows from clients; use another schema"
        )
    return parts[0], parts[1]


def split_table(table: str) -> tuple[str, str]:
    try:
        return parse_table(table)
    except TableNameError as error:
        raise invalid(f"table {table!r}: {error}") from None


def _optional_sql(value: str | None, what: str) -> str | None:
    if not value:
        return None
    if len(value.encode()) > _SQL_FRAGMENT_BYTES_MAX:
        raise invalid(f"{what} must be at most {_SQL_FRAGMENT_BYTES_MAX} bytes")
    if ";" in value:
        raise invalid(f"{what} must be a single SQL expression list, without ';'")
    return value


def build_materialization(spec: MaterializationSpec, owner: str = "") -> Materialization:
    """Check a declaration and build the definition.

    The SQL fragments are checked for syntax against the projection's input columns by the
    lake (`Materializations.create`), which has a DuckDB connection.
    """
    if not _NAME.fullmatch(spec.name):
        raise invalid(NAME_RULE)
    schema, table_name = split_table(spec.table)
    basin = spec.basin or INGEST_BASIN
    stream = spec.stream or f"{schema}.{table_name}"
    names.validate_basin_name(basin)
    names.validate_stream_name(stream)
    mode = spec.mode or "append"
    if mode not in MODES:
        raise invalid_mode(mode)
    primary_key = spec.primary_key if mode == "merge" else None
    if mode == "merge" and not primary_key:
        raise invalid("merge mode needs primary_key: the one column to upsert on")
    for part in spec.partition_by:
        _optional_sql(part, "partition_by")
    return Materialization(
        name=spec.name,
        basin=basin,
        stream=stream,
        target_schema=schema,
        target_table=table_name,
        mode=mode,
        primary_key=primary_key,
        select=_optional_sql(spec.select, "select"),
        where=_optional_sql(spec.where, "where"),
        partition_by=list(spec.partition_by),
        create_table=spec.create_table,
        paused=spec.paused,
        owner=owner,
    )


def invalid_mode(mode: object) -> S2Error:
    return invalid(f"mode must be one of {', '.join(MODES)}, not {mode!r}")


def not_found(name: str) -> S2Error:
    return S2Error("materialization_not_found", f"materialization {name!r} does not exist")
