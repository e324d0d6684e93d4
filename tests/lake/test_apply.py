"""The batch applier against a real embedded DuckLake: shaping, casting, schema evolution,
merge, dead letters, and the one-transaction commit that makes materialization exactly once."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from server.lake.apply import Applier, RecordBatch, TableMissing
from server.lake.connection import LakeSettings, lake_cursor, open_lake
from server.lake.data_files import DataFiles
from server.lake.definition import MaterializationSpec, build_materialization
from server.lake.maintenance import maintain
from server.lake.registry import Checkpoint, insert, load_all

_FILES: dict[int, DataFiles] = {}
"""Each open lake's data files, by the id of its connection."""


@pytest.fixture
def lake(tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    settings = LakeSettings(root=tmp_path / "lake")
    conn = open_lake(settings)
    _FILES[id(conn)] = DataFiles(settings.data_dir)
    yield conn
    del _FILES[id(conn)]
    conn.close()


def _files(conn: duckdb.DuckDBPyConnection) -> DataFiles:
    return _FILES[id(conn)]


def _applier(conn: duckdb.DuckDBPyConnection, **spec: Any) -> Applier:
    definition = build_materialization(MaterializationSpec(name="m", create_table=True, **spec))
    cursor = lake_cursor(conn)
    assert insert(cursor, _files(conn), definition)
    return Applier(cursor, _files(conn), definition)


def _batch(first_seq: int, *bodies: Any, after: int | None = None) -> RecordBatch:
    """Records from `first_seq` on, continuing from checkpoint `after` (the one before them
    unless given)."""
    encoded = [b if isinstance(b, bytes) else json.dumps(b).encode() for b in bodies]
    seq_nums = list(range(first_seq, first_seq + len(encoded)))
    timestamps = [1_700_000_000_000] * len(encoded)
    after_seq = first_seq - 1 if after is None else after
    return RecordBatch.of(seq_nums, timestamps, encoded, None, seq_nums[-1], after_seq)


def _rows(conn: duckdb.DuckDBPyConnection, sql: str) -> list[tuple[Any, ...]]:
    return lake_cursor(conn).execute(sql).fetchall()


def _checkpoint(conn: duckdb.DuckDBPyConnection) -> Checkpoint:
    loaded = load_all(lake_cursor(conn))
    assert not loaded.damaged
    [(_, checkpoint)] = loaded.materializations
    return checkpoint


def test_infers_columns_and_rejects_what_is_not_an_object(lake) -> None:
    applier = _applier(lake, table="bronze.events")
    result = applier.apply(
        _batch(
            0,
            {"id": 1, "name": "a", "score": 1.5, "ok": True, "at": "2024-05-01T10:00:00Z"},
            {"id": 2, "name": "b", "score": 2, "day": "2024-05-02", "tags": ["x"]},
            b"not json",
            b"\xff\xfe",
            [1, 2],
        )
    )
    assert (result.rows_applied, result.rows_rejected, result.last_seq_num) == (2, 3, 4)
    types = dict(
        _rows(
            lake,
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = 'events'",
        )
    )
    assert types == {
        "id": "BIGINT",
        "name": "VARCHAR",
        "score": "DOUBLE",
        "ok": "BOOLEAN",
        "at": "TIMESTAMP WITH TIME ZONE",
        "day": "DATE",
        "tags": "JSON",
    }
    reasons = _rows(lake, "SELECT seq_num, reason, body FROM s2s.dead_letters ORDER BY seq_num")
    assert reasons == [
        (2, "body is not valid JSON", b"not json"),
        (3, "body is not valid UTF-8", b"\xff\xfe"),
        (4, "body is not a JSON object", b"[1, 2]"),
    ]
    assert _checkpoint(lake) == Checkpoint(4, 2, 3)


@pytest.mark.parametrize(
    ("column_type", "value", "stored"),
    [
        ("BIGINT", 42, 42),
        ("BIGINT", "42", 42),
        ("BIGINT", 2.0, 2),
        ("BIGINT", 2.5, None),
        ("BIGINT", True, None),
        ("BIGINT", "abc", None),
        ("DOUBLE", "2.5", 2.5),
        ("DOUBLE", False, None),
        ("BOOLEAN", "TRUE", True),
        ("BOOLEAN", 1, None),
        ("VARCHAR", 7, "7"),
        ("VARCHAR", {"a": 1}, '{"a":1}'),
        ("DATE", "2024-02-29", "2024-02-29"),
        ("DATE", 20240229, None),
        ("INTEGER", 3_000_000_000, None),
    ],
)
def test_casts_lossless_or_rejects(lake, column_type: str, value: Any, stored: Any) -> None:
    lake_cursor(lake).execute(f"CREATE SCHEMA IF NOT EXISTS s; CREATE TABLE s.t (v {column_type})")
    applier = _applier(lake, table="s.t")
    result = applier.apply(_batch(0, {"v": value}))
    if stored is None:
        assert (result.rows_applied, result.rows_rejected) == (0, 1)
        [(reason,)] = _rows(lake, "SELECT reason FROM s2s.dead_letters")
        assert reason.startswith("column 'v': cannot store") and column_type in reason
    else:
        assert (result.rows_applied, result.rows_rejected) == (1, 0)
        [(got,)] = _rows(lake, "SELECT v::VARCHAR FROM s.t")
        assert got == str(stored).lower() if isinstance(stored, bool) else got == str(stored)


def test_the_result_carries_the_rejections_the_dead_letters_got(lake) -> None:
    applier = _applier(lake, table="s.told")
    first = applier.apply(_batch(0, {"a": 1}, {"a": 2}))
    assert first.rejections == ()
    result = applier.apply(_batch(2, {"a": "x"}, b"not json", {"a": 3}, [1]))
    assert (result.rows_applied, result.rows_rejected) == (1, 3)
    stored = _rows(lake, "SELECT seq_num, reason FROM s2s.dead_letters ORDER BY seq_num")
    assert list(result.rejections) == stored
    assert [seq_num for seq_num, _ in result.rejections] == [2, 3, 5]


def test_new_fields_add_columns(lake) -> None:
    applier = _applier(lake, table="s.evolving")
    applier.apply(_batch(0, {"a": 1}))
    applier.apply(_batch(1, {"a": 2, "b": "new"}, {"a": 3, "c": None}))
    assert _rows(lake, "SELECT a, b FROM s.evolving ORDER BY a") == [
        (1, None),
        (2, "new"),
        (3, None),
    ]
    columns = [r[0] for r in _rows(lake, "DESCRIBE s.evolving")]
    assert columns == ["a", "b"]  # a field that was only ever null gets no column yet


def test_merge_keeps_the_latest_record_per_key(lake) -> None:
    applier = _applier(lake, table="s.kv", mode="merge", primary_key="k")
    applier.apply(_batch(0, {"k": "a", "v": 1}, {"k": "b", "v": 1}, {"k": "a", "v": 2}))
    result = applier.apply(_batch(3, {"k": "b", "v": 5}, {"v": 9}, {"k": None, "v": 9}))
    assert (result.rows_applied, result.rows_rejected) == (1, 2)
    assert _rows(lake, "SELECT k, v FROM s.kv ORDER BY k") == [("a", 2), ("b", 5)]
    reasons = [r[0] for r in _rows(lake, "SELECT reason FROM s2s.dead_letters")]
    assert reasons == ["primary key column 'k' is missing or null"] * 2


def test_projection_renames_derives_filters_and_rejects_only_failing_records(lake) -> None:
    applier = _applier(
        lake,
        table="s.projected",
        select="(body->>'id')::INT AS user_id, upper(body->>'name') AS name, seq_num AS seq",
        where="body->>'kind' = 'keep'",
    )
    applier.check_projection()
    result = applier.apply(
        _batch(
            10,
            {"id": 1, "name": "ann", "kind": "keep"},
            {"id": 2, "name": "bob", "kind": "drop"},
            {"id": "x", "name": "cat", "kind": "keep"},
            {"id": 4, "name": "dan", "kind": "keep"},
            after=-1,
        )
    )
    assert (result.rows_applied, result.rows_rejected) == (2, 1)
    assert _rows(lake, "SELECT user_id, name, seq FROM s.projected ORDER BY seq") == [
        (1, "ANN", 10),
        (4, "DAN", 13),
    ]
    [(seq_num, reason)] = _rows(lake, "SELECT seq_num, reason FROM s2s.dead_letters")
    assert seq_num == 12 and reason.startswith("projection failed:")


def test_projection_that_does_not_compile_is_refused(lake) -> None:
    applier = _applier(lake, table="s.bad", select="no_such_column + 1 AS x")
    with pytest.raises(duckdb.Error):
        applier.check_projection()


def test_missing_table_without_create_table_applies_nothing(lake) -> None:
    definition = build_materialization(MaterializationSpec(name="m", table="s.absent"))
    cursor = lake_cursor(lake)
    insert(cursor, _files(lake), definition)
    with pytest.raises(TableMissing):
        Applier(cursor, _files(lake), definition).apply(_batch(0, {"a": 1}))
    assert _checkpoint(lake) == Checkpoint(-1, 0, 0)


class FailingCursor:
    """Delegates to a real cursor but fails the statement that matches `fail_on`."""

    def __init__(self, cursor: duckdb.DuckDBPyConnection, fail_on: str) -> None:
        self._cursor = cursor
        self.fail_on = fail_on

    def execute(self, sql: str, *args: Any) -> Any:
        if self.fail_on and self.fail_on in sql:
            raise duckdb.IOException(f"injected failure: {self.fail_on}")
        return self._cursor.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)


