"""The lake as the frontends see it: declare and control materializations, ingest rows for a
table (`/v2/stream`), read dead letters, run read-only SQL, and count what happened.

Ingest never writes to a table directly: rows become records in the table's ingest stream
(durable before the response), and the table's materialization applies them, exactly once,
like any other stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from s2s.config import StreamConfig
from s2s.errors import S2Error, invalid
from s2s.records import (
    BATCH_METERED_BYTES_MAX,
    BATCH_RECORDS_MAX,
    ValidatedBatch,
    metered_size,
    validate_append_input,
)
from s2s.v1 import records_pb2 as pb
from server.lake import registry
from server.lake.apply import Applier
from server.lake.connection import META_SCHEMA, LakeSettings
from server.lake.definition import (
    INGEST_BASIN,
    Materialization,
    build_materialization,
    not_found,
)
from server.lake.ingest import IngestRequest
from server.lake.maintenance import MaintenanceResult, maintain
from server.lake.projection import check_projection, projection_refusal
from server.lake.query import ROWS_MAX, QueryRunner
from server.lake.runner import MaterializationRunner, trim_stream
from server.lake.sql_rules import FunctionRules
from server.lake.sqltext import first_line, quote_literal
from server.lake.writer import LakeWriter
from server.reader import ReadLimits, ReadStart
from server.streamstore import StreamStore

log = logging.getLogger("s2s.lake")

INGEST_WAIT_S = 30.0
"""How long `wait=true` waits for the lake commit before answering without a snapshot."""
DEAD_LETTERS_LIMIT_MAX = 1000


@dataclass(frozen=True)
class PlacedBatch:
    """Where one append batch of an ingest request landed: rows `first_row`.. of the
    request's accepted rows got sequence numbers `start_seq`..`end_seq - 1`."""

    start_seq: int
    end_seq: int
    first_row: int


@dataclass
class TableCounters:
    requests: int = 0
    rows_accepted: int = 0
    rows_rejected: int = 0
    errors: int = 0


