"""Applies one batch of stream records to a materialization's table in one DuckLake transaction.

Per batch, not per record: the records go to DuckDB as one Arrow table; validation, the
projection, type casts and the write are set-based SQL. The steps:

1. stage: each record's body as text; records that are not UTF-8 or not JSON (or, without a
   projection, not a JSON object) get a rejection reason.
2. shape: without a projection, the top-level keys become columns (new keys are typed by
   coercion.infer_type); with one, the user's select list and predicate run over the staged
   records. A projection that fails at run time is retried record by record, so only the
   records it fails on are rejected.
3. cast: every value is cast to its column's type under coercion.py's rules; a value that
   does not fit rejects its record, naming the column.
4. commit, in ONE transaction: create or evolve the table, insert (append) or upsert (merge,
   latest record per key wins), write rejected records to `s2s.dead_letters`, and advance the
   checkpoint to the batch's last sequence number, if it still is the one the batch was read
   after (else `LakeConflict`: another runner applied it). Either all of it is in the lake or
   none.

Steps 1-3 use temp tables outside the transaction: a failing statement inside a DuckDB
transaction aborts it, and step 2's fallback needs to survive failures. They write nothing to
the lake, so they may run while another cursor commits the previous batch (`prepare`,
`commit`); exactly once rests on step 4 alone.
"""

from __future__ import annotations

import itertools
import json
import threading
from dataclasses import dataclass

import duckdb
import pyarrow as pa

from server.lake import coercion
from server.lake.connection import CATALOG_ALIAS, DEAD_LETTER_COLUMNS, META_SCHEMA, fetch_one
from server.lake.data_files import DataFiles, LakeConflict, transaction
from server.lake.definition import Materialization
from server.lake.sqltext import first_line, quote_identifier, quote_literal

_STAGE = "s2s_stage"
_REJECTS = "s2s_rejects"
_CHECKED = "s2s_checked"
_SEQ = "__s2s_seq_num"
"""The record's sequence number in the shaped and typed tables: a private name, so a record
field or a projected column may be called `seq_num` too."""
_SHAPED = "s2s_shaped"
_TYPED = "s2s_typed"
_INCOMING = "s2s_incoming"
_PROJECTION_INPUT = (
    f"(SELECT seq_num, timestamp, headers, body::JSON AS body FROM {_STAGE}) AS records"
)
_NESTED_PREFIXES = ("STRUCT", "MAP", "UNION")


@dataclass(frozen=True)
class RecordBatch:
    """Records read from the source stream, in order, command records already dropped, as the
    Arrow table DuckDB reads: `seq_num`, `timestamp`, `body` (text; NULL if not UTF-8), `raw`
    (the bytes, for dead letters) and, when asked for, `headers`.

    Built once (`of`), off the preparer's path, and kept if the batch is prepared again."""

    table: pa.Table
    last_seq_num: int
    """The last sequence number this batch covers (command records included)."""
    after_seq_num: int
    """The checkpoint this batch continues from: its commit applies only if the stored
    checkpoint still says so (step 4)."""

    @classmethod
    def of(
        cls,
        seq_nums: list[int],
        timestamps: list[int],
        bodies: list[bytes],
        headers: list[list[tuple[str, str]]] | None,
        last_seq_num: int,
        after_seq_num: int,
    ) -> RecordBatch:
        table = _arrow_input(seq_nums, timestamps, bodies, headers)
        return cls(table, last_seq_num, after_seq_num)

    @property
    def has_headers(self) -> bool:
        return "headers" in self.table.column_names


@dataclass(frozen=True)
class ApplyResult:
    last_seq_num: int
    rows_applied: int
    rejections: tuple[tuple[int, str], ...]
    """The records this batch sent to the dead letters, `(seq_num, reason)` in sequence order:
    an ingest request waiting for its rows names its rejected ones from these."""
    snapshot_id: int | None

    @property
    def rows_rejected(self) -> int:
        return len(self.rejections)


