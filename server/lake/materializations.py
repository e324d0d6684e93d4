"""The materializations this server runs: one `MaterializationRunner` per declaration, their
lifecycle (declare, pause, resume, delete), and their status as the frontends show it.

Declarations live in the lake (registry.py) and are loaded when the server starts; a stored
one that cannot run is kept out of the runners and named in errors about it until it is
deleted. Lifecycle changes take one lock, so a name is never declared twice at once and a
runner is never started and stopped concurrently.

Where each materialization runs (ADR 0013):

- A server whose stream store is its own (LMDB, or alone on PostgreSQL), or whose lake is
  its own (the embedded catalog), runs the materializations it declared (`owner`), as their
  source streams live in its store; in a catalog shared with other such servers it leaves
  theirs alone.
- Servers sharing both the stream store and the lake's catalog (`shared`) all see every
  stream and every declaration, and `owner` no longer matters: one of them at a time, the one
  that leads `LAKE_ROLE` (`KeyValueStore.leads`), runs all of them. Every server checks every
  `LEAD_CHECK_S` (`lead_forever`): whether it leads, and the declarations in the catalog, so
  declarations, pauses, resumes and deletions made through any server reach the one that
  runs them, and a server takes over when the leader's database session ends. The others'
  runners stand aside, following the checkpoint in the catalog (runner.py). A runner that has
  not yet noticed it lost the lead cannot apply a batch twice: its commit needs the checkpoint
  it read the batch after (apply.py). The leader reports its runners' states to the shared
  store, so a status asked of any server says what the runner says (runner_reports.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace

import duckdb

from s2s.config import StreamConfig
from s2s.errors import S2Error, invalid
from s2s.v1 import records_pb2 as pb
from server.lake import registry
from server.lake.apply import Applier
from server.lake.definition import (
    INGEST_BASIN,
    Materialization,
    MaterializationSpec,
    StreamCheck,
    build_materialization,
    not_found,
)
from server.lake.projection import check_projection, projection_refusal
from server.lake.runner import ON_ANOTHER_SERVER, MaterializationRunner, RunnerStatus, trim_stream
from server.lake.runner_reports import RunnerReporter, read_report
from server.lake.sql_rules import FunctionRules
from server.lake.sqltext import first_line
from server.lake.writer import LakeWriter
from server.reader import ReadLimits, ReadStart
from server.streamstore import StreamStore

log = logging.getLogger("s2s.lake")

LAKE_ROLE = "lake"
"""The leadership role (`KeyValueStore.leads`) of the server that runs the materializations
of servers sharing a stream store and a lake catalog. One role for all of them, not one per
materialization: DuckLake tells conflicts apart by table, not by row, so two servers
committing different materializations would refuse each other's commits whenever they
overlap, each of them advancing its checkpoint row in the one `s2s.checkpoints` table."""
LEAD_CHECK_S = 1.0
"""How often every server of a shared lake checks whether it leads, and reads the
declarations: the takeover time, give or take a runner's start."""


@dataclass(frozen=True)
class MaterializationStatus:
    """A materialization as the frontends show it: what it is, how far it got, how far behind
    its source it is."""

    definition: Materialization
    progress: RunnerStatus
    tail_seq_num: int | None
    """The source stream's next sequence number; None while the stream does not exist."""
    lag_seconds: float
    """Age of the oldest record not yet applied (0 when none waits), to the millisecond."""

    @property
    def lag_records(self) -> int:
        return max(0, (self.tail_seq_num or 0) - self.progress.next_seq_num)