@pytest.mark.parametrize("fail_on", ["INSERT INTO lake.", "dead_letters", "checkpoints", "COMMIT"])
def test_a_failed_commit_leaves_rows_and_checkpoint_together(lake, fail_on: str) -> None:
    definition = build_materialization(
        MaterializationSpec(name="m", table="s.once", create_table=True)
    )
    cursor = lake_cursor(lake)
    insert(cursor, _files(lake), definition)
    failing = FailingCursor(cursor, fail_on)
    applier = Applier(failing, _files(lake), definition)  # type: ignore[arg-type]
    batch = _batch(0, {"id": 1}, {"id": 2}, b"bad")
    with pytest.raises(duckdb.IOException):
        applier.apply(batch)
    assert _checkpoint(lake) == Checkpoint(-1, 0, 0)
    assert _rows(lake, "SELECT count(*) FROM s2s.dead_letters") == [(0,)]
    tables = _rows(lake, "SELECT count(*) FROM information_schema.tables WHERE table_name = 'once'")
    assert tables == [(0,)]
    failing.fail_on = ""
    applier.apply(batch)
    assert _rows(lake, "SELECT id FROM s.once ORDER BY id") == [(1,), (2,)]
    assert _checkpoint(lake) == Checkpoint(2, 2, 1)


