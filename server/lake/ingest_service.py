"""Ingest (`POST /v2/stream`) once a request is parsed (ingest.py): its rows become records in
the table's ingest stream, durable before the answer, and the table's materialization applies
them, exactly once, like any other stream's. Ingest never writes to a table directly.

A table's materialization is declared on first use if the table exists; rows for any other
table are refused (`table_not_found`). With `wait`, the answer waits for the commit and names
the rows the materialization rejected, from the commits' own results (watch.py).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from s2s.errors import S2Error, invalid
from s2s.records import (
    BATCH_METERED_BYTES_MAX,
    BATCH_RECORDS_MAX,
    ValidatedBatch,
    metered_size,
    validate_append_input,
)
from s2s.v1 import records_pb2 as pb
from server.lake.definition import (
    INGEST_BASIN,
    Materialization,
    MaterializationSpec,
    StreamCheck,
)
from server.lake.ingest import IngestRequest, RejectedRow, tag_text
from server.lake.materializations import Materializations
from server.lake.metrics import IngestMetrics
from server.lake.query import QueryRunner
from server.lake.runner import MaterializationRunner
from server.lake.sqltext import quote_literal
from server.lake.watch import AppliedWatch
from server.sequencer import AppendAck
from server.streamstore import StreamStore

INGEST_WAIT_S = 30.0
"""How long `wait=true` waits for the lake commit before answering without a snapshot."""


@dataclass(frozen=True)
class IngestResult:
    """What became of an accepted request's rows."""

    table: str
    """`schema.table`, as the request named it."""
    stream: str
    """The ingest stream the rows went to, `basin/stream`."""
    accepted: int
    """Rows appended to the stream."""
    successful_rows: int
    """Accepted rows not rejected by the materialization (as far as `wait` saw)."""
    rejected: tuple[RejectedRow, ...]
    """Rows left out, by validation or by the materialization (`rejected`), by index."""
    snapshot_id: int | None
    """With `wait`: the snapshot that committed the rows; None if that did not happen."""
    warnings: tuple[str, ...]

    @property
    def success(self) -> bool:
        return self.accepted > 0 and not self.rejected


@dataclass(frozen=True)
class PlacedBatch:
    """Where one append batch of an ingest request landed: rows `first_row`.. of the
    request's accepted rows got sequence numbers `start_seq`..`end_seq - 1`."""

    start_seq: int
    end_seq: int
    first_row: int

    @property
    def end_row(self) -> int:
        return self.first_row + self.end_seq - self.start_seq


class Ingest:
    def __init__(
        self,
        store: StreamStore,
        materializations: Materializations,
        queries: QueryRunner,
        metrics: IngestMetrics,
    ) -> None:
        self._store = store
        self._materializations = materializations
        self._queries = queries
        self._metrics = metrics
        self._draining = False

    def drain(self) -> None:
        """Shutdown has begun: stop waiting for commits (the rows are durable in their
        streams and are applied after the restart)."""
        self._draining = True

    async def ingest(
        self, request: IngestRequest, authorize: StreamCheck | None = None
    ) -> IngestResult:
        """Append the request's rows to its table's stream; with `wait`, await the commit.

        `authorize` is called with the table's ingest stream before anything is declared,
        and with the stream the rows go to before they are appended."""
        if authorize is not None:
            authorize(INGEST_BASIN, request.qualified_table)
        runner = await self._table_runner(request)
        definition = runner.definition
        if authorize is not None:
            authorize(definition.basin, definition.stream)
        # Counted only once the table is known: made-up names must not grow the metrics.
        self._metrics.track(definition.target)
        rejected = list(request.rejected)
        warnings: list[str] = []
        snapshot_id: int | None = None
        if not request.wait:
            await append_rows(self._store, definition, request)
        else:
            with runner.watching() as watch:
                placed = await append_rows(self._store, definition, request)
                if placed:
                    snapshot_id = await self._wait_committed(runner, watch, placed)
                    if snapshot_id is None:
                        warnings.append(self._not_committed(runner))
                    else:
                        rejected += _rejected_rows(request, placed, watch.rejections)
        accepted = len(request.rows)
        self._metrics.count_ingested(definition.target, accepted, len(rejected))
        return IngestResult(
            table=request.qualified_table,
            stream=definition.source,
            accepted=accepted,
            successful_rows=accepted - (len(rejected) - len(request.rejected)),
            rejected=tuple(sorted(rejected, key=lambda row: row.index)),
            snapshot_id=snapshot_id,
            warnings=tuple(warnings),
        )

    async def _wait_committed(
        self, runner: MaterializationRunner, watch: AppliedWatch, placed: list[PlacedBatch]
    ) -> int | None:
        if self._draining:
            return None
        first_seq, last_seq = placed[0].start_seq, placed[-1].end_seq - 1
        return await runner.wait_applied(watch, first_seq, last_seq, INGEST_WAIT_S)

    def _not_committed(self, runner: MaterializationRunner) -> str:
        why = (
            "before the server began shutting down; they are committed after it restarts"
            if self._draining
            else f"within {INGEST_WAIT_S:.0f} s (materialization state: {runner.status().state})"
        )
        return (
            f"rows are durable in stream {runner.definition.source} but were not committed "
            f"to the table {why}"
        )

    async def _table_runner(self, request: IngestRequest) -> MaterializationRunner:
        """The table's materialization; one is declared on first use if the table exists."""
        runner = self._materializations.ingest_runner(request.qualified_table)
        if runner is None:
            runner = await self._declare(request)
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

    async def _declare(self, request: IngestRequest) -> MaterializationRunner:
        if not await self._table_exists(request.schema, request.table):
            raise S2Error(
                "table_not_found",
                f"table {request.qualified_table} does not exist; declare a materialization "
                "for it with create_table=true to have ingest create it",
            )
        spec = MaterializationSpec(
            name=f"ingest.{request.schema}.{request.table}",
            table=request.qualified_table,
            mode=request.mode,
            primary_key=request.primary_key,
        )
        try:
            await self._materializations.create(spec)
        except S2Error as error:
            if error.code != "resource_already_exists":  # a concurrent ingest declared it
                raise
        return self._materializations.runner(spec.name)

    async def _table_exists(self, schema: str, table: str) -> bool:
        result = await self._queries.read(
            "SELECT count(*) AS n FROM information_schema.tables WHERE table_catalog = 'lake' "
            f"AND table_schema = {quote_literal(schema)} AND table_name = {quote_literal(table)}"
        )
        return bool(result.column("n")[0].as_py())


