"""Runs one materialization: follows its source stream from the checkpoint, batches records by
rows and time, and applies each batch on the lake's writer thread.

Resuming is always from the checkpoint stored in the lake (never from memory), so a batch
whose commit finished after its runner was cancelled, or before the process was killed, is
never applied twice: its records are at or below the checkpoint that committed with it. A
batch commits only on top of the checkpoint it was read after (apply.py), so a second runner
of the same materialization on another server cannot apply it twice either.

With a catalog and stream store shared by several servers, one of them runs the
materializations (materializations.py); on the others each runner stands aside
(`step_aside`) and follows the checkpoint in the catalog instead, so its status, and the
ingest requests waiting there for their rows, see the running server's commits.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import duckdb

from s2s.errors import ReadUnwritten, S2Error
from s2s.records import is_command_record, trim_record, validate_append_input
from s2s.v1 import records_pb2 as pb
from server.lake import registry
from server.lake.apply import Applier, ApplyResult, Prepared, RecordBatch, TableMissing
from server.lake.data_files import LakeConflict
from server.lake.definition import INGEST_BASIN, Materialization
from server.lake.watch import AppliedWatch
from server.lake.writer import LakeWriter
from server.reader import ReadLimits, ReadStart, RecordSlice
from server.streamstore import StreamStore

log = logging.getLogger("s2s.lake")

_QUEUE_SLICES_MAX = 32
"""Read-ahead bound: at most this many slices (each <= 1000 records, 1 MiB) wait to be
batched, on top of the batch being gathered (bounded by LakeSettings.batch_*_max)."""
_RETRY_S_MIN = 0.5
_RETRY_S_MAX = 30.0
_MISSING_SOURCE_CODES = ("stream_not_found", "basin_not_found")
TRIM_AFTER_RECORDS = 10_000
"""An ingest stream is trimmed up to the checkpoint once this many records were applied
since the last trim: its records live on in the table, and a trim is one more append."""
CATALOG_POLL_S = 0.05
"""How often a runner that stands aside reads the checkpoint while requests wait for rows:
a read is a few milliseconds (a PostgreSQL catalog on this machine), a commit every
`linger_s` (0.5 s by default)."""
ON_ANOTHER_SERVER = "on_another_server"
"""The state of a materialization another server runs (`step_aside`)."""


@dataclass(frozen=True)
class RunnerStatus:
    state: str
    last_error: str | None
    next_seq_num: int
    rows_applied: int
    rows_rejected: int
    last_snapshot_id: int | None
    last_commit_at: float | None
    records_skipped: int


def decode_slices(slices: list[RecordSlice], with_headers: bool, after_seq_num: int) -> RecordBatch:
    """Stream records to a batch that continues from checkpoint `after_seq_num`; command
    records (fence, trim) carry no row and are skipped.

    Field by field over whole slices (comprehensions), not record by record: decoding runs
    beside DuckDB's work on the previous batches and competes with it for the CPU; this form
    takes less than half the time of a loop over records. The batch's Arrow table is built
    here too, so the preparer, the busiest thread, does not.
    """
    seq_nums: list[int] = []
    timestamps: list[int] = []
    bodies: list[bytes] = []
    headers: list[list[tuple[str, str]]] | None = [] if with_headers else None
    for piece in slices:
        records = list(pb.ReadBatch.FromString(piece.payload).records)
        if any(record.headers for record in records):
            records = [record for record in records if not is_command_record(record)]
            seq_nums += [record.seq_num for record in records]
        else:
            seq_nums += range(piece.first_seq, piece.last_seq + 1)
        timestamps += [record.timestamp for record in records]
        bodies += [record.body for record in records]
        if headers is not None:
            headers += [
                [
                    (h.name.decode(errors="replace"), h.value.decode(errors="replace"))
                    for h in record.headers
                ]
                for record in records
            ]
    return RecordBatch.of(seq_nums, timestamps, bodies, headers, slices[-1].last_seq, after_seq_num)


class MaterializationRunner:
    def __init__(
        self,
        definition: Materialization,
        checkpoint: registry.Checkpoint,
        store: StreamStore,
        writer: LakeWriter,
        trim_floor: Callable[[], int],
        elsewhere: bool = False,
    ) -> None:
        """`trim_floor` gives the lowest next sequence number among the materializations
        reading this runner's source: an ingest stream is never trimmed past it.
        `elsewhere`: another server runs it (see `step_aside`)."""
        self.definition = definition
        self._trim_floor = trim_floor
        self._store = store
        self._writer = writer
        self._lanes = self._new_lanes()
        self._next_seq = checkpoint.last_seq_num + 1
        self._rows_applied = checkpoint.rows_applied
        self._rows_rejected = checkpoint.rows_rejected
        self._elsewhere = elsewhere
        self._state = "paused" if definition.paused else "starting"
        if elsewhere and not definition.paused:
            self._state = ON_ANOTHER_SERVER
        self._last_error: str | None = None
        self._last_snapshot_id: int | None = None
        self._last_commit_at: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._poller: asyncio.Task[None] | None = None
        """Follows the catalog's checkpoint while this runner stands aside and requests wait."""
        self._suspended = False
        """Stopped for the lake to reopen (`suspend`): waiters keep waiting."""
        self._commits: set[asyncio.Future[ApplyResult]] = set()
        """Commits running on the writer thread, which a stop does not interrupt."""
        self._watches: set[AppliedWatch] = set()
        self._retry_s = _RETRY_S_MIN
        self._trimmed_to = 0
        self._records_skipped = 0

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Run here (from the stored checkpoint)."""
        self._elsewhere = False
        if self._task is None:
            self._state = "starting"
            self._task = asyncio.create_task(self._run(), name=f"lake:{self.definition.name}")

    def _new_lanes(self) -> tuple[Applier, Applier]:
        """Two appliers, each on its own cursor: batch N+1 is prepared on one while batch N
        commits on the other (`_batch_and_apply`)."""
        writer, definition = self._writer, self.definition
        return (
            Applier(writer.new_cursor(), writer.files, definition),
            Applier(writer.new_cursor(), writer.files, definition),
        )

    async def stop(self, state: str = "paused") -> None:
        await self._halt()
        await self._stop_polling()
        self._state = state
        self.release_waiters()

    async def step_aside(self) -> None:
        """Another server runs this materialization now: stop running it here (if it did),
        and follow its progress in the catalog. Requests waiting for rows keep waiting."""
        self._elsewhere = True
        await self._halt()
        self._state = "paused" if self.definition.paused else ON_ANOTHER_SERVER
        if self._watches:
            self._follow_catalog()

    @property
    def runs_here(self) -> bool:
        return self._task is not None

    async def _halt(self) -> None:
        """Cancel the loop and wait for the commits it started: once this returns, the stored
        checkpoint is final until the next start."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._commits:
            await asyncio.wait(self._commits)

    async def suspend(self) -> bool:
        """Stop for the lake's DuckDB instance to be reopened (reopen.py), keeping the requests
        waiting for commits; `close_lanes` next, then `resume`. Returns whether it ran."""
        running = self._task is not None
        self._suspended = True
        await self._halt()
        await self._stop_polling()  # its reads use the writer's cursor, which the reopen closes
        return running

    def close_lanes(self) -> None:
        """On the writer thread, before the instance closes: wait for a prepare still running
        on a lane, and close the lanes' cursors."""
        for lane in self._lanes:
            lane.close()

    def resume(self, running: bool) -> None:
        """Take cursors on the new instance, and start again if `running` (from the
        checkpoint, as after any stop), in the state it had: a reopen is the lake's upkeep,
        not a new start, and a status taken meanwhile must not flap to `starting` (seen in
        CI right after an ingest's commit)."""
        self._lanes = self._new_lanes()
        self._suspended = False
        if running:
            state = self._state
            self.start()
            self._state = state
        elif self._elsewhere and self._watches:
            self._follow_catalog()

    def release_waiters(self) -> None:
        """Answer everyone in `wait_applied` now, with None (not applied yet)."""
        for watch in self._watches:
            watch.release()

    def status(self) -> RunnerStatus:
        return RunnerStatus(
            self._state,
            self._last_error,
            self._next_seq,
            self._rows_applied,
            self._rows_rejected,
            self._last_snapshot_id,
            self._last_commit_at,
            self._records_skipped,
        )

    @contextlib.contextmanager
    def watching(self) -> Iterator[AppliedWatch]:
        """A watch on every commit of this runner while the block runs (watch.py)."""
        watch = AppliedWatch()
        self._watches.add(watch)
        try:
            yield watch
        finally:
            self._watches.discard(watch)

    async def wait_applied(
        self, watch: AppliedWatch, first_seq: int, last_seq: int, timeout_s: float
    ) -> int | None:
        """The snapshot that made `last_seq` visible, or None if it did not happen in time;
        `watch` then holds the rejections among `first_seq..last_seq`."""
        watch.expect(first_seq, last_seq)
        if self._next_seq > last_seq:
            return self._last_snapshot_id
        if self._elsewhere and not self.definition.paused:
            if not self._suspended:
                self._follow_catalog()
        elif self._task is None and not self._suspended:
            return None
        return await watch.snapshot(timeout_s)

    async def refresh(self) -> None:
        """Take the catalog's checkpoint as this runner's progress (it stands aside)."""
        await self._load_progress()

    # --- following another server's commits ----------------------------------------------

    def _follow_catalog(self) -> None:
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(
                self._poll_catalog(), name=f"lake-poll:{self.definition.name}"
            )

    async def _stop_polling(self) -> None:
        poller, self._poller = self._poller, None
        if poller is not None:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller

    async def _poll_catalog(self) -> None:
        """While this runner stands aside and requests wait for rows, read the checkpoint
        every `CATALOG_POLL_S`; a failed read is tried again at the next."""
        failing = False
        while self._elsewhere and self._watches:
            try:
                await self._load_progress()
            except (duckdb.Error, OSError) as error:
                if not failing:
                    log.warning(
                        "materialization %s: cannot read its checkpoint: %s",
                        self.definition.name,
                        error,
                    )
                failing = True
            else:
                failing = False
            await asyncio.sleep(CATALOG_POLL_S)

    async def _load_progress(self) -> None:
        """The stored checkpoint becomes this runner's progress; what it moved past since is
        told to the watches (with its rejected records, from the dead letters), as this
        runner's own commits are."""
        after = self._next_seq - 1
        progress = await self._writer.run(self._read_progress, after)
        if progress is None:
            return  # deleted while this runner stopped: keep what it knew
        checkpoint = progress.checkpoint
        self._next_seq = checkpoint.last_seq_num + 1
        self._rows_applied = checkpoint.rows_applied
        self._rows_rejected = checkpoint.rows_rejected
        if checkpoint.last_seq_num > after:
            self._last_snapshot_id = progress.snapshot_id
            moved = ApplyResult(
                checkpoint.last_seq_num, 0, progress.rejections, progress.snapshot_id
            )
            for watch in self._watches:
                watch.note(moved)

    def _read_progress(self, after: int) -> registry.Progress | None:
        return registry.progress(self._writer.cursor, self.definition.name, after)

    # --- the loop ------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                # Another server may have committed since this runner last knew: requests
                # waiting here for those rows hear of them now.
                await self._load_progress()
                await self._follow()
            except LakeConflict as error:
                # Another runner committed: a server that runs the materialization now, while
                # this one has not yet noticed it no longer does (it stands aside at its next
                # check), or a declaration changed through another server. Nothing of this
                # batch was committed; continue from the checkpoint the other one left.
                log.warning(
                    "materialization %s: %s; continuing from the stored checkpoint",
                    self.definition.name,
                    error,
                )
                self._retry_s = _RETRY_S_MIN
            except ReadUnwritten as error:
                self._fail(
                    "error",
                    f"the source stream ends at {error.tail_seq_num}, before the checkpoint "
                    f"({self._next_seq}): it was deleted and created again; delete and declare "
                    "the materialization again to start over",
                )
            except S2Error as error:
                waiting = error.code in _MISSING_SOURCE_CODES
                self._fail("waiting_for_stream" if waiting else "error", error.message)
            except TableMissing as error:
                self._fail("waiting_for_table", str(error))
            except (duckdb.Error, OSError) as error:  # the lake failed (disk full, ...)
                self._fail("error", f"{type(error).__name__}: {error}")
                log.error(
                    "materialization %s failed, retrying from its checkpoint in %g s: %s",
                    self.definition.name,
                    self._retry_s,
                    self._last_error,
                )
            except Exception as error:  # not expected: keep the traceback for the bug report
                log.exception("materialization %s failed", self.definition.name)
                self._fail("error", f"{type(error).__name__}: {error}")
            await asyncio.sleep(self._retry_s)
            self._retry_s = min(self._retry_s * 2, _RETRY_S_MAX)

    def _fail(self, state: str, message: str) -> None:
        self._state = state
        self._last_error = message

    async def _follow(self) -> None:
        definition = self.definition
        session = await self._store.read_session(
            definition.basin, definition.stream, ReadStart(seq_num=self._next_seq), ReadLimits()
        )
        queue: asyncio.Queue[RecordSlice | BaseException | None] = asyncio.Queue(_QUEUE_SLICES_MAX)

        async def read() -> None:
            try:
                async for output in session:
                    if output.records is not None:
                        await queue.put(output.records)
                await queue.put(None)
            except Exception as error:
                await queue.put(error)

        reader = asyncio.create_task(read(), name=f"lake-read:{definition.name}")
        self._state = "running"
        try:
            await self._batch_and_apply(queue)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            await session.aclose()

    async def _batch_and_apply(
        self, queue: asyncio.Queue[RecordSlice | BaseException | None]
    ) -> None:
        """Gather slices into batches and apply them, two at a time.

        Batch N+1 is read, decoded and prepared (`Applier.prepare`, on the preparer thread and
        the other lane's cursor) while batch N commits on the writer thread. Commits stay in
        order: each batch's apply task first awaits the previous one, and fails if it failed,
        so a batch is never committed after a failure before it. Gathering waits only while
        both lanes are busy.
        """
        settings = self._writer.settings
        loop = asyncio.get_running_loop()
        pending: list[RecordSlice] = []
        pending_records = 0
        pending_bytes = 0
        deadline = 0.0
        inflight: collections.deque[asyncio.Task[None]] = collections.deque()
        previous_prepared: asyncio.Task[Prepared] | None = None
        lane_index = 0
        expected_seq = self._next_seq
        covered_seq = self._next_seq - 1  # the checkpoint the next batch continues from
        try:
            while True:
                item, timed_out = await _next_input(queue, inflight, deadline if pending else None)
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, RecordSlice):
                    self._note_gap(expected_seq, item.first_seq)
                    expected_seq = item.last_seq + 1
                    if not pending:
                        deadline = loop.time() + settings.linger_s
                    pending.append(item)
                    pending_records += item.count
                    pending_bytes += item.metered_bytes
                elif not timed_out:
                    break  # the read session ended (it follows forever, so: stream deleted)
                full = (
                    pending_records >= settings.batch_rows_max
                    or pending_bytes >= settings.batch_bytes_max
                )
                if pending and (timed_out or full):
                    batch = await asyncio.to_thread(
                        decode_slices, pending, self._lanes[0].uses_headers(), covered_seq
                    )
                    covered_seq = batch.last_seq_num
                    pending, pending_records, pending_bytes = [], 0, 0
                    if len(inflight) == len(self._lanes):
                        await inflight.popleft()  # frees the lane this batch is about to use
                    lane = self._lanes[lane_index]
                    lane_index = (lane_index + 1) % len(self._lanes)
                    previous = inflight[-1] if inflight else None
                    prepared = asyncio.create_task(
                        self._prepare(lane, batch, previous_prepared, previous)
                    )
                    previous_prepared = prepared
                    inflight.append(asyncio.create_task(self._apply(lane, prepared, previous)))
            while inflight:
                await inflight.popleft()
        finally:
            for task in inflight:
                task.cancel()

    def _note_gap(self, expected_seq: int, first_seq: int) -> None:
        """Records missing between the checkpoint and what the stream still has were trimmed
        or expired before they could be applied: say so, loudly, since they are lost."""
        if first_seq <= expected_seq or expected_seq == 0:
            return  # nothing missing; or a new materialization: the stream starts where it starts
        skipped = first_seq - expected_seq
        self._records_skipped += skipped
        log.warning(
            "materialization %s: records %d..%d of %s were trimmed or expired before they "
            "were applied; they are not in %s",
            self.definition.name,
            expected_seq,
            first_seq - 1,
            self.definition.source,
            self.definition.target,
        )

    async def _prepare(
        self,
        lane: Applier,
        batch: RecordBatch,
        previous_prepared: asyncio.Task[Prepared] | None,
        previous: asyncio.Task[None] | None,
    ) -> Prepared:
        """Prepare `batch` beside the previous batch's commit. If that commit is still running,
        the table will have the columns the previous batch was prepared for: shape this one
        for those (a batch that creates the table or adds columns does not hold up the next;
        `Applier.commit` checks the guess)."""
        columns = None
        if previous_prepared is not None and previous is not None and not previous.done():
            columns = (await previous_prepared).all_columns
        return await self._writer.prepare(lane.prepare, batch, columns)

    async def _apply(
        self,
        lane: Applier,
        prepared: asyncio.Task[Prepared],
        previous: asyncio.Task[None] | None,
    ) -> None:
        try:
            if previous is not None:
                await previous
            ready = await prepared
        except BaseException:
            prepared.cancel()
            raise
        commit = asyncio.ensure_future(self._writer.run(lane.commit, ready))
        # A commit runs to its end on the writer thread even if this task is cancelled (the
        # runner stops, or restarts from its checkpoint): its result must still reach the
        # watches, or a request waiting for its rows would not hear of those it rejected. The
        # watches hear first, so `wait_applied` never sees a batch applied that they missed.
        commit.add_done_callback(self._tell_watches)
        self._commits.add(commit)
        commit.add_done_callback(self._commits.discard)
        result = await asyncio.shield(commit)
        self._next_seq = result.last_seq_num + 1
        self._rows_applied += result.rows_applied
        self._rows_rejected += result.rows_rejected
        self._last_snapshot_id = result.snapshot_id
        self._last_commit_at = time.time()
        self._last_error = None
        self._state = "running"
        self._retry_s = _RETRY_S_MIN
        await self._trim_applied(result.last_seq_num + 1)

    def _tell_watches(self, commit: asyncio.Future[ApplyResult]) -> None:
        if commit.cancelled() or commit.exception() is not None:
            return  # nothing committed; `_apply` raises the error
        for watch in self._watches:
            watch.note(commit.result())

    async def _trim_applied(self, first_kept: int) -> None:
        """Free an ingest stream's applied records (its retention is infinite: see
        `Materializations._ensure_ingest_stream`).

        Safe for exactly once: everything below the floor is covered by the committed
        checkpoint of every materialization reading the stream, and a restart resumes at or
        above it.
        """
        definition = self.definition
        first_kept = min(first_kept, self._trim_floor())
        if definition.basin != INGEST_BASIN or first_kept - self._trimmed_to < TRIM_AFTER_RECORDS:
            return
        if await trim_stream(self._store, definition, first_kept):
            self._trimmed_to = first_kept


