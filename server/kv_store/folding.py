"""Reading a store's stream into a fold: the loop the views and compaction share."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from s2s.errors import ReadUnwritten
from s2s.v1 import records_pb2 as pb
from server.reader import ReadLimits, ReadOutput, ReadStart

UNARY_READ = ReadLimits(clamp=True)
"""One read of up to 1000 records and 1 MiB, from the trim point if the start is below it."""

Read = Callable[[ReadStart, ReadLimits], Awaitable[ReadOutput]]
"""A read of the store's stream: `ScopedStore.read` or `StreamStore.read` with its stream."""
Fold = Callable[[list[pb.SequencedRecord]], object]


async def read_to_tail(read: Read, start: int, fold: Fold | None) -> tuple[int, int]:
    """Hand every record from `start` to the tail to `fold`, in order and in read-sized
    pieces (or only count them, without `fold`); returns the position after the last record
    and their metered bytes.

    It ends: each read returns at least one record, and reads 1000 records to an append's
    one; a read at the tail is `read_unwritten`, which says so."""
    position = start
    metered_bytes = 0
    while True:
        try:
            output = await read(ReadStart(seq_num=position), UNARY_READ)
        except ReadUnwritten:
            return position, metered_bytes
        records = output.records
        if records is None:
            return position, metered_bytes
        if fold is not None:
            fold(list(pb.ReadBatch.FromString(records.payload).records))
        position = records.last_seq + 1
        metered_bytes += records.metered_bytes