class Materializations:
    def __init__(
        self,
        store: StreamStore,
        writer: LakeWriter,
        rules: FunctionRules,
        server_id: str,
        shared: bool = False,
    ) -> None:
        """`shared`: the stream store and the lake's catalog are shared with other servers
        (see the module's docstring)."""
        self._store = store
        self._writer = writer
        self._rules = rules
        self._server_id = server_id
        self._shared = shared
        self._leading = not shared
        """Whether this server runs the materializations: always, unless `shared`; then
        while it leads `LAKE_ROLE`, as last checked."""
        self._runners: dict[str, MaterializationRunner] = {}
        self._damaged: dict[str, str] = {}
        """Stored materializations that cannot run (registry.Damaged), by name: why."""
        self._lock = asyncio.Lock()
        self._reporter = RunnerReporter(store.kv, store.committer) if shared else None

    @classmethod
    async def load(
        cls,
        store: StreamStore,
        writer: LakeWriter,
        rules: FunctionRules,
        server_id: str,
        shared: bool = False,
    ) -> Materializations:
        """This server's stored materializations, each started unless it is paused. When
        `shared`, every stored one, none started: `lead_forever` starts them if this server
        leads."""
        loaded = cls(store, writer, rules, server_id, shared)
        stored = await writer.run(registry.load_all, writer.cursor)
        for damaged in stored.damaged:
            loaded._skip_damaged(damaged.name, damaged.reason)
        await loaded._add_stored(stored)
        return loaded

    async def _add_stored(self, stored: registry.Loaded) -> None:
        """Runners for the stored materializations this server does not know yet (and the
        damaged ones it has not reported yet)."""
        for damaged in stored.damaged:
            if damaged.name is not None and damaged.name not in self._damaged:
                self._skip_damaged(damaged.name, damaged.reason)
        for definition, checkpoint in stored.materializations:
            if definition.name in self._runners or definition.name in self._damaged:
                continue
            if not self._shared and definition.owner != self._server_id:
                continue  # another server's, in a shared catalog
            # Stored before its SQL was checked as it is now: it must not run unchecked.
            refusal = await self._writer.run(
                projection_refusal, self._writer.cursor, self._rules, definition
            )
            if refusal is not None:
                self._skip_damaged(definition.name, f"its SQL is refused: {refusal}")
                continue
            self._add_runner(definition, checkpoint)

    @property
    def leading(self) -> bool:
        """Whether this server runs the materializations (always, unless `shared`)."""
        return self._leading

    async def lead_forever(self) -> None:
        """With `shared`: `check_lead` every `LEAD_CHECK_S`, until cancelled."""
        failing = False
        while True:
            try:
                await self.check_lead()
                await self._report()
            except (duckdb.Error, OSError) as error:  # the catalog out of reach: next time
                if not failing:
                    log.warning("cannot read the lake's declarations: %s", error)
                failing = True
            except Exception:  # not expected: keep the traceback, and keep checking
                log.exception("the lake's leadership check failed")
            else:
                failing = False
            await asyncio.sleep(LEAD_CHECK_S)

    async def check_lead(self) -> None:
        """Whether this server leads `LAKE_ROLE` now; the declarations as the catalog has
        them now; then each materialization runs here if it leads and it is not paused, and
        stands aside otherwise."""
        leading = await asyncio.to_thread(self._store.kv.leads, LAKE_ROLE)
        if leading != self._leading:
            if leading:
                log.info("the lake's materializations run on this server now")
            else:
                log.warning(
                    "the lake's materializations no longer run on this server: another server "
                    "leads them, or the connection that held the lead was lost"
                )
        async with self._lock:
            self._leading = leading
            if not leading and self._reporter is not None:
                self._reporter.stop()
            if not leading:  # first, whatever the catalog says, or if it cannot be read
                for runner in self._runners.values():
                    if runner.runs_here:
                        await runner.step_aside()
            await self._follow_catalog()

    async def _report(self) -> None:
        """As the leader of a shared lake, write the runners' reports that are due."""
        if self._reporter is None or not self._leading:
            return
        statuses = {name: runner.status() for name, runner in self._runners.items()}
        await self._reporter.publish(statuses)

    async def _follow_catalog(self) -> None:
        """Take up the catalog's declarations: new ones, deleted ones, paused or resumed
        ones (through other servers). Called holding the lock."""
        stored = await self._writer.run(registry.load_all, self._writer.cursor)
        names = {definition.name for definition, _ in stored.materializations}
        names |= {damaged.name for damaged in stored.damaged if damaged.name is not None}
        for name in [name for name in self._damaged if name not in names]:
            del self._damaged[name]
        for name in [name for name in self._runners if name not in names]:
            await self._runners.pop(name).stop("deleted")
        for definition, _ in stored.materializations:
            runner = self._runners.get(definition.name)
            if runner is None or runner.definition == definition:
                continue
            if runner.definition.with_paused(definition.paused) != definition:
                # Deleted and declared again through another server: a runner of its own.
                await self._runners.pop(definition.name).stop("deleted")
                continue
            runner.definition = definition
            if definition.paused:
                await runner.stop("paused")
        await self._add_stored(stored)
        for runner in self._runners.values():
            if not runner.definition.paused:
                await self._place(runner)

    async def _place(self, runner: MaterializationRunner) -> None:
        """Run an unpaused materialization here if this server runs them, else leave it to the
        one that does."""
        if self._leading:
            runner.start()
        else:
            await runner.step_aside()

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

    def _add_runner(self, definition: Materialization, checkpoint: registry.Checkpoint) -> None:
        runner = MaterializationRunner(
            definition,
            checkpoint,
            self._store,
            self._writer,
            self._trim_floor(definition),
            elsewhere=not self._leading,
        )
        self._runners[definition.name] = runner
        if not definition.paused and self._leading:
            runner.start()

    def release_waiters(self) -> None:
        """Shutdown has begun: ingest requests waiting for a commit stop waiting."""
        for runner in self._runners.values():
            runner.release_waiters()

    async def close(self) -> None:
        for runner in self._runners.values():
            await runner.stop("stopped")

    @contextlib.asynccontextmanager
    async def suspended(self) -> AsyncIterator[None]:
        """Every runner stopped, with no lifecycle change meanwhile, while the lake's DuckDB
        instance is reopened inside the block (reopen.py); requests waiting for commits keep
        waiting. The runners start again after it, unless the writer was left closed (the
        server is shutting down)."""
        async with self._lock:
            runners = list(self._runners.values())
            running = [await runner.suspend() for runner in runners]
            try:
                yield
            finally:
                if self._writer.is_open:
                    for runner, was_running in zip(runners, running, strict=True):
                        runner.resume(was_running)

    def close_lanes(self) -> None:
        """On the writer thread, inside `suspended`: close every runner's cursors."""
        for runner in self._runners.values():
            runner.close_lanes()

    # --- lifecycle -----------------------------------------------------------------------

    async def create(
        self, spec: MaterializationSpec, authorize: StreamCheck | None = None
    ) -> MaterializationStatus:
        """Declare and start a materialization; `authorize` is called with its source stream
        (the spec's, or the table's ingest stream) before anything is created."""
        definition = build_materialization(spec, owner=self._server_id)
        if authorize is not None:
            authorize(definition.basin, definition.stream)
        self._refuse_encrypted(definition)
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
            created = await self._writer.run(
                registry.insert, self._writer.cursor, self._writer.files, definition
            )
            if not created:  # another server sharing the catalog has one of this name
                if self._shared:  # known here from now on, as ingest expects (`_declare`)
                    await self._follow_catalog()
                raise _already_exists(definition.name)
            self._add_runner(definition, registry.Checkpoint(-1, 0, 0))
        return await self.status(definition.name)

    def _refuse_encrypted(self, definition: Materialization) -> None:
        """The lake cannot read a stream encrypted with a client's key: the server never has
        the key. (A source created encrypted later stops its materialization with an error.)"""
        try:
            cipher = self._store.get_stream(definition.basin, definition.stream).cipher
        except S2Error:
            return  # absent for now: the materialization waits for it
        if cipher is not None:
            raise invalid(
                f"stream {definition.stream!r} is encrypted ({cipher}) with a key only its "
                "clients hold: the lake cannot read it"
            )

    async def _ensure_ingest_stream(self, stream: str) -> None:
        """Create the ingest basin and stream if absent; never touch an existing config."""
        # Infinite retention: rows wait for their materialization however long it is paused;
        # the runner trims what it has applied (runner.py).
        await self._store.create_stream_if_absent(
            INGEST_BASIN, stream, StreamConfig(retention="infinite")
        )

    def _check_projection(self, definition: Materialization) -> None:
        check_projection(self._writer.cursor, self._rules, definition)
        if definition.select is None and definition.where is None:
            return
        try:
            Applier(self._writer.cursor, self._writer.files, definition).check_projection()
        except Exception as error:
            raise invalid(f"select/where do not compile: {first_line(error)}") from None

    async def pause(self, name: str) -> MaterializationStatus:
        async with self._lock:
            runner = self.runner(name)
            await runner.stop("paused")
            runner.definition = runner.definition.with_paused(True)
            await self._writer.run(
                registry.update, self._writer.cursor, self._writer.files, runner.definition
            )
        return await self.status(name)

    async def resume(self, name: str) -> MaterializationStatus:
        async with self._lock:
            runner = self.runner(name)
            runner.definition = runner.definition.with_paused(False)
            await self._writer.run(
                registry.update, self._writer.cursor, self._writer.files, runner.definition
            )
            await self._place(runner)
        return await self.status(name)

    async def delete(self, name: str) -> None:
        """Forget a materialization. What it applied from an ingest stream is trimmed from the
        stream, so a materialization declared later on it (ingest declares one on first use)
        does not apply those rows a second time."""
        async with self._lock:
            if name in self._damaged:
                await self._writer.run(
                    registry.delete, self._writer.cursor, self._writer.files, name
                )
                del self._damaged[name]
                return
            runner = self.runner(name)
            await runner.stop("deleted")
            # Read after stop: a commit finishing after the cancel is in the stored checkpoint.
            stored = await self._writer.run(registry.checkpoint, self._writer.cursor, name)
            await self._writer.run(registry.delete, self._writer.cursor, self._writer.files, name)
            del self._runners[name]
            definition = runner.definition
            if definition.basin == INGEST_BASIN and stored is not None:
                floor = min(stored.last_seq_num + 1, self._trim_floor(definition)())
                if floor > 0:
                    await trim_stream(self._store, definition, floor)

    def _trim_floor(self, definition: Materialization) -> Callable[[], int]:
        """The lowest next sequence number among this server's materializations of the same
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

    # --- lookups -------------------------------------------------------------------------

    def runner(self, name: str) -> MaterializationRunner:
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

    def ingest_runner(self, table: str) -> MaterializationRunner | None:
        """The first declared materialization of `table`'s ingest stream, if there is one."""
        table = table.lower()
        return next(
            (
                r
                for r in self._runners.values()
                if r.definition.basin == INGEST_BASIN and r.definition.target.lower() == table
            ),
            None,
        )

    async def status(self, name: str) -> MaterializationStatus:
        runner = self.runner(name)
        if not self._leading:  # another server applies it: its progress is in the catalog
            async with self._lock:  # not while the lake reopens (`suspended`)
                await runner.refresh()
        definition = runner.definition
        progress = runner.status()
        if progress.state == ON_ANOTHER_SERVER:
            progress = await self._as_reported(name, progress)
        tail_seq: int | None = None
        lag_s = 0.0
        try:
            tail = await self._store.check_tail(definition.basin, definition.stream)
            tail_seq = tail.seq_num
            if tail_seq > progress.next_seq_num:
                lag_s = await self._oldest_unapplied_age_s(definition, progress.next_seq_num)
        except S2Error:
            pass  # the source does not exist (yet): no lag to report
        return MaterializationStatus(definition, progress, tail_seq, round(lag_s, 3))

    async def _as_reported(self, name: str, progress: RunnerStatus) -> RunnerStatus:
        """`progress` (the catalog's checkpoint) with the state, error and last commit the
        leader reports, if it reported lately."""
        report = await read_report(self._store.kv, name)
        if report is None:
            return progress
        return replace(
            progress,
            state=report.state,
            last_error=report.last_error,
            last_commit_at=report.last_commit_at,
            last_snapshot_id=(
                report.last_snapshot_id
                if progress.last_snapshot_id is None
                else progress.last_snapshot_id
            ),
            records_skipped=report.records_skipped,
        )

    async def statuses(self) -> list[MaterializationStatus]:
        """Every running or paused materialization's, by name."""
        return [await self.status(name) for name in sorted(self._runners)]

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


def _already_exists(name: str) -> S2Error:
    return S2Error("resource_already_exists", f"materialization {name!r} already exists")