async def _next_input(
    queue: asyncio.Queue[RecordSlice | BaseException | None],
    inflight: collections.deque[asyncio.Task[None]],
    deadline: float | None,
) -> tuple[RecordSlice | BaseException | None, bool]:
    """The reader's next item, or `(None, True)` once the loop's clock passes `deadline`.

    A batch whose commit fails meanwhile raises its error here, at once. Waiting only on the
    queue left a failed batch unnoticed until two more batches needed its lane: with the disk
    full, a materialization whose source went quiet stayed "running", its lag growing, with no
    error in its status or the log.
    """
    loop = asyncio.get_running_loop()
    getter = asyncio.ensure_future(queue.get())
    try:
        while True:
            timeout = None if deadline is None else max(0.0, deadline - loop.time())
            done, _ = await asyncio.wait(
                {getter, *inflight}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if getter in done:
                return getter.result(), False
            # Commits finish in order (each awaits the one before): settle the finished ones.
            while inflight and inflight[0].done():
                inflight.popleft().result()
            if not done:
                return None, True
    finally:
        if not getter.done():
            getter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await getter


async def trim_stream(store: StreamStore, definition: Materialization, first_kept: int) -> bool:
    """Append a trim command to the materialization's source; False if the stream is gone."""
    command = validate_append_input(pb.AppendInput(records=[trim_record(first_kept)]))
    try:
        await store.append(definition.basin, definition.stream, command)
    except S2Error as error:  # the stream is being deleted: nothing left to free
        log.warning("could not trim %s: %s", definition.source, error.message)
        return False
    return True
