"""Opens the DuckLake catalog in an embedded DuckDB, offline, and creates the lake's own tables.

The catalog is a DuckDB file at `DATA_DIR/lake/catalog.ducklake` with Parquet files beside it,
unless a catalog connection string (e.g. `postgres:dbname=lake host=db user=s2s`) and a shared
data path are configured for deployments that outgrow one machine.

The lake's bookkeeping lives in the lake itself, in schema `s2s`, so that a batch of rows, its
dead letters and the materialization's checkpoint commit in one DuckLake transaction. No
table name a client sends may name this schema (definition.parse_table), and user SQL only
reads (sql_guard.py):

- `s2s.materializations(name, definition)`: one row per materialization; `definition` is the
  JSON of `Materialization` (see definition.py). Updatable.
- `s2s.checkpoints(name, last_seq_num, rows_applied, rows_rejected, updated_at)`: the last
  sequence number whose effects are in the target table (-1: none). Updated only in the same
  transaction as the rows it covers: that is the exactly-once invariant.
- `s2s.dead_letters(...)`: records that could not become rows, with the reason. Append-only.
- `s2s.declarations(declared)`: one row, a count every declaration raises in its own
  transaction. DuckLake lets two concurrent transactions insert into one table, so two servers
  sharing the catalog could both store a name they each saw free; two that also rewrite one
  row conflict, and the second sees the name taken when it is made again (registry.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
from duckdb_extensions import import_extension

from server.durable_file import replace_durably, sync_tree
from server.lake.sqltext import quote_literal
from server.lake.torn_wal import cut_torn_wal

CATALOG_ALIAS = "lake"
META_SCHEMA = "s2s"

_MATERIALIZATIONS = (("name", "VARCHAR"), ("definition", "VARCHAR"))
_CHECKPOINTS = (
    ("name", "VARCHAR"),
    ("last_seq_num", "BIGINT"),
    ("rows_applied", "BIGINT"),
    ("rows_rejected", "BIGINT"),
    ("updated_at", "TIMESTAMPTZ"),
)
_DEAD_LETTERS = (
    ("materialization", "VARCHAR"),
    ("target_table", "VARCHAR"),
    ("basin", "VARCHAR"),
    ("stream", "VARCHAR"),
    ("seq_num", "BIGINT"),
    ("record_timestamp", "BIGINT"),
    ("body", "BLOB"),
    ("reason", "VARCHAR"),
    ("rejected_at", "TIMESTAMPTZ"),
)
_DECLARATIONS = (("declared", "BIGINT"),)
_META_TABLES = {
    "materializations": _MATERIALIZATIONS,
    "checkpoints": _CHECKPOINTS,
    "dead_letters": _DEAD_LETTERS,
    "declarations": _DECLARATIONS,
}
# Every statement on these tables names its columns: a column added to one (nothing the
# server does adds any; a damaged or hand-edited catalog might) must not shift values.
MATERIALIZATION_COLUMNS = ", ".join(name for name, _ in _MATERIALIZATIONS)
CHECKPOINT_COLUMNS = ", ".join(name for name, _ in _CHECKPOINTS)
DEAD_LETTER_COLUMNS = ", ".join(name for name, _ in _DEAD_LETTERS)


def default_threads() -> int:
    """Half the cores this process may run on, at least one.

    A materialization runs two statements at a time (one batch prepared while the previous
    commits, see writer.py), each on its own thread, and DuckDB spreads each statement over up
    to `threads` cores: half the cores each keeps the two from fighting over them. On 2 cores
    (bench/lake.py, append mode) one thread applied 114-115k rows/s against 89-97k with two,
    which DuckDB would pick by default.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // 2)


LAKE_MEMORY_LIMIT_MIB_DEFAULT = 1024
"""DuckDB's own default is 80% of the machine's memory, and its caches (Parquet data and
metadata, catalog blocks) grow towards whatever limit it has: under bench/soak.py, by 40-55
MB at each maintenance pass and 2 MB a minute between. Eight times a batch's
`batch_bytes_max`: room for a batch's working set and a merge, past which DuckDB drops caches
and spills to `root/tmp` (ADR 0012)."""
LAKE_MEMORY_LIMIT_MIB_MIN = 64
LAKE_REOPEN_COMMITS_DEFAULT = 2000
"""DuckLake keeps ~2.6 KB of native memory per commit until its instance closes (ADR 0012):
a reopen every 2,000 commits bounds that to ~5 MB, and costs 0.1-0.2 s of a quiet lake each
time (17 minutes apart at two commits a second)."""


@dataclass(frozen=True)
class LakeSettings:
    """Where the lake lives and how materializations batch."""

    root: Path
    """`DATA_DIR/lake`: the embedded catalog, temp files and (by default) the Parquet files."""
    catalog: str | None = None
    """A DuckLake catalog connection string; None: the embedded DuckDB file under `root`."""
    data_path: str | None = None
    """Where Parquet files go; None: `root/data`. Required with a shared catalog."""
    threads: int = field(default_factory=default_threads)
    """DuckDB's threads: how many cores one statement may use (see `default_threads`)."""
    memory_limit_mib: int = LAKE_MEMORY_LIMIT_MIB_DEFAULT
    """DuckDB's `memory_limit` (see `LAKE_MEMORY_LIMIT_MIB_DEFAULT`)."""
    batch_rows_max: int = 100_000
    """Records per commit at most."""
    batch_bytes_max: int = 128 * 1024 * 1024
    """Metered bytes per commit at most: with large records, this bounds a batch's memory
    (the batch, its Arrow copy and DuckDB's working set are each about this size)."""
    linger_s: float = 0.5
    """How long a materialization waits for more records before committing what it has."""
    maintenance_interval_s: float = 600.0
    """How often small files are merged and old snapshots expired (maintenance.py); 0: never."""
    snapshot_retention_s: int = 24 * 3600
    """How long a snapshot stays readable for time travel."""
    file_grace_s: int = 3600
    """How long a dropped file is kept for queries that started before it was dropped."""
    reopen_after_commits: int = LAKE_REOPEN_COMMITS_DEFAULT
    """Commits after which the DuckDB instance is closed and opened again (reopen.py); 0:
    never."""

    @property
    def catalog_uri(self) -> str:
        return "ducklake:" + (self.catalog or str(self.root / "catalog.ducklake"))

    @property
    def data_dir(self) -> str:
        return self.data_path or str(self.root / "data")


