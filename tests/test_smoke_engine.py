"""The shortest path through the engine: create, append, read back."""

from __future__ import annotations

from server.reader import ReadLimits, ReadStart
from server.streamstore import StreamStore
from tests.conftest import BASIN, decode, make_batch


async def test_append_then_read(store: StreamStore) -> None:
    await store.create_stream(BASIN, "s")
    ack = await store.append(BASIN, "s", make_batch(b"a", b"b", b"c"))
    assert (ack.start.seq_num, ack.end.seq_num, ack.tail.seq_num) == (0, 3, 3)
    out = await store.read(BASIN, "s", ReadStart(seq_num=0), ReadLimits())
    assert out.records is not None
    assert [r.body for r in decode(out.records.payload)] == [b"a", b"b", b"c"]