async def append_rows(
    store: StreamStore, definition: Materialization, request: IngestRequest
) -> list[PlacedBatch]:
    """Append the rows in batches; where each batch landed, in order.

    Pipelined: every batch is sequenced (`StreamStore.submit`, in submission order) before
    any ack is awaited, so a request of many batches waits for about one group commit instead
    of one fsync per batch. Batches of one request need not be contiguous in the stream (the
    materializer's trim commands or other writers may land between them), so each keeps its
    own range.

    A request larger than one batch is not atomic: if a batch fails, the error says which
    rows are durable anyway. Usually the batches before the failed one; after a failed commit
    the store accepts appends again once it has recovered, so a batch submitted after that
    may land behind a failed one, and the error then lists the rows that did.
    """
    batches = _record_batches(request)
    acks: list[asyncio.Future[AppendAck]] = []
    refused: S2Error | None = None
    try:
        for batch in batches:
            acks.append(await store.submit(definition.basin, definition.stream, batch))
    except S2Error as error:
        refused = error  # the batches before it are in flight: they land or fail as they do
    except BaseException:  # cancelled: nobody waits for those in flight any more
        for ack in acks:
            ack.cancel()
        raise
    # Gathered, so every ack is consumed, and cancelled if this request is.
    outcomes = await asyncio.gather(*acks, return_exceptions=True)
    placed: list[PlacedBatch] = []
    failure: BaseException | None = None
    position = 0
    for batch, outcome in zip(batches, outcomes, strict=False):
        if isinstance(outcome, BaseException):
            if failure is None:
                failure = outcome
        else:
            placed.append(PlacedBatch(outcome.start.seq_num, outcome.end.seq_num, position))
        position += batch.count
    if failure is None:
        failure = refused
    if failure is None:
        return placed
    if not placed or not isinstance(failure, S2Error):
        raise failure
    raise S2Error(
        failure.code,
        f"{failure.message}; {_durable_rows(placed)} already durable and will be applied: "
        "resending them appends them again",
    ) from failure


def _durable_rows(placed: list[PlacedBatch]) -> str:
    """The accepted rows that landed, as a partial failure names them."""
    count = sum(batch.end_row - batch.first_row for batch in placed)
    if placed[-1].end_row == count:
        return f"the first {count} accepted rows are"
    spans: list[list[int]] = []
    for batch in placed:
        if spans and spans[-1][1] == batch.first_row:
            spans[-1][1] = batch.end_row
        else:
            spans.append([batch.first_row, batch.end_row])
    return "accepted rows " + ", ".join(f"{start}-{end - 1}" for start, end in spans) + " are"


def _rejected_rows(
    request: IngestRequest, placed: list[PlacedBatch], rejections: list[tuple[int, str]]
) -> list[RejectedRow]:
    """The request's rows among the materialization's rejections (records other writers
    interleaved with the request's batches are not the request's)."""
    rows = []
    for seq_num, reason in rejections:
        row = _accepted_row(placed, seq_num)
        if row is not None:
            rows.append(RejectedRow(request.row_indexes[row], "rejected", reason))
    return rows


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
        pb.Header(name=f"tag:{key}".encode(), value=tag_text(value).encode())
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
