"""DuckLake with a PostgreSQL catalog: a real server (tests/postgres.py) round-trips a table."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
from duckdb_extensions import import_extension

from tests.postgres import PostgresServer, running_postgres

pytestmark = pytest.mark.xdist_group("postgres")


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _connect(extension_dir: Path) -> duckdb.DuckDBPyConnection:
    """In-memory DuckDB with ducklake + postgres_scanner from their PyPI wheels, never the web."""
    con = duckdb.connect(config={"autoinstall_known_extensions": False})
    # INSTALL copies into the extension directory: a private one keeps ~/.duckdb out of it and
    # parallel workers from racing on the same files.
    con.execute(f"SET extension_directory = {_sql_str(str(extension_dir))}")
    import_extension("ducklake", con=con)
    import_extension("postgres_scanner", con=con)
    con.execute("LOAD ducklake")
    con.execute("LOAD postgres_scanner")
    return con


def _attach(con: duckdb.DuckDBPyConnection, server: PostgresServer, data_path: Path) -> None:
    # No inlining: rows go to Parquet under DATA_PATH, not into catalog tables, so both halves of
    # the lake are exercised.
    con.execute(
        f"ATTACH {_sql_str('ducklake:' + server.ducklake_catalog())} AS lake "
        f"(DATA_PATH {_sql_str(str(data_path))}, DATA_INLINING_ROW_LIMIT 0)"
    )


def test_table_round_trips_through_postgres_catalog(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    extension_dir = tmp_path / "extensions"
    data_path = tmp_path / "lake"
    data_path.mkdir()

    con = _connect(extension_dir)
    _attach(con, postgres, data_path)
    con.execute("CREATE SCHEMA lake.streams")
    con.execute("CREATE TABLE lake.streams.records (seq_num BIGINT, body VARCHAR)")
    snapshot_before = int(postgres.psql("SELECT max(snapshot_id) FROM ducklake_snapshot"))

    con.execute("BEGIN")
    con.execute("INSERT INTO lake.streams.records VALUES (0, 'a'), (1, 'b'), (2, 'c')")
    con.execute("INSERT INTO lake.streams.records VALUES (3, 'd')")
    con.execute("COMMIT")
    con.execute("DETACH lake")
    con.close()

    # The catalog lives in PostgreSQL: one transaction, one snapshot, and its files recorded.
    assert int(postgres.psql("SELECT max(snapshot_id) FROM ducklake_snapshot")) == (
        snapshot_before + 1
    )
    files = postgres.psql("SELECT path, record_count FROM ducklake_data_file ORDER BY path")
    recorded = dict(line.split("|") for line in files.splitlines())
    assert sum(int(count) for count in recorded.values()) == 4
    on_disk = {path.name for path in data_path.rglob("*.parquet")}
    assert {Path(path).name for path in recorded} == on_disk

    fresh = _connect(extension_dir)
    try:
        _attach(fresh, postgres, data_path)
        rows = fresh.execute("SELECT seq_num, body FROM lake.streams.records ORDER BY 1").fetchall()
        assert rows == [(0, "a"), (1, "b"), (2, "c"), (3, "d")]
    finally:
        fresh.close()
