"""Group commit: many pending appends become one durable commit.

Every mutation of the store (appends of every stream, control-plane changes, background
deletions) is a job submitted here, from the event loop. `submit` runs the job's `prepare`
at once, on the loop, producing its writes (batch encoding happens here), and queues the job.
One *writer* thread takes every queued job (up to a group bound), commits their writes in one
transaction (one fsync pair for the whole group), and then, on the event loop, runs each job's
`on_done` callback in submission order. Nothing is acknowledged before the commit that holds it
has returned.

Why encoding runs on the loop, not in a thread of its own (it did until 2026-11-23): the
threads of one process take turns holding the GIL, and encoding holds it from start to end
(CRC-32C included, ~45 us per MiB), so an encoder thread overlapped nothing and added hand-offs:
every job woke it, and it and the loop traded the GIL back and forth. With it gone, 1000 x 1 KiB
gRPC sessions were faster in 8 alternating pairs of 8 and used less server CPU per batch
(`docs/adr/0001-storage.md`). The price is that the loop is busy for ~1 ms while it encodes a
1000-record batch, as it already is while validating one.

Jobs pass to the writer through a `queue.SimpleQueue`, not a lock and conditions: a condition's
`notify` from a thread holding the GIL, to one that must take the condition's lock back before it
can run, cost ~120 us per hand-off here (the two threads trade the GIL and the lock); a
`SimpleQueue.put` costs ~1.5 us.

If a commit (or a prepare) fails, state held in memory may run ahead of the disk. The committer
then fails that group and every job submitted before the failure was handled (their
generation is stale), and calls `on_failure` on the loop so the owner can fall back to durable
state; jobs submitted after that are accepted again. A commit that failed for want of space
(`StorageFull`) fails its jobs with `unavailable` (503, retryable): nothing was written, and the
same appends succeed once the operator frees space, with no restart. So does one that could not
reach the store (`StorageUnavailable`: PostgreSQL failing over), whose outcome may be unknown:
`unavailable` promises nothing about it. Any other failure is `storage` (500), which promises
that nothing of the commit was written.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from s2s.errors import S2Error
from server.storage.kv import (
    Conflict,
    Delete,
    Expect,
    KeyValueStore,
    Put,
    StorageFull,
    StorageUnavailable,
    Table,
    Write,
)

log = logging.getLogger(__name__)

GROUP_JOBS_MAX = 4096
GROUP_BYTES_MAX = 8 * 1024 * 1024
INFLIGHT_BYTES_MAX = 64 * 1024 * 1024


class Chain:
    """Jobs that build on each other, in submission order (one stream's appends: each expects
    the tail the one before it leaves). Once one is left out for a conflict, every later one
    is too, whether or not its own precondition happens to hold: a tail row another node
    wrote may equal the one a left-out job would have written, and a later job landing on it
    would be acknowledged ahead of the earlier one. The owner starts a new chain for the jobs
    it submits again."""

    def __init__(self) -> None:
        self.broken = False
        """Touched only by the writer thread."""


@dataclass
class _Job:
    prepare: Callable[[], Sequence[Write]]
    on_done: Callable[[S2Error | None], None]
    size_bytes: int
    generation: int
    chain: Chain | None = None
    writes: Sequence[Write] = field(default_factory=tuple)
    # Set if `prepare` raised; the writer fails the job in its turn.
    error: Exception | None = None


CONFLICT_ATTEMPTS = 3
"""Commits of one group whose preconditions another node broke meanwhile, before its jobs
that expect anything are given up on (they are told `CommitConflict`)."""

_Key = tuple[Table, bytes]


class CommitConflict(S2Error):
    """A job's `Expect` did not hold: another node changed what it was built on, and nothing of
    it was written. Its owner reloads and tries again (never a client's concern: retryable)."""

    def __init__(self) -> None:
        super().__init__("unavailable", "another node changed this stream or resource first")


@dataclass
class _Plan:
    """What one attempt at a group commit writes, and which of its jobs it leaves out."""

    writes: list[Write]
    rejected: set[int]


def _plan(group: Sequence[_Job], known: dict[_Key, bytes | None], give_up: bool) -> _Plan:
    """The group's writes, keeping only the last one to each key (the one that decides its
    value in a single transaction), after the store preconditions of the jobs they come from.

    Jobs are taken in order. A job's `Expect` on a key an earlier job of the group wrote is
    settled here; on a key the store told about after a conflict (`known`), too; any other is
    left to the store. A job whose expectation fails is left out whole, and the jobs after it
    see the values it did not write. `give_up`: leave out every job that expects anything.

    Appends to one stream in a group each rewrite its tail row; every LMDB call releases the
    GIL, and with the event loop busy, taking it back can cost a whole switch interval, so
    each call saved shortens the commit.
    """
    written: dict[_Key, Put | Delete] = {}
    unsettled: dict[_Key, bytes | None] = {}
    rejected: set[int] = set()
    for index, job in enumerate(group):
        needs: dict[_Key, bytes | None] = {}
        holds = job.chain is None or not job.chain.broken
        for write in job.writes if holds else ():
            if not isinstance(write, Expect):
                continue
            key = (write.table, write.key)
            if give_up:
                holds = False
            elif key in written:
                earlier = written[key]
                holds = isinstance(earlier, Put) and earlier.value == write.value
            elif key in known:
                holds = known[key] == write.value
                needs[key] = known[key]
            elif key in unsettled:
                holds = unsettled[key] == write.value
            else:
                needs[key] = write.value
            if not holds:
                break
        if not holds:
            rejected.add(index)
            if job.chain is not None:
                job.chain.broken = True
            continue
        unsettled.update(needs)
        for write in job.writes:
            if not isinstance(write, Expect):
                written[(write.table, write.key)] = write
    expects: list[Write] = [Expect(table, key, value) for (table, key), value in unsettled.items()]
    return _Plan(expects + list(written.values()), rejected)


def _failure_error(exc: Exception) -> S2Error:
    """What the jobs of a failed commit (and those queued behind it) are told."""
    if isinstance(exc, (StorageFull, StorageUnavailable)):
        return S2Error("unavailable", str(exc))
    return S2Error("storage", f"storage commit failed: {exc}")


def _prepare(job: _Job) -> None:
    try:
        job.writes = job.prepare()
    except Exception as exc:
        # Failed in order, by the writer: earlier groups must land (and be seen as durable)
        # before recovery resets in-memory state to the durable state.
        job.error = exc


class GroupCommitter:
    """The single writer of a `KeyValueStore`, batching concurrent jobs into shared commits."""

    def __init__(
        self,
        kv: KeyValueStore,
        on_failure: Callable[[], None],
        group_jobs_max: int = GROUP_JOBS_MAX,
        group_bytes_max: int = GROUP_BYTES_MAX,
        inflight_bytes_max: int = INFLIGHT_BYTES_MAX,
        on_committed: Callable[[int, int, float], None] | None = None,
    ) -> None:
        """`on_committed(jobs, bytes, seconds)` is told of each group commit, on the loop:
        its jobs, their reserved (metered) bytes, and how long the write and fsyncs took."""
        self._kv = kv
        self._on_failure = on_failure
        self._on_committed = on_committed
        self._group_jobs_max = group_jobs_max
        self._group_bytes_max = group_bytes_max
        self._inflight_bytes_max = inflight_bytes_max
        self._lock = threading.Lock()
        # Prepared jobs in submission order; None after the last one (closing).
        self._prepared: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        # What the writer took from `_prepared` but left for its next group.
        self._held: collections.deque[_Job | None] = collections.deque(maxlen=1)
        # Bumped on every failure; jobs of an older generation are failed, never written.
        self._generation = 0
        # The writer's most recent failure: jobs it makes stale fail with the same error.
        self._failure = S2Error("storage", "an earlier commit failed")
        # Writer-side: a run of identical failures (a full disk under load) is logged once.
        self._failing = False
        self._recovering = False
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writer: threading.Thread | None = None
        # Bytes submitted but not yet durable; producers wait (FIFO) while over the bound.
        self._inflight_bytes = 0
        self._space_waiters: collections.deque[tuple[int, asyncio.Future[None]]] = (
            collections.deque()
        )
        self.commits = 0
        self.conflicts = 0
        """Jobs left out because another node broke their preconditions (`CommitConflict`)."""

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._writer = threading.Thread(target=self._write_loop, name="s2s-writer", daemon=True)
        self._writer.start()

    async def reserve(self, size_bytes: int) -> None:
        """Wait until `size_bytes` more fit under the in-flight bound; FIFO, so order is kept."""
        if not self._space_waiters and (
            self._inflight_bytes + size_bytes <= self._inflight_bytes_max
        ):
            self._inflight_bytes += size_bytes
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (size_bytes, waiter)
        self._space_waiters.append(entry)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(size_bytes)
            else:
                self._space_waiters.remove(entry)
            raise

    def release(self, size_bytes: int) -> None:
        """Return reserved bytes (a job finished, or a reservation went unused)."""
        self._inflight_bytes -= size_bytes
        while self._space_waiters:
            need, waiter = self._space_waiters[0]
            if self._inflight_bytes + need > self._inflight_bytes_max and self._inflight_bytes:
                break
            self._space_waiters.popleft()
            if not waiter.done():
                self._inflight_bytes += need
                waiter.set_result(None)

    def submit(
        self,
        prepare: Callable[[], Sequence[Write]],
        on_done: Callable[[S2Error | None], None],
        reserved_bytes: int = 0,
        chain: Chain | None = None,
    ) -> None:
        """Prepare a job and queue it. `on_done(None)` runs on the loop after its writes are
        durable, in submission order; `on_done(error)` if they never will be, with
        `CommitConflict` if a precondition of its own or of an earlier job of its `chain` did
        not hold.

        Call from the event loop. `reserved_bytes` is what `reserve` granted for this job; it is
        released when the job completes either way.
        """
        assert self._loop is not None, "committer not started"
        with self._lock:
            if self._closing:
                rejected: S2Error | None = S2Error("unavailable", "server is shutting down")
            elif self._recovering:
                rejected = S2Error("storage", "storage is recovering from a failed commit")
            else:
                rejected = None
                job = _Job(prepare, on_done, reserved_bytes, self._generation, chain)
        if rejected is not None:
            self.release(reserved_bytes)
            on_done(rejected)
            return
        # Only the loop submits, so jobs reach the queue in submission order.
        _prepare(job)
        self._prepared.put(job)

    async def commit(self, writes: Sequence[Write]) -> None:
        """Durably apply writes (control plane, jobs), sharing a group with appends."""
        assert self._loop is not None, "committer not started"
        done: asyncio.Future[None] = self._loop.create_future()

        def on_done(error: S2Error | None) -> None:
            if done.done():
                return
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)

        self.submit(lambda: writes, on_done)
        await done

    async def close(self) -> None:
        """Finish every queued job, then stop the threads."""
        with self._lock:
            if not self._closing:
                self._closing = True
                self._prepared.put(None)
        if self._writer is not None:
            await asyncio.to_thread(self._writer.join)

    # --- threads -----------------------------------------------------------------------------

    def _take_group(self) -> list[_Job] | None:
        """The next prepared jobs to commit together (None: closed). A job whose prepare
        failed is a group of its own."""
        first = self._held.popleft() if self._held else self._prepared.get()
        if first is None:
            return None
        group = [first]
        group_bytes = first.size_bytes
        while first.error is None and len(group) < self._group_jobs_max:
            try:
                job = self._prepared.get_nowait()
            except queue.Empty:
                break
            if (
                job is None
                or job.error is not None
                or group_bytes + job.size_bytes > self._group_bytes_max
            ):
                self._held.append(job)
                break
            group.append(job)
            group_bytes += job.size_bytes
        return group

    def _write_loop(self) -> None:
        loop = self._loop
        assert loop is not None
        while (group := self._take_group()) is not None:
            stale = [job for job in group if job.generation != self._generation]
            if stale:
                loop.call_soon_threadsafe(self._fail, stale, self._failure)
                group = [job for job in group if job.generation == self._generation]
                if not group:
                    continue
            try:
                if group[0].error is not None:
                    raise group[0].error
                started_s = time.perf_counter()
                rejected = self._commit_group(group)
                commit_s = time.perf_counter() - started_s
            except Exception as exc:
                self._handle_failure(group, exc)
                continue
            self.commits += 1
            if self._failing:
                self._failing = False
                log.warning("commits succeed again")
            loop.call_soon_threadsafe(self._succeed, group, rejected, commit_s)

    def _commit_group(self, group: list[_Job]) -> set[int]:
        """Commit what of `group` can go in; returns the indices of the jobs left out because
        another node broke their preconditions."""
        known: dict[_Key, bytes | None] = {}
        for attempt in range(CONFLICT_ATTEMPTS + 1):
            plan = _plan(group, known, give_up=attempt == CONFLICT_ATTEMPTS)
            if not plan.writes:
                return plan.rejected
            try:
                self._kv.commit(plan.writes)
            except Conflict as conflict:
                known.update(conflict.actual)
                continue
            return plan.rejected
        raise AssertionError("the last attempt expects nothing, so it cannot conflict")

    def _handle_failure(self, group: list[_Job], exc: Exception) -> None:
        """Nothing in `group` landed; everything behind it was built on it, so fail it too."""
        error = _failure_error(exc)
        repeated = self._failing and error.message == self._failure.message
        log.log(
            logging.DEBUG if repeated else logging.ERROR,
            "commit of %d jobs failed: %s",
            len(group),
            error.message,
        )
        self._failing = True
        self._failure = error
        assert self._loop is not None
        with self._lock:
            self._generation += 1
            self._recovering = True
        self._loop.call_soon_threadsafe(self._fail_and_recover, group, error)

    # --- event loop callbacks ----------------------------------------------------------------

    def _succeed(self, group: list[_Job], rejected: set[int], commit_s: float) -> None:
        if self._on_committed is not None:
            self._on_committed(len(group), sum(job.size_bytes for job in group), commit_s)
        self.conflicts += len(rejected)
        for index, job in enumerate(group):
            self.release(job.size_bytes)
            job.on_done(CommitConflict() if index in rejected else None)

    def _fail(self, group: list[_Job], error: S2Error) -> None:
        for job in group:
            self.release(job.size_bytes)
            # A copy each: a raised exception takes the traceback of where it went, so one
            # instance shared by every caller (and kept in `_failure`) would hold their frames.
            job.on_done(S2Error(error.code, error.message))

    def _fail_and_recover(self, group: list[_Job], error: S2Error) -> None:
        """One callback, so no caller sees its failure before recovery is done."""
        self._fail(group, error)
        try:
            self._on_failure()
        finally:
            with self._lock:
                self._recovering = False