def open_lake(settings: LakeSettings) -> duckdb.DuckDBPyConnection:
    """Connect, load DuckLake from the pip-installed extension, attach the catalog as `lake`.

    External file access is then limited to the lake's own directories: `/v1/lake/query` runs
    user SQL on this instance, and must not read the server's files.
    """
    settings.root.mkdir(parents=True, exist_ok=True)
    data_dir = settings.data_dir
    if "://" not in data_dir:
        os.makedirs(data_dir, exist_ok=True)
    extensions = settings.root / "extensions"
    temp = settings.root / "tmp"
    temp.mkdir(exist_ok=True)
    conn = duckdb.connect(
        config={
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            "extension_directory": str(extensions),
            "temp_directory": str(temp),
            "threads": settings.threads,
            "memory_limit": f"{settings.memory_limit_mib}MiB",
        }
    )
    try:
        _install_extension("ducklake", conn, extensions)
        conn.execute("LOAD ducklake")
        if settings.catalog and settings.catalog.startswith("postgres:"):
            _install_extension("postgres_scanner", conn, extensions)
            conn.execute("LOAD postgres_scanner")
        _attach(conn, settings)
        conn.execute(f"USE {CATALOG_ALIAS}")
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {META_SCHEMA}")
        for table, columns in _META_TABLES.items():
            column_list = ", ".join(f"{name} {kind}" for name, kind in columns)
            conn.execute(f"CREATE TABLE IF NOT EXISTS {META_SCHEMA}.{table} ({column_list})")
        # Two servers opening a new catalog at once may both add the row: a declaration raises
        # every row, so two of them still conflict. With none, they would not.
        conn.execute(
            f"INSERT INTO {META_SCHEMA}.declarations (declared) "
            f"SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM {META_SCHEMA}.declarations)"
        )
        allowed = [str(settings.root) + os.sep]
        if "://" not in data_dir:
            allowed.append(os.path.abspath(data_dir) + os.sep)
        conn.execute(f"SET allowed_directories = [{', '.join(map(quote_literal, allowed))}]")
        conn.execute("SET enable_external_access = false")
    except BaseException:
        conn.close()  # not left open for the garbage collector
        raise
    return conn


def _attach(conn: duckdb.DuckDBPyConnection, settings: LakeSettings) -> None:
    """Attach the catalog as `lake`; an embedded catalog whose WAL a power loss tore is cut
    back to its last whole entry first (torn_wal.py)."""
    attach = (
        f"ATTACH {quote_literal(settings.catalog_uri)} AS {CATALOG_ALIAS} "
        f"(DATA_PATH {quote_literal(settings.data_dir)})"
    )
    try:
        conn.execute(attach)
    except duckdb.IOException as error:
        embedded = settings.catalog is None
        if not embedded or not cut_torn_wal(settings.root / "catalog.ducklake", error):
            raise
        conn.execute(attach)


def _install_extension(name: str, conn: duckdb.DuckDBPyConnection, directory: Path) -> None:
    """Install extension `name` from its pip package into `directory`, durably.

    DuckDB copies the file with a rename but never syncs it, so a power loss soon after can
    leave a damaged copy that the next start refuses to load (or worse, loads). A marker
    written once the copy is synced says it can be trusted; without one the copy is made
    again.
    """
    marker = directory / f".{name}-{duckdb.__version__}.synced"
    fresh = not marker.exists()
    import_extension(name, force_install=fresh, con=conn)
    if fresh:
        sync_tree(directory)
        replace_durably(marker, b"", mode=0o644)


def lake_cursor(conn: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """A new connection to the same lake, for one thread; unqualified names resolve in it."""
    cursor = conn.cursor()
    cursor.execute(f"USE {CATALOG_ALIAS}")
    return cursor


def fetch_one(
    cursor: duckdb.DuckDBPyConnection, sql: str, parameters: dict[str, Any] | None = None
) -> tuple[Any, ...] | None:
    """The first row of `sql`'s result (None if empty), with the result read to its end.

    `cursor.execute(...).fetchone()` leaves the result open, and with it the statement's
    transaction, until the cursor runs its next statement. The lake's cursors live long and
    may then sit idle (the writer's after a checkpoint read, a materialization's once its
    stream goes quiet), and while one transaction stays open DuckDB keeps the undo data of
    every later commit: under bench/soak.py the server grew by ~45 MB a minute, all of it
    DuckDB's `TRANSACTION` memory. Read every result to its end on the lake's cursors.
    """
    rows = cursor.execute(sql, parameters).fetchall()
    return rows[0] if rows else None