def test_maintenance_compacts_files_and_keeps_rows(lake, tmp_path: Path) -> None:
    cursor = lake_cursor(lake)
    cursor.execute("CREATE SCHEMA s; CREATE TABLE s.t (a BIGINT, b VARCHAR)")
    for i in range(20):  # one Parquet file per commit, as materializations make them
        cursor.execute(
            f"INSERT INTO s.t SELECT range, 'x' FROM range({i * 1000}, {i * 1000 + 1000})"
        )
    cursor.execute("DELETE FROM s.t WHERE a % 2 = 0")

    def files() -> int:
        return len(list((tmp_path / "lake" / "data").rglob("*.parquet")))

    assert files() == 40  # 20 data files and 20 deletion files
    first = maintain(cursor, _files(lake), snapshot_retention_s=0, file_grace_s=0)
    assert first.files_merged >= 20 and first.snapshots_expired > 0
    time.sleep(1.1)  # a file is deletable once its grace period has passed
    second = maintain(cursor, _files(lake), snapshot_retention_s=0, file_grace_s=0)
    assert first.files_deleted + second.files_deleted >= 40
    assert files() <= 2
    assert _rows(lake, "SELECT count(*), sum(a) FROM s.t") == [(10_000, 100_000_000)]


def test_partitioned_table_writes_one_directory_per_value(lake, tmp_path: Path) -> None:
    applier = _applier(lake, table="s.parts", partition_by=["kind", "year(ts)"])
    # Enough rows that DuckLake writes Parquet instead of inlining them in the catalog.
    rows = [
        {"kind": kind, "ts": f"{year}-01-02T00:00:00Z", "n": n}
        for kind, year in (("click", 2025), ("view", 2026), ("click", 2026))
        for n in range(200)
    ]
    applier.apply(_batch(0, *rows))
    table_dir = tmp_path / "lake" / "data" / "s" / "parts"
    directories = {p.parent.relative_to(table_dir).as_posix() for p in table_dir.rglob("*.parquet")}
    assert directories == {"kind=click/year=2025", "kind=click/year=2026", "kind=view/year=2026"}
    assert _rows(lake, "SELECT count(*) FROM s.parts WHERE kind = 'click'") == [(400,)]