class Lake:
    def __init__(self, store: StreamStore, settings: LakeSettings) -> None:
        self._store = store
        self._writer = LakeWriter(settings)
        self._server_id = _server_id(settings.root)
        self._runners: dict[str, MaterializationRunner] = {}
        self._damaged: dict[str, str] = {}
        """Stored materializations that cannot run (registry.Damaged), by name: why."""
        self._queries: QueryRunner | None = None
        self._rules: FunctionRules | None = None
        self._draining = False
        self._lock = asyncio.Lock()
        self._maintenance: asyncio.Task[None] | None = None
        self.counters: dict[str, TableCounters] = {}
        self.error_codes: Counter[tuple[str, str]] = Counter()

    @classmethod
    async def open(cls, store: StreamStore, settings: LakeSettings) -> Lake:
        lake = cls(store, settings)
        await lake._writer.open()
        writer = lake._writer
        rules = lake._rules = await writer.run(FunctionRules.load, writer.cursor)
        lake._queries = await writer.run(QueryRunner, writer.connection, rules)
        loaded = await writer.run(registry.load_all, writer.cursor)
        for damaged in loaded.damaged:
            lake._skip_damaged(damaged.name, damaged.reason)
        for definition, checkpoint in loaded.materializations:
            if definition.owner != lake._server_id:
                continue  # another server's, in a shared catalog
            # Stored before its SQL was checked as it is now: it must not run unchecked.
            refusal = await writer.run(projection_refusal, writer.cursor, rules, definition)
            if refusal is not None:
                lake._skip_damaged(definition.name, f"its SQL is refused: {refusal}")
                continue
            runner = MaterializationRunner(
                definition, checkpoint, store, lake._writer, lake._trim_floor(definition)
            )
            lake._runners[definition.name] = runner
            if not definition.paused:
                runner.start()
        if settings.maintenance_interval_s > 0:
            lake._maintenance = asyncio.create_task(lake._maintain_forever(), name="lake-maint")
        return lake

    def _skip_damaged(self, name: str | None, reason: str) -> None:
        """A stored materialization that cannot run: said once in the log, kept out of the
        runners, and named in errors about it until it is deleted."""
        log.warning(
            "materialization %s is not started: %s; delete it and declare it again",
            "(unnamed)" if name is None else repr(name),
            reason,
        )
        if name is not None:
            self._damaged[name] = reason

    async def _maintain_forever(self) -> None:
        settings = self._writer.settings
        while True:
            await asyncio.sleep(settings.maintenance_interval_s)
            try:
                result = await self._writer.run(
                    maintain,
                    self._writer.cursor,
                    settings.snapshot_retention_s,
                    settings.file_grace_s,
                )
                if result != MaintenanceResult(0, 0, 0):
                    log.info("lake maintenance: %s", result)
            except Exception:  # the next pass retries; the lake stays correct, only larger
                log.exception("lake maintenance failed")

    def drain(self) -> None:
        """Shutdown has begun: ingest stops waiting for commits (its rows are durable in their
        streams and are applied after the restart) and running queries are interrupted
        (`server_draining`); both could outlast the grace calls get, and a call cut off then
        answered 500."""
        self._draining = True
        for runner in self._runners.values():
            runner.release_waiters()
        if self._queries is not None:
            self._queries.drain()

    async def close(self) -> None:
        if self._maintenance is not None:
            self._maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintenance
        for runner in self._runners.values():
            await runner.stop("stopped")
        if self._queries is not None:
            self._queries.close()
        await self._writer.close()

    # --- materializations ----------------------------------------------------------------

    async def create_materialization(self, spec: dict[str, Any]) -> dict[str, Any]:
        definition = build_materialization(spec, owner=self._server_id)
        async with self._lock:
            if definition.name in self._runners:
                raise _already_exists(definition.name)
            damage = self._damaged.get(definition.name)
            if damage is not None:
                raise S2Error(
                    "resource_already_exists",
                    f"materialization {definition.name!r} is stored but damaged ({damage}); "
                    "delete it first",
                )
            await self._writer.run(self._check_projection, definition)
            if definition.basin == INGEST_BASIN:
                await self._ensure_ingest_stream(definition.stream)
            created = await self._writer.run(registry.insert, self._writer.cursor, definition)
            if not created:  # another server sharing the catalog has one of this name
                raise _already_exists(definition.name)
            runner = MaterializationRunner(
                definition,
                registry.Checkpoint(-1, 0, 0),
                self._store,
                self._writer,
                self._trim_floor(definition),
            )
            self._runners[definition.name] = runner
            if not definition.paused:
                runner.start()
        return await self.materialization_status(definition.name)

    async def _ensure_ingest_stream(self, stream: str) -> None:
        """Create the ingest basin and stream if absent; never touch an existing config."""
        catalog = self._store.catalog
        if catalog.get_basin(INGEST_BASIN) is None:
            await self._store.create_basin(INGEST_BASIN)
        # Infinite retention: rows wait for their materialization however long it is paused;
        # the runner trims what it has applied (runner.py).
        await catalog.create_stream_if_absent(
            INGEST_BASIN, stream, StreamConfig(retention="infinite")
        )

    def _check_projection(self, definition: Materialization) -> None:
        assert self._rules is not None
        check_projection(self._writer.cursor, self._rules, definition)
        if definition.select is None and definition.where is None:
            return
        try:
            Applier(self._writer.cursor, definition).check_projection()
        except Exception as error:
            raise invalid(f"select/where do not compile: {first_line(error)}") from None

    def _runner(self, name: str) -> MaterializationRunner:
        runner = self._runners.get(name)
        if runner is None:
            damage = self._damaged.get(name)
            if damage is not None:
                raise S2Error(
                    "materialization_not_found",
                    f"materialization {name!r} is not running: it is stored but damaged "
                    f"({damage}); delete it and declare it again",
                )
            raise not_found(name)
        return runner

    async def list_materializations(self) -> list[dict[str, Any]]:
        return [await self.materialization_status(name) for name in sorted(self._runners)]

    async def pause(self, name: str) -> dict[str, Any]:
        async with self._lock:
            runner = self._runner(name)
            await runner.stop("paused")
            runner.definition = runner.definition.with_paused(True)
            await self._writer.run(registry.update, self._writer.cursor, runner.definition)
        return await self.materialization_status(name)

    async def resume(self, name: str) -> dict[str, Any]:
        async with self._lock:
            runner = self._runner(name)
            runner.definition = runner.definition.with_paused(False)
            await self._writer.run(registry.update, self._writer.cursor, runner.definition)
            runner.start()
        return await self.materialization_status(name)

    async def delete(self, name: str) -> None:
        """Forget a materialization. What it applied from an ingest stream is trimmed from the
        stream, so a materialization declared later on it (ingest declares one on first use)
        does not apply those rows a second time."""
        async with self._lock:
            if name in self._damaged:
                await self._writer.run(registry.delete, self._writer.cursor, name)
                del self._damaged[name]
                return
            runner = self._runner(name)
            await runner.stop("deleted")
            # Read after stop: a commit finishing after the cancel is in the stored checkpoint.
            stored = await self._writer.run(registry.checkpoint, self._writer.cursor, name)
            await self._writer.run(registry.delete, self._writer.cursor, name)
            del self._runners[name]
            definition = runner.definition
            if definition.basin == INGEST_BASIN and stored is not None:
                floor = min(stored.last_seq_num + 1, self._trim_floor(definition)())
                if floor > 0:
                    await trim_stream(self._store, definition, floor)

    def _trim_floor(self, definition: Materialization) -> Callable[[], int]:
        """The lowest next sequence number among this lake's materializations of the same
        source (a large number when there are none)."""

        def floor() -> int:
            return min(
                (
                    r.status().next_seq_num
                    for r in self._runners.values()
                    if (r.definition.basin, r.definition.stream)
                    == (definition.basin, definition.stream)
                ),
                default=2**63 - 1,
            )

        return floor

    async def materialization_status(self, name: str) -> dict[str, Any]:
        runner = self._runner(name)
        definition = runner.definition
        status = runner.status()
        tail_seq: int | None = None
        lag_s = 0.0
        try:
            tail = await self._store.check_tail(definition.basin, definition.stream)
            tail_seq = tail.seq_num
            if tail_seq > status.next_seq_num:
                lag_s = await self._oldest_unapplied_age_s(definition, status.next_seq_num)
        except S2Error:
            pass  # the source does not exist (yet): no lag to report
        return {
            "name": definition.name,
            "source": {"basin": definition.basin, "stream": definition.stream},
            "table": definition.target,
            "mode": definition.mode,
            "primary_key": definition.primary_key,
            "select": definition.select,
            "where": definition.where,
            "partition_by": definition.partition_by,
            "create_table": definition.create_table,
            "state": status.state,
            "last_error": status.last_error,
            "applied_seq_num": status.next_seq_num,
            "tail_seq_num": tail_seq,
            "lag_records": max(0, (tail_seq or 0) - status.next_seq_num),
            "lag_seconds": round(lag_s, 3),
            "rows_applied": status.rows_applied,
            "rows_rejected": status.rows_rejected,
            "last_snapshot_id": status.last_snapshot_id,
            "last_commit_at": status.last_commit_at,
            "records_skipped": status.records_skipped,
        }

    async def _oldest_unapplied_age_s(self, definition: Materialization, seq_num: int) -> float:
        output = await self._store.read(
            definition.basin,
            definition.stream,
            ReadStart(seq_num=seq_num),
            ReadLimits(count=1, clamp=True),
        )
        if output.records is None:
            return 0.0
        first = pb.ReadBatch.FromString(output.records.payload).records[0]
        return max(0.0, time.time() - first.timestamp / 1000)

    # --- ingest --------------------------------------------------------------------------

    async def ingest(self, request: IngestRequest) -> dict[str, Any]:
        """Append the request's rows to its table's stream; with `wait`, await the commit."""
        runner = await self._ingest_runner(request)
        definition = runner.definition
        # Counted only once the table is known: made-up names must not grow the metrics.
        counters = self.counters.setdefault(definition.target.lower(), TableCounters())
        counters.requests += 1
        placed = await self._append_rows(definition, request)
        rejected = [
            {"index": row.index, "code": row.code, "message": row.message}
            for row in request.rejected
        ]
        accepted = len(request.rows)
        successful = accepted
        warnings: list[str] = []
        snapshot_id: int | None = None
        if request.wait and placed:
            first_seq, last_seq = placed[0].start_seq, placed[-1].end_seq - 1
            snapshot_id = None
            if not self._draining:
                snapshot_id = await runner.wait_applied(last_seq, INGEST_WAIT_S)
            if snapshot_id is None:
                why = (
                    "before the server began shutting down; they are committed after it restarts"
                    if self._draining
                    else f"within {INGEST_WAIT_S:.0f} s "
                    f"(materialization state: {runner.status().state})"
                )
                warnings.append(
                    f"rows are durable in stream {definition.source} but were not committed "
                    f"to the table {why}"
                )
            else:
                late = await self._rejected_between(definition, first_seq, last_seq)
                for seq_num, reason in late:
                    row = _accepted_row(placed, seq_num)
                    if row is not None:  # not a record another writer interleaved
                        index = request.row_indexes[row]
                        rejected.append({"index": index, "code": "rejected", "message": reason})
                        successful -= 1
        counters.rows_accepted += accepted
        counters.rows_rejected += len(rejected)
        return {
            "success": accepted > 0 and successful == accepted and not request.rejected,
            "request_id": "req_" + uuid.uuid4().hex[:20],
            "stream_id": definition.source,
            "table": f"lake.{request.qualified_table}",
            "accepted": accepted,
            "successful_rows": successful,
            "rejected_rows": len(rejected),
            "partitions": [],
            "snapshot_id": snapshot_id,
            "warnings": warnings,
            "errors": [],
            "rejected": sorted(rejected, key=lambda row: row["index"]),
        }

    async def _append_rows(
        self, definition: Materialization, request: IngestRequest
    ) -> list[PlacedBatch]:
        """Append the rows in batches; where each batch landed, in order.

        Batches of one request need not be contiguous in the stream (the materializer's trim
        commands or other writers may land between them), so each keeps its own range.
        """
        placed: list[PlacedBatch] = []
        position = 0
        for batch in _record_batches(request):
            try:
                ack = await self._store.append(definition.basin, definition.stream, batch)
            except S2Error as error:
                if not placed:
                    raise
                # A request larger than one append batch is not atomic: say what landed.
                raise S2Error(
                    error.code,
                    f"{error.message}; the first {position} accepted rows are already "
                    "durable and will be applied: resending them appends them again",
                ) from error
            placed.append(PlacedBatch(ack.start.seq_num, ack.end.seq_num, position))
            position += batch.count
        return placed

    def count_error(self, table: str | None, code: str) -> None:
        """Count a refused request against its table, if that table is a known one."""
        known = table is not None and table.lower() in self.counters
        if known:
            assert table is not None
            counters = self.counters[table.lower()]
            counters.requests += 1
            counters.errors += 1
        self.error_codes[(table.lower() if known and table else "", code)] += 1

    async def _ingest_runner(self, request: IngestRequest) -> MaterializationRunner:
        """The table's materialization; one is declared on first use if the table exists."""
        table = request.qualified_table.lower()
        candidates = [r for r in self._runners.values() if r.definition.target.lower() == table]
        candidates.sort(key=lambda r: r.definition.basin != INGEST_BASIN)
        if candidates and candidates[0].definition.basin == INGEST_BASIN:
            runner = candidates[0]
        elif await self._table_exists(request.schema, request.table):
            spec: dict[str, Any] = {
                "name": f"ingest.{request.schema}.{request.table}",
                "table": request.qualified_table,
                "mode": request.mode,
                "primary_key": request.primary_key,
            }
            try:
                await self.create_materialization(spec)
            except S2Error as error:
                if error.code != "resource_already_exists":  # a concurrent ingest declared it
                    raise
            runner = self._runners[spec["name"]]
        else:
            raise S2Error(
                "table_not_found",
                f"table {request.qualified_table} does not exist; declare a materialization "
                "for it with create_table=true to have ingest create it",
            )
        definition = runner.definition
        if definition.mode != request.mode:
            raise invalid(
                f"table {definition.target} is materialized in {definition.mode} mode; "
                f"send mode={definition.mode!r}"
            )
        key = definition.primary_key
        if key is not None and (request.primary_key or "").lower() != key.lower():
            raise invalid(f"table {definition.target} merges on primary_key [{key!r}]")
        return runner

    async def _table_exists(self, schema: str, table: str) -> bool:
        result, _ = await self._read(
            "SELECT count(*) AS n FROM information_schema.tables WHERE table_catalog = 'lake' "
            f"AND table_schema = {quote_literal(schema)} AND table_name = {quote_literal(table)}"
        )
        return bool(result.column("n")[0].as_py())

    async def _rejected_between(
        self, definition: Materialization, first: int, last: int
    ) -> list[tuple[int, str]]:
        result, _ = await self._read(
            f"SELECT seq_num, reason FROM {META_SCHEMA}.dead_letters "
            f"WHERE materialization = {quote_literal(definition.name)} "
            f"AND seq_num BETWEEN {int(first)} AND {int(last)} ORDER BY seq_num"
        )
        return [(int(row["seq_num"]), str(row["reason"])) for row in result.to_pylist()]

    async def dead_letters(self, table: str, limit: int) -> list[dict[str, Any]]:
        """The most recent rejected records for `schema.table`, newest first."""
        if not 1 <= limit <= DEAD_LETTERS_LIMIT_MAX:
            raise invalid(f"limit must be between 1 and {DEAD_LETTERS_LIMIT_MAX}")
        result, _ = await self._read(
            "SELECT materialization, basin, stream, seq_num, record_timestamp, "
            f"body, reason, rejected_at FROM {META_SCHEMA}.dead_letters "
            f"WHERE lower(target_table) = {quote_literal(table.lower())} "
            f"ORDER BY rejected_at DESC, seq_num DESC LIMIT {int(limit)}"
        )
        rows = []
        for row in result.to_pylist():
            body = row.pop("body")
            row["body"] = body.decode(errors="replace") if body is not None else None
            row["rejected_at"] = row["rejected_at"].isoformat()
            rows.append(row)
        return rows

    # --- SQL -----------------------------------------------------------------------------

    async def query(self, sql: str, rows_max: int = ROWS_MAX) -> tuple[pa.Table, bool]:
        """User SQL: refused unless it only reads the lake's tables (sql_guard.py)."""
        assert self._queries is not None
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._queries.executor, self._queries.run, sql, rows_max)

    async def _read(self, sql: str) -> tuple[pa.Table, bool]:
        """A read this module composed (names and values quoted), on a query thread."""
        assert self._queries is not None
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._queries.executor, self._queries.run_internal, sql)


