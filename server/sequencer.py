"""The sequencer: the one owner of a stream's tail, which orders appends and acknowledges them.

Invariants (each stream has exactly one `StreamSequencer` in the process):

- Appends are checked and numbered synchronously on the event loop, in arrival order, against
  the *pending* state (the durable state plus every append still in flight), so pipelined
  appends get consecutive sequence numbers without waiting for each other's fsync.
- Checks happen in the contract's order (docs/s2-compat.md §7): stream being deleted, the
  producer of an idempotent batch, fencing token, match_seq_num, timestamps. A failed check
  changes nothing.
- A batch is acknowledged only after the group commit holding it returned (it is durable); acks
  of one stream complete in sequence order because the committer completes jobs in order.
- The durable state only moves forward, and followers are woken only after it did: a reader
  never sees a record that is not durable.
- If a commit fails, the pending state is reset to the durable state (see `resync`), so a
  failed batch's sequence numbers are assigned again to the next successful batch: no number
  is skipped, and none that was acknowledged is ever reused.
- Every batch's commit expects the stream's tail row to be what the batch was numbered from
  (`Expect`). Where several nodes share the store, another node may have appended meanwhile:
  the commit then leaves the batch out (`CommitConflict`), and so every batch of the stream
  after it. Once all of them are back, the sequencer reloads the tail and the stream's record
  from the store and numbers and checks them again, in their order, before any newer append
  (`_reload_and_retry`): a conflict is never the client's concern, and a `match_seq_num` or
  fencing token is checked against the tail the batch actually lands on.
- Where several nodes share the store, every batch's commit also expects the stream's and its
  basin's records to be the ones its checks used (`StoredStream.records`): a node that was
  frozen (SIGSTOP, a long pause) while another reconfigured or deleted the stream or its basin
  cannot append on the old config; the commit conflicts, and the reload takes the new one.
- An idempotent batch (`ValidatedBatch.producer`) is checked against its producer's state
  before fencing and `match_seq_num` (`server/producers.py`): a retry of a batch that was
  written gets its original ack, even if its conditions no longer hold, and is not written
  again. A new one writes its producer's row in its own commit and expects the row before it,
  as it expects the tail row: the row and the batch are durable together, so a retry after a
  crash between the commit and the ack finds it. Taking the stream back from the store (a
  conflict, a failed commit) takes its producers back too (a new producer epoch).

The invariants that a bug elsewhere could break are asserted where they would break, once per
batch, never per record: a batch's numbers are contiguous, one per record (`_sequence`, before
anything is written), and a batch becomes durable exactly where the durable tail ends, with a
timestamp no older than it (`submit`'s `on_done`), which is both "acks complete in order" and
"the durable tail only moves forward".
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import NamedTuple, TypeVar

from s2s.config import ResolvedStreamConfig
from s2s.errors import FencingTokenMismatch, S2Error, SeqNumMismatch, invalid
from s2s.records import Fence, Trim, ValidatedBatch
from s2s.wire import U64_MAX, append_ack_bytes
from server.clock import Clock
from server.encryption import AES_GCM_SEQ_NUM_MAX
from server.producers import ProducerCache, ProducerState, is_new, new_epoch
from server.storage.committer import Chain, CommitConflict, GroupCommitter
from server.storage.kv import Expect, Put, Table, Write
from server.storage.layout import (
    ProducerRow,
    TailRow,
    batch_key,
    encode_batch,
    producer_key,
    sid_key,
    timestamp_key,
)
from server.usage.accounting import StreamAccount

log = logging.getLogger(__name__)

AFTER_REFUSED = (
    "not written: an append submitted before it on this stream was refused when it was "
    "numbered again after another node's append"
)
NOT_RETRIED = "not written: numbered again after another node's append, and not retried"
SYNC_WAIT_S = 5.0
"""How long `sync` waits for this node's own appends in flight to land past the stored tail;
after it, the call it serves fails `unavailable` (`NOT_CAUGHT_UP`) rather than answer from a
view that may miss acknowledged appends."""
NOT_CAUGHT_UP = (
    "this node could not catch up with the stream's tail in time (its own appends are still "
    "being numbered again after other nodes' appends): retry"
)


class StreamPosition(NamedTuple):
    seq_num: int
    timestamp: int


class AppendAck(NamedTuple):
    """Named tuples, not frozen dataclasses: one ack and three positions are built per append,
    and a frozen dataclass takes twice as long to build (~0.8 us against ~0.4 here)."""

    start: StreamPosition
    end: StreamPosition
    tail: StreamPosition

    def encode(self) -> bytes:
        """The protobuf `AppendAck` message."""
        return append_ack_bytes(self.start, self.end, self.tail)


class StoredStream(NamedTuple):
    """A stream as the store holds it now: what a sequencer reloads after a conflict."""

    config: ResolvedStreamConfig
    tail: TailRow | None
    """None: no tail row stored yet (nothing appended)."""
    records: tuple[Expect, ...] = ()
    """The stream's and its basin's records as stored, which `config` was read from, for each
    commit to expect unchanged where other nodes write too; empty where none does."""


Reload = Callable[[], Awaitable[StoredStream]]
"""Reads the stream back from the store; raises the S2Error its appends should fail with if
it was deleted meanwhile."""
ReadProducer = Callable[[str], Awaitable[ProducerRow | None]]
"""Reads a producer's row of the stream from the store (None: none); raises an S2Error if it
cannot."""

T = TypeVar("T")


def _pass_on(answer: asyncio.Future[T], outcome: asyncio.Future[T]) -> None:
    """Resolve `answer` as `outcome` was, unless whoever awaited it gave up."""
    if outcome.cancelled():
        if not answer.done():
            answer.cancel()
        return
    error = outcome.exception()  # read even if unused: asyncio logs an unread one
    if answer.done():
        return
    if error is None:
        answer.set_result(outcome.result())
    else:
        answer.set_exception(error)


class StreamSequencer:
    """Owns one stream's tail: checks, numbers, commits and acknowledges its appends."""

    def __init__(
        self,
        sid: int,
        name: str,
        config: ResolvedStreamConfig,
        durable: TailRow | None,
        committer: GroupCommitter,
        clock: Clock,
        reload: Reload,
        cipher: str | None = None,
        account: StreamAccount | None = None,
        records: tuple[Expect, ...] = (),
        *,
        producers: ProducerCache[AppendAck],
        read_producer: ReadProducer,
    ) -> None:
        """`durable`: the stored tail row, None if there is none yet. `account`: where each
        durable batch is reported (server/usage), if anywhere. `records`: as in
        `StoredStream`, read with `config`. `producers`: the server's producer states, which
        this stream's are read into by `read_producer`."""
        self.sid = sid
        self.name = name
        self.config = config
        self._records = records
        self.cipher = cipher
        """The stream's cipher, fixed at creation (None: plaintext); the store seals and
        opens its records."""
        self._seq_num_max = AES_GCM_SEQ_NUM_MAX if cipher == "aes-256-gcm" else U64_MAX
        self.durable = TailRow() if durable is None else durable
        self.pending = self.durable
        self._unstored: TailRow | None = self.durable if durable is None else None
        """The state standing for "no tail row stored" (what a first append expects)."""
        self.deleting = False
        self.inflight = 0
        self.followers = 0
        self._committer = committer
        self._clock = clock
        self._reload = reload
        self._account = account
        self._durable_advanced = asyncio.Event()
        self._queued = 0
        """Batches of this stream at the committer, not yet done."""
        self._conflicted: list[tuple[ValidatedBatch, asyncio.Future[AppendAck], float]] = []
        """Batches left out for a conflict, in their order, with their acks and submit times."""
        self._retried: asyncio.Future[None] | None = None
        """Set from the first conflict until its batches are queued again: newer appends wait."""
        self._refusals = 0
        """Counts retries after a conflict that refused or failed a batch (`in_doubt`)."""
        self._retry: asyncio.Future[None] | None = None
        self._drained: asyncio.Future[None] | None = None
        """Set while a retry waits for the batches it queued again (`_drain`)."""
        self._chain = Chain()
        """This stream's batches at the committer, each built on the one before."""
        self._refreshing: asyncio.Future[None] | None = None
        self._refresh_again = False
        self._reconfigured = 0
        """Counts `reconfigure` calls: a refresh whose read began before one must not put
        back the config it read, which may predate it."""
        self._producers = producers
        self._read_producer = read_producer
        self._producer_epoch = new_epoch()
        self._producers_loading: dict[str, asyncio.Future[None]] = {}

    @property
    def tail(self) -> StreamPosition:
        """The durable tail: next sequence number and the last record's timestamp."""
        return StreamPosition(self.durable.next_seq, self.durable.last_timestamp)

    @property
    def busy(self) -> bool:
        return self.inflight > 0 or self.followers > 0

    def in_doubt(self) -> int | None:
        """A mark of the batches of this stream in flight here now (None: there are none),
        for `submit`: a batch submitted while they are may have been pipelined on them (an
        append session's next batch), so where another node's append makes one of them be
        refused after all, it must not be written either."""
        busy = self._queued or self._retried is not None or self.pending is not self.durable
        return self._refusals if busy else None

    async def submit(
        self, batch: ValidatedBatch, doubt: int | None = None
    ) -> asyncio.Future[AppendAck]:
        """Sequence one batch now; the returned future resolves once it is durable. `doubt`:
        `in_doubt()` when the batch was first submitted, if it is submitted again.

        Callers that pipeline (append sessions) keep the futures in order; the sequence numbers
        are fixed when this returns (unless another node appended first: see `_reload_and_retry`).
        """
        if doubt is None:
            doubt = self.in_doubt()
        # Counted from the first line: a sequencer with appends in flight is never evicted.
        self.inflight += 1
        loop = asyncio.get_running_loop()
        submitted_s = loop.time()
        reserved = False
        try:
            # Every wait comes back to the top: the batch is numbered only once, with no wait
            # in between, no retry after a conflict is under way (those batches came first),
            # its producer's state of this epoch is in memory, and its bytes are reserved.
            while True:
                if self._retried is not None:
                    if reserved:  # the retry may need the room to queue its batches again
                        self._committer.release(batch.metered_bytes)
                        reserved = False
                    await asyncio.shield(self._retried)
                    continue
                if doubt is not None and doubt != self._refusals:
                    # Submitted while earlier batches of the stream were in flight here, and
                    # one of them was refused since: this one may have been pipelined on it.
                    raise S2Error("transaction_conflict", AFTER_REFUSED)
                producer = None
                if batch.producer is not None:
                    producer = self._producers.get(
                        self.sid, batch.producer.id, self._producer_epoch
                    )
                    if producer is None:
                        await self._producer_read(batch.producer.id)
                        continue
                if not reserved:
                    await self._committer.reserve(batch.metered_bytes)
                    reserved = True
                    continue
                break
            ack: asyncio.Future[AppendAck] = loop.create_future()
            self._queue(batch, ack, submitted_s, producer)
        except BaseException:
            self.inflight -= 1
            if reserved:
                self._committer.release(batch.metered_bytes)
            raise
        if producer is None:
            return ack
        # The caller may cancel the future it gets (a session that ended); the batch's own
        # outcome must still reach its retries, which wait on it (`ProducerState.inflight`).
        answer: asyncio.Future[AppendAck] = loop.create_future()
        ack.add_done_callback(functools.partial(_pass_on, answer))
        return answer

    async def _producer(self, producer_id: str) -> ProducerState[AppendAck]:
        """The producer's state of this epoch, read from the store first if it is not in
        memory."""
        while True:
            state = self._producers.get(self.sid, producer_id, self._producer_epoch)
            if state is not None:
                return state
            await self._producer_read(producer_id)

    async def _producer_read(self, producer_id: str) -> None:
        """Read the producer's row into memory (one read per producer at a time: a caller
        arriving during one waits for it)."""
        loading = self._producers_loading.get(producer_id)
        if loading is None:
            loading = asyncio.ensure_future(self._load_producer(producer_id))
            self._producers_loading[producer_id] = loading
            loading.add_done_callback(functools.partial(self._producer_loaded, producer_id))
        await asyncio.shield(loading)

    async def _load_producer(self, producer_id: str) -> None:
        epoch = self._producer_epoch
        row = await self._read_producer(producer_id)
        # Read under an older epoch (the stream was taken back from the store meanwhile): the
        # caller reads it again.
        if epoch == self._producer_epoch:
            self._producers.put(self.sid, producer_id, ProducerState(row, epoch))

    def _producer_loaded(self, producer_id: str, loading: asyncio.Future[None]) -> None:
        if self._producers_loading.get(producer_id) is loading:
            del self._producers_loading[producer_id]
        if not loading.cancelled():
            loading.exception()  # its waiters raise it; read here in case none is left

    def _queue(
        self,
        batch: ValidatedBatch,
        ack: asyncio.Future[AppendAck],
        submitted_s: float,
        producer: ProducerState[AppendAck] | None = None,
    ) -> None:
        """Check and number `batch` against the pending state and hand it to the committer,
        with its bytes reserved; raises (changing nothing) if a check fails. `producer`: the
        state of the batch's producer, if it has one; a retry of one of its batches is
        answered here, and takes neither the reservation nor a place in flight."""
        if self.deleting:
            raise S2Error("stream_deletion_pending", f"stream {self.name!r} is being deleted")
        if producer is not None:
            assert batch.producer is not None
            if not is_new(producer.pending, batch.producer):
                self._answer_retry(batch, ack, producer)
                return
        first_seq, timestamps, after = self._sequence(batch)
        before, self.pending = self.pending, after
        expected = None if before is self._unstored else before.encode()
        records = self._records  # those the checks just used
        sid = self.sid
        bodies = batch.bodies
        headed = batch.headed
        metered = batch.metered_sizes
        count = batch.count
        metered_bytes = batch.metered_bytes
        arrival_ms = after.last_write_ms
        loop = asyncio.get_running_loop()
        start = StreamPosition(first_seq, timestamps[0])
        end = StreamPosition(after.next_seq, after.last_timestamp)
        producer_writes: tuple[Write, ...] = ()
        row_before = row_after = None
        if producer is not None:
            assert batch.producer is not None
            batch_seq = batch.producer.seq
            row_before = producer.pending
            row_after = (
                ProducerRow.first(batch_seq, start, end, arrival_ms)
                if row_before is None
                else row_before.then(batch_seq, start, end, arrival_ms)
            )
            producer.pending = row_after
            producer.inflight[batch_seq] = ack
            key = producer_key(sid, batch.producer.id)
            producer_writes = (
                Expect(Table.PRODUCERS, key, None if row_before is None else row_before.encoded),
                Put(Table.PRODUCERS, key, row_after.encoded),
            )

        def prepare() -> Sequence[Write]:
            last_seq = after.next_seq - 1
            value = encode_batch(bodies, headed, first_seq, timestamps, metered, arrival_ms)
            tail_key = sid_key(sid)
            return (
                *records,
                Expect(Table.TAILS, tail_key, expected),
                *producer_writes,
                Put(Table.BATCHES, batch_key(sid, last_seq), value),
                Put(Table.TIMESTAMPS, timestamp_key(sid, timestamps[-1], last_seq), b""),
                Put(Table.TAILS, tail_key, after.encode()),
            )

        def on_done(error: S2Error | None) -> None:
            self._queued -= 1
            drained = self._drained
            if self._queued == 0 and drained is not None and not drained.done():
                drained.set_result(None)
            if isinstance(error, CommitConflict):
                self._conflicted.append((batch, ack, submitted_s))
                if self._retried is None:
                    self._retried = loop.create_future()
                if self._queued == 0:
                    self._start_retry()
                return
            self.inflight -= 1
            if error is not None and self.pending is after:
                # Refused before it was queued (shutting down, recovering): nothing was built
                # on it. After a failed commit, `resync` resets everything anyway.
                self.pending = before
            if producer is not None:
                self._producer_done(producer, row_before, row_after, error)
            if error is None:
                durable = self.durable
                assert first_seq == durable.next_seq, (
                    f"stream {self.name!r}: batch {first_seq}..{after.next_seq - 1} became "
                    f"durable on a durable tail at {durable.next_seq}: acks out of order"
                )
                assert after.last_timestamp >= durable.last_timestamp, (
                    f"stream {self.name!r}: durable timestamp would move back from "
                    f"{durable.last_timestamp} to {after.last_timestamp}"
                )
                self.durable = after
                self.wake_followers()
                if self._account is not None:
                    self._account.appended(
                        self.config.storage_class,
                        count,
                        metered_bytes,
                        after.next_seq,
                        loop.time() - submitted_s,
                    )
            if ack.cancelled():  # the caller gave up waiting; the outcome stands regardless
                return
            if error is None:
                ack.set_result(AppendAck(start, end, self.tail))
            else:
                ack.set_exception(error)
            if self._queued == 0 and self._conflicted:
                # The last batch of the stream came back after a conflict (failed otherwise).
                self._start_retry()

        self._queued += 1
        self._committer.submit(prepare, on_done, metered_bytes, self._chain)

    def _producer_done(
        self,
        producer: ProducerState[AppendAck],
        row_before: ProducerRow | None,
        row_after: ProducerRow | None,
        error: S2Error | None,
    ) -> None:
        """A producer's batch is durable (`error` None) or never will be."""
        assert row_after is not None
        producer.inflight.pop(row_after.last_batch_seq, None)
        if error is not None:
            if producer.pending is row_after:
                producer.pending = row_before  # as for the tail, above
            return
        durable = producer.durable
        assert durable is None or durable.last_batch_seq + 1 == row_after.last_batch_seq, (
            f"stream {self.name!r}: batch {row_after.last_batch_seq} of a producer became "
            f"durable after its batch {durable.last_batch_seq}"
        )
        producer.durable = row_after

    def _answer_retry(
        self,
        batch: ValidatedBatch,
        ack: asyncio.Future[AppendAck],
        producer: ProducerState[AppendAck],
    ) -> None:
        """`batch` is a retry of one of its producer's remembered batches: answer it with that
        batch's ack (once that is durable, if it is still in flight); nothing is written."""
        assert batch.producer is not None
        self.inflight -= 1
        self._committer.release(batch.metered_bytes)
        if self._account is not None:
            self._account.retried()
        original = producer.inflight.get(batch.producer.seq)
        if original is not None:
            original.add_done_callback(functools.partial(_pass_on, ack))
            return
        assert producer.pending is not None
        positions = producer.pending.ack_of(batch.producer.seq)
        assert positions is not None, "is_new answered a retry of a batch it does not remember"
        start, end = positions
        ack.set_result(AppendAck(StreamPosition(*start), StreamPosition(*end), self.tail))

    def _start_retry(self) -> None:
        if self._retry is not None and not self._retry.done():
            return  # the retry under way takes these batches too, in their order
        # The task is kept: the loop holds only a weak reference to it.
        self._retry = asyncio.ensure_future(self._reload_and_retry())

    async def _reload_and_retry(self) -> None:
        """Every batch of the stream is back from the committer and some were left out for a
        conflict: take the stream as the store holds it, then queue those batches again, in
        order, and wait for them; those another node got ahead of again are taken in the next
        round. Appends submitted meanwhile wait (`_retried`) until no batch of the stream is
        in doubt, so none of them is numbered before a batch submitted ahead of it."""
        retried = self._retried
        assert retried is not None
        loop = asyncio.get_running_loop()
        failure: S2Error | None = None
        conflicted: list[tuple[ValidatedBatch, asyncio.Future[AppendAck], float]] = []
        try:
            while self._conflicted and failure is None:
                assert self._queued == 0
                conflicted, self._conflicted = self._conflicted, []
                self._take(await self._reload())
                while conflicted:
                    batch, ack, submitted_s = conflicted[0]
                    await self._committer.reserve(batch.metered_bytes)
                    try:
                        producer = (
                            None
                            if batch.producer is None
                            else await self._producer(batch.producer.id)
                        )
                    except S2Error as error:  # its producer's row could not be read
                        self._committer.release(batch.metered_bytes)
                        del conflicted[0]
                        self._fail_retry(ack, error)
                        failure = S2Error("transaction_conflict", AFTER_REFUSED)
                        break
                    except BaseException:
                        self._committer.release(batch.metered_bytes)
                        raise
                    del conflicted[0]
                    try:
                        self._queue(batch, ack, submitted_s, producer)
                    except S2Error as error:
                        self._committer.release(batch.metered_bytes)
                        self._fail_retry(ack, error)
                        # The batches after it were pipelined on it (an append session's next
                        # ones): as after a refusal at submission, none of them is written.
                        failure = S2Error("transaction_conflict", AFTER_REFUSED)
                        break
                await self._drain(loop)
        except S2Error as error:  # the stream was deleted meanwhile
            self.mark_deleting()
            failure = error
        except Exception as error:  # the store could not be read: the client may retry
            failure = S2Error("unavailable", f"the stream could not be read back: {error}")
        except asyncio.CancelledError:
            failure = S2Error("unavailable", "server is shutting down")
            raise
        finally:
            if failure is not None:
                self._refusals += 1  # the appends submitted meanwhile fail too (`in_doubt`)
            # Left out again after a failure: those came before the failed one, but appends
            # behind them were failed with it, so they are not written either.
            for _, ack, _ in [*conflicted, *self._conflicted]:
                self._fail_retry(ack, failure or S2Error("transaction_conflict", NOT_RETRIED))
            self._conflicted = []
            self._retried = None
            retried.set_result(None)

    async def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait until no batch of the stream is at the committer."""
        if self._queued:
            self._drained = loop.create_future()
            try:
                await self._drained
            finally:
                self._drained = None

    def _take(self, stored: StoredStream) -> None:
        """Continue from the stream as the store holds it: nothing of this node's is in flight."""
        self.config = stored.config
        self._records = stored.records
        if stored.tail is None:
            self.durable = TailRow()
            self._unstored = self.durable
        else:
            self.durable = stored.tail
            self._unstored = None
        self.pending = self.durable
        self._chain = Chain()
        self._producer_epoch = new_epoch()  # and its producers as the store holds them
        self.wake_followers()  # records other nodes appended are readable here now

    async def sync(self) -> None:
        """Where other nodes write the stream too: catch up with the tail the store holds
        now, so that what this node answers next (check-tail, a read's bounds, a refused
        `match_seq_num` or fencing token) includes every append acknowledged anywhere before
        the call. This node's own appends in flight are waited for (up to `SYNC_WAIT_S`, else
        `unavailable`): they land after what the store holds, since their commits expect the
        tail they were numbered from and are numbered again past it. Raises if the stream was
        deleted."""
        try:
            stored = await self._reload()
        except S2Error:
            self.mark_deleting()
            raise
        if stored.tail is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SYNC_WAIT_S
        while self.durable.next_seq < stored.tail.next_seq and not self.deleting:
            if self.pending is self.durable and not self._queued and self._retried is None:
                self._take(stored)
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                # Answering from this node's view now could miss acknowledged appends.
                raise S2Error("unavailable", NOT_CAUGHT_UP)
            await self.wait_durable_beyond(self.durable.next_seq, min(remaining, 0.05))

    def refresh(self) -> None:
        """Another node appended to the stream or changed its record: read both back, so that
        reads, followers and check-tail here see those records, appends take the stored config,
        and a deletion refuses them. One read at a time; notices that arrive meanwhile make one
        more."""
        if self._refreshing is not None:
            self._refresh_again = True
            return
        self._refreshing = asyncio.ensure_future(self._refresh())

    async def _refresh(self) -> None:
        try:
            self._refresh_again = True
            while self._refresh_again:
                self._refresh_again = False
                reconfigured = self._reconfigured
                try:
                    stored = await self._reload()
                except S2Error:  # deleted through another node
                    self.mark_deleting()
                    return
                if self._reconfigured != reconfigured:
                    stored = stored._replace(config=self.config, records=self._records)
                # The config holds from the next batch numbered, appends in flight or not
                # (those numbered on the old one expect the old records, and conflict).
                self.config = stored.config
                self._records = stored.records
                # This node's own appends in flight will meet the new tail in their commit's
                # precondition, and reload after it.
                idle = self.pending is self.durable and not self._queued and self._retried is None
                behind = stored.tail is not None and stored.tail.next_seq > self.durable.next_seq
                if idle and behind:
                    self._take(stored)
        except Exception as error:  # the store could not be read: the next notice tries again
            log.warning(
                "could not read stream %r back after another node's append: %s", self.name, error
            )
        finally:
            self._refreshing = None

    def _fail_retry(self, ack: asyncio.Future[AppendAck], error: S2Error) -> None:
        self.inflight -= 1
        if not ack.cancelled():
            ack.set_exception(error)

    def _sequence(self, batch: ValidatedBatch) -> tuple[int, list[int], TailRow]:
        """Check the batch against the pending state and assign its numbers and timestamps."""
        state = self.pending
        if batch.fencing_token is not None and batch.fencing_token != state.fencing_token:
            raise FencingTokenMismatch(state.fencing_token)
        if batch.match_seq_num is not None and batch.match_seq_num != state.next_seq:
            raise SeqNumMismatch(state.next_seq)
        last_seq = state.next_seq + batch.count - 1
        if last_seq > self._seq_num_max and len(batch.commands) < batch.count:
            # Commands are stored plaintext: only sealed records use up the key's nonces.
            raise invalid(
                f"stream {self.name!r} is encrypted with {self.cipher} and takes sequence "
                f"numbers up to {self._seq_num_max} for its records; this batch would reach "
                f"{last_seq}"
            )
        now = self._clock.now_ms()
        timestamps = self._timestamps(batch, now, state.last_timestamp)
        first_seq = state.next_seq
        fencing_token = state.fencing_token
        trim_point = state.trim_point
        for command in batch.commands:
            if isinstance(command, Fence):
                fencing_token = command.token
            elif isinstance(command, Trim):
                # A trim can never reach past itself: at most up to and including its record.
                trim_point = max(
                    trim_point, min(command.first_seq_num, first_seq + command.index + 1)
                )
        assert 0 < batch.count == len(batch.bodies) == len(timestamps), (
            f"stream {self.name!r}: a batch of {batch.count} records has "
            f"{len(batch.bodies)} bodies and {len(timestamps)} timestamps"
        )
        after = TailRow(
            next_seq=first_seq + batch.count,
            last_timestamp=timestamps[-1],
            trim_point=trim_point,
            last_write_ms=max(now, state.last_write_ms),
            fencing_token=fencing_token,
        )
        return first_seq, timestamps, after

    def _timestamps(self, batch: ValidatedBatch, now: int, floor: int) -> list[int]:
        """Apply the timestamping mode, the cap at arrival time, and per-stream monotonicity."""
        mode = self.config.timestamping_mode
        records = batch.records
        if mode == "arrival" or not batch.has_client_timestamps:
            if mode == "client-require":
                raise invalid("record timestamp was required but was missing")
            return [max(now, floor)] * len(records)
        cap = None if self.config.timestamping_uncapped else now
        timestamps = []
        running = floor
        for record in records:
            if record.HasField("timestamp"):
                value = record.timestamp
            elif mode == "client-require":
                raise invalid("record timestamp was required but was missing")
            else:
                value = now
            if cap is not None and value > cap:
                value = cap
            if value < running:
                value = running
            running = value
            timestamps.append(value)
        return timestamps

    async def wait_durable_beyond(self, seq_num: int, timeout_s: float | None) -> bool:
        """Wait until the durable tail passes `seq_num` (or the stream is being deleted).

        Returns False if `timeout_s` elapsed first; None waits without limit.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        while self.durable.next_seq <= seq_num and not self.deleting:
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return False
            try:
                async with asyncio.timeout(remaining):
                    await self._durable_advanced.wait()
            except TimeoutError:
                return False
        return True

    def wake_followers(self) -> None:
        self._durable_advanced.set()
        self._durable_advanced = asyncio.Event()

    def resync(self) -> None:
        """Forget in-flight state after a failed commit: continue from what is durable, and
        read producers back from the store as they are next seen."""
        self.pending = self.durable
        self._producer_epoch = new_epoch()

    def mark_deleting(self) -> None:
        self.deleting = True
        self.wake_followers()

    def reconfigure(self, config: ResolvedStreamConfig, stream_record: Expect | None) -> None:
        """This node changed the stream's config; `stream_record`: the record it stored, for
        appends to expect where other nodes write too (None where none does)."""
        self.config = config
        if stream_record is not None:
            self._records = tuple(
                stream_record if record.table is Table.STREAMS else record
                for record in self._records
            )
        self._reconfigured += 1