def test_keys_differing_only_in_case_share_one_column(lake) -> None:
    applier = _applier(lake, table="s.cased")
    applier.apply(_batch(0, {"id": 1, "Name": "a"}, {"ID": 2, "name": "b"}))
    assert [r[0] for r in _rows(lake, "DESCRIBE s.cased")] == ["id", "name"]
    assert _rows(lake, "SELECT id, name FROM s.cased ORDER BY id") == [(1, "a"), (2, "b")]


def test_a_field_or_projected_column_may_be_called_seq_num(lake) -> None:
    plain = _applier(lake, table="s.plain")
    plain.apply(_batch(5, {"seq_num": 99, "v": 1}, after=-1))
    assert _rows(lake, "SELECT seq_num, v FROM s.plain") == [(99, 1)]
    definition = build_materialization(
        MaterializationSpec(name="p", table="s.projected_seq", create_table=True, select="seq_num")
    )
    cursor = lake_cursor(lake)
    insert(cursor, _files(lake), definition)
    Applier(cursor, _files(lake), definition).apply(_batch(7, {"x": 1}, {"x": 2}, after=-1))
    assert _rows(lake, "SELECT seq_num FROM s.projected_seq ORDER BY 1") == [(7,), (8,)]


def test_any_field_name_but_the_empty_one_becomes_a_column(lake) -> None:
    applier = _applier(lake, table="s.names")
    odd = {"a b": 1, "x.y": 2, 'q"uote': 3, "ünï": 4, "select": 5, "seq_num": 6}
    result = applier.apply(_batch(0, odd, {"": 1, "a b": 9}))
    assert (result.rows_applied, result.rows_rejected) == (1, 1)
    assert [r[0] for r in _rows(lake, "DESCRIBE s.names")] == sorted(odd)
    assert _rows(lake, 'SELECT "a b", "x.y", "q""uote", "ünï", "select" FROM s.names') == [
        (1, 2, 3, 4, 5)
    ]
    [(reason,)] = _rows(lake, "SELECT reason FROM s2s.dead_letters")
    assert reason == "a field has an empty name, which cannot be a column name"


def test_records_with_nothing_to_store_before_the_table_exists_are_dead_letters(lake) -> None:
    applier = _applier(lake, table="s.later")
    result = applier.apply(_batch(0, {}, {"a": None}))
    assert (result.rows_applied, result.rows_rejected, result.last_seq_num) == (0, 2, 1)
    assert _rows(
        lake, "SELECT count(*) FROM information_schema.tables WHERE table_name = 'later'"
    ) == [(0,)]
    applier.apply(_batch(2, {"a": 1}, {}))  # once the table exists, an empty object is a row
    assert _rows(lake, "SELECT a FROM s.later ORDER BY a NULLS LAST") == [(1,), (None,)]


