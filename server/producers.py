"""Idempotent appends: what a stream's sequencer knows of each producer writing to it.

A batch carrying an `s2s-producer` header (`s2s.records.ProducerBatch`: a producer id and the
batch's sequence number among that producer's batches to the stream) is checked against its
producer's row before anything else about it (docs/adr/0016-idempotent-appends.md):

- the producer is unknown to the stream, or the batch is its last one + 1: a new batch, written
  with the producer's new row in the same commit;
- the batch is one of the last `PRODUCER_WINDOW_BATCHES` it wrote: a retry, not written again,
  answered with the original ack (once that is durable, if it is still in flight);
- older than those: `resource_already_exists` (written before; its ack is no longer kept);
  before the producer's first batch, or past its last one + 1: `invalid` (out of order).

Like a stream's tail, a producer's state has a durable row (what the store holds) and a
pending one (with the batches in flight), so that a failed commit can fall back. Every batch's
commit expects the row it was built on, as it expects the tail row, so a state that is behind
the store (another node wrote the producer, the jobs expired its row) makes the commit
conflict, and the sequencer reads the stream and the producer again (`StreamSequencer`).

States live in one cache for the whole server, bounded by `PRODUCERS_CACHED_MAX` (least
recently used first; never one with a batch in flight), and are read from the store the
first time a producer is seen on a stream, off the event loop. A sequencer's states carry its
epoch: when it takes the stream back from the store (a conflict, a failed commit), it takes a
new epoch, and states of an older one are read again before they are used.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
from typing import Generic, TypeVar

from s2s.errors import S2Error, invalid
from s2s.records import ProducerBatch
from server.storage.layout import ProducerRow

Outcome = TypeVar("Outcome")
"""What a batch in flight resolves to (the sequencer's `AppendAck`)."""

PRODUCERS_CACHED_MAX = 50_000
"""Producer states kept in memory across all streams (each ~1 KiB with a full window); beyond
it the least recently used idle ones are dropped, and read from the store when next seen."""

_epochs = itertools.count(1)


def new_epoch() -> int:
    """An epoch no sequencer has had: states read under another one are stale."""
    return next(_epochs)


class ProducerState(Generic[Outcome]):
    """One producer of one stream, as the sequencer numbers its batches."""

    __slots__ = ("durable", "epoch", "inflight", "pending")

    def __init__(self, row: ProducerRow | None, epoch: int) -> None:
        self.durable = row
        """The row the store holds (None: none)."""
        self.pending = row
        """The row after every batch numbered so far, those in flight included."""
        self.inflight: dict[int, asyncio.Future[Outcome]] = {}
        """The outcome of each batch in flight, by batch sequence number, for its retries."""
        self.epoch = epoch


def is_new(row: ProducerRow | None, batch: ProducerBatch) -> bool:
    """Whether `batch` is to be written (True) or is a retry of a remembered one (False);
    raises if it is neither."""
    if row is None or batch.seq == row.last_batch_seq + 1:
        return True
    if batch.seq > row.last_batch_seq:
        raise invalid(
            f"batch {batch.seq} of producer {batch.id!r} is out of order: its last batch to this "
            f"stream is {row.last_batch_seq}, so the next is {row.last_batch_seq + 1} (a batch "
            "in between was never written: send it first)"
        )
    if batch.seq < row.first_batch_seq:
        raise invalid(
            f"batch {batch.seq} of producer {batch.id!r} is out of order: its first batch to "
            f"this stream is {row.first_batch_seq}"
        )
    if row.ack_of(batch.seq) is None:
        raise S2Error(
            "resource_already_exists",
            f"batch {batch.seq} of producer {batch.id!r} was written before, and its ack is no "
            f"longer kept (only its last {row.acks_kept} batches' are, up to "
            f"{row.last_batch_seq}): it is not written again",
        )
    return False


class ProducerCache(Generic[Outcome]):
    """Every stream's producer states in memory, least recently used first."""

    def __init__(self, states_max: int = PRODUCERS_CACHED_MAX) -> None:
        self._states: collections.OrderedDict[tuple[int, str], ProducerState[Outcome]] = (
            collections.OrderedDict()
        )
        self._states_max = states_max

    def __len__(self) -> int:
        return len(self._states)

    def get(self, sid: int, producer_id: str, epoch: int) -> ProducerState[Outcome] | None:
        """The state of the producer on stream `sid`, if one of this epoch is in memory."""
        key = (sid, producer_id)
        state = self._states.get(key)
        if state is None or state.epoch != epoch:
            return None
        self._states.move_to_end(key)
        return state

    def forget(self, sid: int, producer_id: str, row: bytes) -> None:
        """The jobs deleted the producer's stored `row` (it was idle): drop its state if that
        is all it holds, so that its next batch starts it afresh here as after a restart
        (rather than conflicting with the absent row first)."""
        key = (sid, producer_id)
        state = self._states.get(key)
        if state is None or state.inflight or state.pending is not state.durable:
            return
        if state.durable is not None and state.durable.encoded == row:
            del self._states[key]

    def put(self, sid: int, producer_id: str, state: ProducerState[Outcome]) -> None:
        """Keep `state` (replacing an older one), then drop idle states beyond the bound."""
        key = (sid, producer_id)
        self._states[key] = state
        self._states.move_to_end(key)
        excess = len(self._states) - self._states_max
        if excess <= 0:
            return
        # Busy states (batches in flight) are passed over: at most as many as the batches in
        # flight, which the committer bounds. So is the one just kept, which its caller is
        # about to use (dropping it would send the caller to read it again, and again).
        for old_key in list(itertools.islice(self._states, excess + 64)):
            if excess <= 0:
                break
            if old_key != key and not self._states[old_key].inflight:
                del self._states[old_key]
                excess -= 1