@dataclass(frozen=True)
class Prepared:
    """A batch staged, shaped and cast on one cursor (steps 1-3), ready to commit there."""

    batch: RecordBatch
    columns: dict[str, str]
    """The table's columns when the batch was shaped (empty: no table yet)."""
    new_columns: dict[str, str]
    """Columns the batch adds (or, with no table yet, creates it with)."""

    @property
    def all_columns(self) -> dict[str, str]:
        return {**self.columns, **self.new_columns}


class TableMissing(Exception):
    """The target table does not exist and the materialization may not create it."""


def _arrow_input(
    seq_nums: list[int],
    timestamps: list[int],
    bodies: list[bytes],
    headers: list[list[tuple[str, str]]] | None,
) -> pa.Table:
    offsets = pa.array([0, *itertools.accumulate(map(len, bodies))], pa.int64())
    data = pa.py_buffer(b"".join(bodies))
    raw = pa.LargeBinaryArray.from_buffers(
        pa.large_binary(), len(bodies), [None, offsets.buffers()[1], data]
    )
    try:
        text = raw.cast(pa.large_string())
    except pa.ArrowInvalid:
        text = pa.array([_utf8_or_none(body) for body in bodies], pa.large_string())
    columns = {
        "seq_num": pa.array(seq_nums, pa.int64()),
        "timestamp": pa.array(timestamps, pa.int64()),
        "body": text,
        "raw": raw,
    }
    if headers is not None:
        columns["headers"] = pa.array(headers, pa.map_(pa.string(), pa.string()))
    return pa.table(columns)


def projection_sql(select: str | None, where: str | None, seq_filter: str = "") -> str:
    """The statement that projects staged records: the user's select list and predicate, each
    on lines of its own, so a trailing `--` comment ends with its fragment. projection.py
    checks that the fragments compose into exactly this shape."""
    predicate = f"(\n{where}\n)" if where else "true"
    if seq_filter:
        predicate = f"{predicate} AND {seq_filter}"
    return (
        f"SELECT records.seq_num AS {_SEQ}, \n{select or 'records.*'}\n "
        f"FROM {_PROJECTION_INPUT} WHERE {predicate}"
    )


def _utf8_or_none(body: bytes) -> str | None:
    try:
        return body.decode()
    except UnicodeDecodeError:
        return None


def _alias(index: int) -> str:
    """Cast columns get private names, so they never clash with a record's own field names."""
    return f"__s2s_c{index}"


def _column_type_for(source_type: str) -> str:
    upper = source_type.upper()
    if upper.startswith(_NESTED_PREFIXES) or upper.endswith("]"):
        return "JSON"
    return source_type