def test_a_batch_prepared_before_the_table_changed_is_prepared_again(lake) -> None:
    """A pipelined runner prepares batch N+1 on a second cursor while batch N commits; if N
    changed the table (here: created it, then added a column), N+1 is shaped again at commit."""
    first = _applier(lake, table="bronze.piped")
    definition = build_materialization(
        MaterializationSpec(name="m", create_table=True, table="bronze.piped")
    )
    second = Applier(lake_cursor(lake), _files(lake), definition)
    early = first.prepare(_batch(0, {"id": 1, "extra": "a"}))
    late = second.prepare(_batch(1, {"id": 2, "extra": "b"}, {"id": 3, "more": 1.5}))
    assert late.columns == {}  # shaped when no table existed yet
    first.commit(early)
    result = second.commit(late)
    assert (result.rows_applied, result.rows_rejected, result.last_seq_num) == (2, 0, 2)
    assert _rows(lake, "SELECT id, extra, more FROM bronze.piped ORDER BY id") == [
        (1, "a", None),
        (2, "b", None),
        (3, None, 1.5),
    ]
    assert _checkpoint(lake).last_seq_num == 2


def _count_prepares(applier: Applier, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    prepare = applier._prepare

    def counted(*args: Any) -> Any:
        calls.append(1)
        return prepare(*args)

    monkeypatch.setattr(applier, "_prepare", counted)
    return calls


def test_a_batch_shaped_for_the_columns_before_it_is_prepared_once(lake, monkeypatch) -> None:
    """The runner prepares batch N+1 for the columns batch N will leave (here: N creates the
    table, with a date-time column); when N commits as expected, N+1 is not shaped again."""
    first = _applier(lake, table="bronze.guessed")
    definition = build_materialization(
        MaterializationSpec(name="m", create_table=True, table="bronze.guessed")
    )
    second = Applier(lake_cursor(lake), _files(lake), definition)
    prepares = _count_prepares(second, monkeypatch)
    early = first.prepare(_batch(0, {"id": 1, "seen": "2026-11-22T12:00:00Z"}))
    late = second.prepare(_batch(1, {"id": 2, "seen": "2026-11-22T13:00:00Z"}), early.all_columns)
    first.commit(early)
    result = second.commit(late)
    assert (result.rows_applied, len(prepares)) == (1, 1)
    rows = _rows(lake, "SELECT id, hour(seen) FROM bronze.guessed ORDER BY id")
    assert rows == [(1, 12), (2, 13)]


def test_a_wrong_guess_of_the_columns_is_prepared_again(lake, monkeypatch) -> None:
    """If the table does not have the columns batch N+1 was prepared for (batch N was
    re-shaped, or rejected every row, or another materialization changed the table), N+1 is
    shaped again at commit."""
    first = _applier(lake, table="bronze.unguessed")
    definition = build_materialization(
        MaterializationSpec(name="m", create_table=True, table="bronze.unguessed")
    )
    second = Applier(lake_cursor(lake), _files(lake), definition)
    prepares = _count_prepares(second, monkeypatch)
    early = first.prepare(_batch(0, {"id": 1}))
    late = second.prepare(_batch(1, {"id": 2, "name": "b"}), {"other": "BIGINT"})
    first.commit(early)
    result = second.commit(late)
    assert (result.rows_applied, len(prepares)) == (1, 2)
    assert _rows(lake, "SELECT id, name FROM bronze.unguessed ORDER BY id") == [(1, None), (2, "b")]


def test_a_prepared_batch_that_is_never_committed_leaves_nothing_behind(lake) -> None:
    applier = _applier(lake, table="bronze.abandoned")
    applier.prepare(_batch(0, {"id": 1}))  # its runner stopped before the commit
    result = applier.apply(_batch(0, {"id": 1}, {"id": 2}))
    assert result.rows_applied == 2
    assert _rows(lake, "SELECT id FROM bronze.abandoned ORDER BY id") == [(1,), (2,)]