def _already_exists(name: str) -> S2Error:
    return S2Error("resource_already_exists", f"materialization {name!r} already exists")


def _server_id(root: Path) -> str:
    """This server's stable id, made on first start and kept in its data directory."""
    path = root / "server-id"
    if not path.exists():
        root.mkdir(parents=True, exist_ok=True)
        staging = path.with_suffix(".tmp")
        staging.write_text(uuid.uuid4().hex)
        os.replace(staging, path)
    return path.read_text().strip()


def _accepted_row(placed: list[PlacedBatch], seq_num: int) -> int | None:
    """Which of the request's accepted rows got `seq_num` (a position in `rows` and
    `row_indexes`), or None if no batch of this request holds it."""
    for batch in placed:
        if batch.start_seq <= seq_num < batch.end_seq:
            return batch.first_row + seq_num - batch.start_seq
    return None


def _record_batches(request: IngestRequest) -> list[ValidatedBatch]:
    """The rows as append batches within the stream's batch limits."""
    headers = [
        pb.Header(name=f"tag:{key}".encode(), value=str(value).encode())
        for key, value in sorted(request.tags.items())
    ]
    # Every record carries the same headers: meter them once, then add each body's length.
    headers_metered = metered_size(pb.AppendRecord(headers=headers))
    batches = []
    records: list[pb.AppendRecord] = []
    size = 0
    for row in request.rows:
        metered = headers_metered + len(row)
        if records and (
            len(records) == BATCH_RECORDS_MAX or size + metered > BATCH_METERED_BYTES_MAX
        ):
            batches.append(validate_append_input(pb.AppendInput(records=records)))
            records, size = [], 0
        records.append(pb.AppendRecord(headers=headers, body=row))
        size += metered
    if records:
        batches.append(validate_append_input(pb.AppendInput(records=records)))
    return batches