class Applier:
    """Applies batches for one materialization on one DuckDB cursor, used by one thread at a
    time: `apply`, or `prepare` then `commit` (which a runner may run on different threads, so
    two appliers on two cursors overlap one batch's steps 1-3 with the previous commit)."""

    def __init__(
        self, cursor: duckdb.DuckDBPyConnection, files: DataFiles, definition: Materialization
    ) -> None:
        self._cursor = cursor
        self._files = files
        self._definition = definition
        self._temporaries: dict[str, str] = {}
        """Temp objects this batch created (name → TABLE or VIEW), in creation order."""
        self._registered = False
        # A stopped runner's prepare or commit may still be running on its thread when the
        # runner restarts: whoever comes next waits for it instead of sharing the cursor.
        self._lock = threading.Lock()
        self._target = (
            f"{CATALOG_ALIAS}.{quote_identifier(definition.target_schema)}."
            f"{quote_identifier(definition.target_table)}"
        )

    def close(self) -> None:
        """Close this applier's cursor once a prepare or commit still running on it ends."""
        with self._lock:
            self._cursor.close()

    def uses_headers(self) -> bool:
        text = f"{self._definition.select or ''} {self._definition.where or ''}".lower()
        return "headers" in text

    def check_projection(self) -> None:
        """Compile the projection against an empty input: a syntax or name error raises."""
        cursor = self._cursor
        cursor.execute(
            f"CREATE OR REPLACE TEMP TABLE {_STAGE} (seq_num BIGINT, timestamp BIGINT, "
            "headers MAP(VARCHAR, VARCHAR), body VARCHAR)"
        )
        try:
            cursor.execute(f"SELECT * FROM ({self._projection_sql()}) LIMIT 0")
        finally:
            cursor.execute(f"DROP TABLE IF EXISTS {_STAGE}")

    def apply(self, batch: RecordBatch) -> ApplyResult:
        """Steps 1-4 back to back."""
        return self.commit(self.prepare(batch), recheck=False)

    def prepare(self, batch: RecordBatch, columns: dict[str, str] | None = None) -> Prepared:
        """Steps 1-3: temp tables on this applier's cursor, nothing in the lake yet.

        `columns`: the table's columns as they will be once the batches before this one have
        committed (the runner knows them while those commits are still running); None: as
        they are now. `commit` checks them, so a wrong guess costs time, never correctness.
        """
        with self._lock:
            return self._prepare(batch, columns)

    def _prepare(self, batch: RecordBatch, columns: dict[str, str] | None = None) -> Prepared:
        self._discard()  # what an abandoned batch left (its runner was stopped mid-way)
        self._cursor.register(_INCOMING, batch.table)
        self._registered = True
        try:
            self._stage(batch.has_headers)
            if columns is None:
                columns = self._table_columns()
            if self._definition.select is None:
                new_columns = self._shape_json(columns)
            else:
                new_columns = self._shape_projection(columns)
            prepared = Prepared(batch, columns, new_columns)
            self._cast(prepared.all_columns)
        except BaseException:
            self._discard()
            raise
        return prepared

    def commit(self, prepared: Prepared, recheck: bool = True) -> ApplyResult:
        """Step 4, for the batch `prepare` left on this cursor.

        With `recheck`, the batch was prepared while another commit may have changed the
        table (a pipelined runner): if its columns are not those the batch was shaped for, it
        is prepared again first, so a new field is never added twice, nor cast to a type the
        table does not have, nor written to a table that was never created.
        """
        with self._lock:
            try:
                if recheck and self._table_columns() != prepared.columns:
                    prepared = self._prepare(prepared.batch)
                return self._commit(prepared)
            finally:
                self._discard()

    def _discard(self) -> None:
        """Drop what the batch in hand created on this cursor, newest first (views depend on
        what was created before them), and the registered Arrow input."""
        for name, kind in reversed(self._temporaries.items()):
            self._cursor.execute(f"DROP {kind} IF EXISTS {name}")
        self._temporaries.clear()
        if self._registered:
            self._cursor.unregister(_INCOMING)
            self._registered = False

    def _create_temp(self, kind: str, name: str, query: str) -> None:
        self._cursor.execute(f"CREATE OR REPLACE TEMP {kind} {name} AS {query}")
        self._temporaries[name] = kind

    # --- 1. stage ------------------------------------------------------------------------

    def _stage(self, has_headers: bool) -> None:
        """Classify each record once (one JSON parse); the bodies stay in the Arrow table.

        `s2s_checked` holds one reason per record, in the Arrow table's order, so the stage
        view pairs them by position instead of parsing every body again in each later step.
        """
        wanted = "'OBJECT'" if self._definition.select is None else "kind"
        self._create_temp(
            "TABLE",
            _CHECKED,
            "SELECT CASE "
            "WHEN body IS NULL THEN 'body is not valid UTF-8' "
            "WHEN kind IS NULL THEN 'body is not valid JSON' "
            f"WHEN kind <> {wanted} THEN 'body is not a JSON object' END AS reason, seq_num "
            f"FROM (SELECT seq_num, body, TRY(json_type(body)) AS kind FROM {_INCOMING})",
        )
        headers = "i.headers" if has_headers else "NULL::MAP(VARCHAR, VARCHAR) AS headers"
        self._create_temp(
            "VIEW",
            _STAGE,
            f"SELECT i.seq_num, i.timestamp, {headers}, "
            f"i.body FROM {_INCOMING} AS i POSITIONAL JOIN {_CHECKED} AS c WHERE c.reason IS NULL",
        )
        self._create_temp(
            "TABLE", _REJECTS, f"SELECT seq_num, reason FROM {_CHECKED} WHERE reason IS NOT NULL"
        )

    def _reject_staged(self, predicate: str, reason: str) -> None:
        """Reject staged records matching `predicate` (rare cases found after the first pass);
        the stage view reads `s2s_checked`, so they leave it at once."""
        self._cursor.execute(
            f"UPDATE {_CHECKED} SET reason = {quote_literal(reason)} WHERE reason IS NULL "
            f"AND seq_num IN (SELECT seq_num FROM {_STAGE} WHERE {predicate})"
        )
        self._cursor.execute(
            f"INSERT INTO {_REJECTS} SELECT seq_num, reason FROM {_CHECKED} "
            f"WHERE reason = {quote_literal(reason)}"
        )

    # --- 2. shape ------------------------------------------------------------------------

    def _table_columns(self) -> dict[str, str]:
        rows = self._cursor.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_catalog = ? AND table_schema = ? AND table_name = ? "
            "ORDER BY ordinal_position",
            [CATALOG_ALIAS, self._definition.target_schema, self._definition.target_table],
        ).fetchall()
        return {str(name): str(kind) for name, kind in rows}

    def _shape_json(self, columns: dict[str, str]) -> dict[str, str]:
        """Top-level keys become columns; returns the new ones with their inferred types."""
        cursor = self._cursor
        keys = [
            str(row[0])
            for row in cursor.execute(
                f"SELECT DISTINCT unnest(json_keys(body)) FROM {_STAGE}"
            ).fetchall()
        ]
        if "" in keys:
            self._reject_staged(
                "list_contains(json_keys(body), '')",
                "a field has an empty name, which cannot be a column name",
            )
            keys.remove("")
        spellings: dict[str, list[str]] = {}
        for key in sorted(keys):
            spellings.setdefault(key.lower(), []).append(key)
        existing = {name.lower(): name for name in columns}
        unseen = {lowered: v for lowered, v in spellings.items() if lowered not in existing}
        new_columns: dict[str, str] = {}
        for lowered, column_type in self._infer(unseen).items():
            variants = unseen[lowered]
            # Names are case-insensitive in DuckDB: prefer the lower-case spelling.
            new_columns[min(variants, key=lambda key: (key != lowered, key))] = column_type
        names = {**existing, **{name.lower(): name for name in new_columns}}
        extraction = self._extraction(names, {**columns, **new_columns}, spellings)
        # A view: the cast step reads it once, so the values are never materialized twice.
        self._create_temp("VIEW", _SHAPED, extraction)
        return new_columns

    def _extraction(
        self, names: dict[str, str], types: dict[str, str], spellings: dict[str, list[str]]
    ) -> str:
        """SQL with `_SEQ` and one column per entry of `names` (lower-case key → column)."""
        if any(len(spellings.get(lowered, ())) > 1 for lowered in names):
            return self._extract_by_path(names, spellings)
        return self._extract_by_struct(names, types, spellings)

    @staticmethod
    def _extract_by_struct(
        names: dict[str, str], types: dict[str, str], spellings: dict[str, list[str]]
    ) -> str:
        """One parse per record into a struct: VARCHAR columns come out as text directly (the
        bulk of the bytes, and their cast rule is exactly json_transform's), the others as JSON
        values for coercion.cast_from_json."""
        fields = {
            spellings.get(lowered, [column])[0]: (
                "VARCHAR" if types[column].upper() == "VARCHAR" else "JSON"
            )
            for lowered, column in names.items()
        }
        if not fields:
            return f"SELECT seq_num AS {_SEQ} FROM {_STAGE}"
        selected = ", ".join(
            f"v.{quote_identifier(key)} AS {quote_identifier(column)}"
            for key, column in zip(fields, names.values(), strict=True)
        )
        structure = quote_literal(json.dumps(fields))
        return (
            f"SELECT seq_num AS {_SEQ}, {selected} FROM "
            f"(SELECT seq_num, from_json(body, {structure}) AS v FROM {_STAGE})"
        )

    @staticmethod
    def _extract_by_path(names: dict[str, str], spellings: dict[str, list[str]]) -> str:
        """Keys spelled in several cases (one column, as DuckDB names ignore case) cannot be
        struct fields side by side: extract each spelling by path and take the first present."""
        paths: list[str] = []
        value_exprs: dict[str, str] = {}
        for lowered, column in names.items():
            indexes = []
            for key in spellings.get(lowered, [column]):
                paths.append(quote_literal(coercion.json_path(key)))
                indexes.append(len(paths))
            parts = [f"v[{index}]" for index in indexes]
            value_exprs[column] = parts[0] if len(parts) == 1 else f"coalesce({', '.join(parts)})"
        selected = ", ".join(
            f"{expr} AS {quote_identifier(column)}" for column, expr in value_exprs.items()
        )
        return (
            f"SELECT seq_num AS {_SEQ}{', ' if selected else ''}{selected} FROM "
            f"(SELECT seq_num, json_extract(body, [{', '.join(paths)}]) AS v FROM {_STAGE})"
        )

    def _infer(self, unseen: dict[str, list[str]]) -> dict[str, str]:
        """Types for new columns (by lower-case name), from one pass over the batch."""
        if not unseen:
            return {}
        names = {lowered: f"__s2s_new{index}" for index, lowered in enumerate(unseen)}
        extraction = self._extraction(names, dict.fromkeys(names.values(), "JSON"), unseen)
        inputs = ", ".join(
            coercion.inference_inputs(quote_identifier(column), index)
            for index, column in enumerate(names.values())
        )
        aggregates = ", ".join(coercion.inference_aggregates(index) for index in range(len(names)))
        row = fetch_one(
            self._cursor, f"SELECT {aggregates} FROM (SELECT {inputs} FROM ({extraction}))"
        )
        assert row is not None
        inferred: dict[str, str] = {}
        for index, lowered in enumerate(unseen):
            kinds, all_dates, all_datetimes = row[3 * index : 3 * index + 3]
            column_type = coercion.infer_type(list(kinds or []), all_dates, all_datetimes)
            if column_type is not None:
                inferred[lowered] = column_type
        return inferred

    def _projection_sql(self, seq_filter: str = "") -> str:
        return projection_sql(self._definition.select, self._definition.where, seq_filter)

    def _shape_projection(self, columns: dict[str, str]) -> dict[str, str]:
        cursor = self._cursor
        projection = self._projection_sql()
        try:
            self._create_temp("TABLE", _SHAPED, projection)
        except duckdb.Error:
            self._project_record_by_record()
        described = cursor.execute(f"DESCRIBE {_SHAPED}").fetchall()
        existing = {name.lower() for name in columns}
        new_columns: dict[str, str] = {}
        for row in described[1:]:
            name, source_type = str(row[0]), str(row[1])
            if name.lower() not in existing:
                new_columns[name] = _column_type_for(source_type)
        return new_columns

    def _project_record_by_record(self) -> None:
        """The projection failed on some record: find which ones, reject only those."""
        cursor = self._cursor
        self._create_temp("TABLE", _SHAPED, f"{self._projection_sql()} LIMIT 0")
        seq_nums = [
            int(row[0])
            for row in cursor.execute(f"SELECT seq_num FROM {_STAGE} ORDER BY seq_num").fetchall()
        ]
        for seq_num in seq_nums:
            try:
                cursor.execute(
                    f"INSERT INTO {_SHAPED} {self._projection_sql('records.seq_num = $seq')}",
                    {"seq": seq_num},
                )
            except duckdb.Error as error:
                message = first_line(error)
                cursor.execute(
                    f"INSERT INTO {_REJECTS} VALUES ($seq, $reason)",
                    {"seq": seq_num, "reason": f"projection failed: {message}"[:1000]},
                )

    # --- 3. cast -------------------------------------------------------------------------

    def _cast(self, columns: dict[str, str]) -> None:
        cursor = self._cursor
        shaped = {
            str(row[0]): str(row[1])
            for row in cursor.execute(f"DESCRIBE {_SHAPED}").fetchall()
            if str(row[0]) != _SEQ
        }
        shaped_by_lower = {name.lower(): name for name in shaped}
        casts: list[str] = []
        reasons: list[str] = []
        for index, (column, column_type) in enumerate(columns.items()):
            source = shaped_by_lower.get(column.lower())
            alias = _alias(index)
            if source is None:
                casts.append(f"NULL::{column_type} AS {alias}")
                continue
            value = quote_identifier(source)
            if shaped[source].upper() == column_type.upper() != "JSON":
                casts.append(f"{value} AS {alias}")  # already the column's type: nothing to check
                continue
            if self._definition.select is None:
                cast = coercion.cast_from_json(value, column_type)
                missing = coercion.is_null_json(value)
            else:
                cast = coercion.cast_typed(value, shaped[source], column_type)
                missing = f"({value} IS NULL)"
            shown = f"left({value}::VARCHAR, 80)"
            casts.append(f"{cast} AS {alias}")
            reasons.append(
                f"CASE WHEN NOT {missing} AND {alias} IS NULL THEN "
                f"{quote_literal(f'column {column!r}: cannot store ')} || {shown} || "
                f"{quote_literal(f' as {column_type}')} END"
            )
        key = self._definition.primary_key
        if key is not None:
            key_alias = self._alias_of(columns, key)
            reasons.insert(
                0,
                f"CASE WHEN {key_alias} IS NULL THEN "
                f"{quote_literal(f'primary key column {key!r} is missing or null')} END"
                if key_alias
                else quote_literal(f"primary key column {key!r} is missing or null"),
            )
        reason = f"nullif(concat_ws('; ', {', '.join(reasons)}), '')" if reasons else "NULL"
        aliases = ", ".join(_alias(index) for index in range(len(columns)))
        self._create_temp(
            "TABLE",
            _TYPED,
            f"SELECT {_SEQ}, "
            f"{aliases}{', ' if aliases else ''}{reason} AS reason FROM "
            f"(SELECT *{', ' if casts else ''}{', '.join(casts)} FROM {_SHAPED})",
        )
        cursor.execute(
            f"INSERT INTO {_REJECTS} SELECT {_SEQ}, reason FROM {_TYPED} WHERE reason IS NOT NULL"
        )

    @staticmethod
    def _alias_of(columns: dict[str, str], name: str) -> str | None:
        for index, column in enumerate(columns):
            if column.lower() == name.lower():
                return _alias(index)
        return None

    # --- 4. commit -----------------------------------------------------------------------

    def _commit(self, prepared: Prepared) -> ApplyResult:
        batch, columns, all_columns = prepared.batch, prepared.columns, prepared.all_columns
        cursor = self._cursor
        definition = self._definition
        good = fetch_one(cursor, f"SELECT count(*) FROM {_TYPED} WHERE reason IS NULL")
        rows = int(good[0]) if good else 0
        if rows and not columns and not definition.create_table:
            raise TableMissing(
                f"table {definition.target} does not exist and materialization "
                f"{definition.name!r} may not create it (create_table is false)"
            )
        if rows and not all_columns:
            # Only empty objects, or fields that were null, and no table yet: nothing to
            # create it from. Kept as dead letters rather than dropped.
            cursor.execute(
                f"INSERT INTO {_REJECTS} SELECT {_SEQ}, 'no column to store it in: the table "
                "does not exist yet and the record has no non-null field' "
                f"FROM {_TYPED} WHERE reason IS NULL"
            )
            rows = 0
        # One small read per batch (none rejected: no rows); Python work only per rejection.
        rejections = tuple(
            (int(seq_num), str(reason))
            for seq_num, reason in cursor.execute(
                f"SELECT seq_num, reason FROM {_REJECTS} ORDER BY seq_num"
            ).fetchall()
        )
        with transaction(cursor, self._files):
            if rows:
                self._evolve(columns, prepared.new_columns)
                self._write(all_columns)
            self._dead_letters()
            self._checkpoint(batch, rows, len(rejections))
        snapshot = fetch_one(cursor, f"SELECT id FROM {CATALOG_ALIAS}.current_snapshot()")
        return ApplyResult(
            batch.last_seq_num, rows, rejections, int(snapshot[0]) if snapshot else None
        )

    def _evolve(self, columns: dict[str, str], new_columns: dict[str, str]) -> None:
        cursor = self._cursor
        definition = self._definition
        if not columns:
            cursor.execute(
                f"CREATE SCHEMA IF NOT EXISTS {CATALOG_ALIAS}."
                f"{quote_identifier(definition.target_schema)}"
            )
            column_list = ", ".join(
                f"{quote_identifier(name)} {kind}" for name, kind in new_columns.items()
            )
            cursor.execute(f"CREATE TABLE {self._target} ({column_list})")
            if definition.partition_by:
                cursor.execute(
                    f"ALTER TABLE {self._target} SET PARTITIONED BY "
                    f"({', '.join(definition.partition_by)})"
                )
            return
        for name, kind in new_columns.items():
            cursor.execute(f"ALTER TABLE {self._target} ADD COLUMN {quote_identifier(name)} {kind}")

    def _write(self, columns: dict[str, str]) -> None:
        names = [quote_identifier(name) for name in columns]
        aliases = [_alias(index) for index in range(len(columns))]
        key = self._definition.primary_key
        if key is None:
            self._cursor.execute(
                f"INSERT INTO {self._target} ({', '.join(names)}) SELECT {', '.join(aliases)} "
                f"FROM {_TYPED} WHERE reason IS NULL ORDER BY {_SEQ}"
            )
            return
        key_alias = self._alias_of(columns, key)
        key_column = next(name for name in columns if name.lower() == key.lower())
        quoted_key = quote_identifier(key_column)
        updates = ", ".join(
            f"{name} = s.{alias}" for name, alias in zip(names, aliases, strict=True)
        )
        self._cursor.execute(
            f"MERGE INTO {self._target} AS t USING (SELECT * FROM {_TYPED} WHERE reason IS NULL "
            f"QUALIFY row_number() OVER (PARTITION BY {key_alias} ORDER BY {_SEQ} DESC) = 1) AS s "
            f"ON t.{quoted_key} = s.{key_alias} "
            f"WHEN MATCHED THEN UPDATE SET {updates} "
            f"WHEN NOT MATCHED THEN INSERT ({', '.join(names)}) "
            f"VALUES ({', '.join('s.' + alias for alias in aliases)})"
        )

    def _dead_letters(self) -> None:
        definition = self._definition
        self._cursor.execute(
            f"INSERT INTO {META_SCHEMA}.dead_letters ({DEAD_LETTER_COLUMNS}) "
            "SELECT $name, $target, $basin, $stream, "
            "s.seq_num, s.timestamp, s.raw, r.reason, now() "
            f"FROM {_REJECTS} AS r JOIN {_INCOMING} AS s USING (seq_num) ORDER BY s.seq_num",
            {
                "name": definition.name,
                "target": definition.target,
                "basin": definition.basin,
                "stream": definition.stream,
            },
        )

    def _checkpoint(self, batch: RecordBatch, rows: int, rejected: int) -> None:
        """Advance the checkpoint from the one the batch continues, or abort the transaction.

        Two runners of one materialization can commit at once (servers sharing the catalog,
        one of them a leader that has not yet noticed it lost the lead, ADR 0013). DuckLake
        refuses the second of two concurrent commits that both change this table, but not a
        transaction that began after the first committed: this condition does. A batch is
        applied only on top of the very checkpoint its runner read it after."""
        updated = fetch_one(
            self._cursor,
            f"UPDATE {META_SCHEMA}.checkpoints SET last_seq_num = $last, "
            "rows_applied = rows_applied + $rows, rows_rejected = rows_rejected + $rejected, "
            "updated_at = now() WHERE name = $name AND last_seq_num = $after",
            {
                "last": batch.last_seq_num,
                "after": batch.after_seq_num,
                "rows": rows,
                "rejected": rejected,
                "name": self._definition.name,
            },
        )
        if not updated or updated[0] != 1:
            raise LakeConflict(
                f"the checkpoint of materialization {self._definition.name!r} is no longer "
                f"{batch.after_seq_num}: another runner committed (or it was deleted)"
            )
