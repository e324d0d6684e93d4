"""Crash tests: kill -9 a process while it deletes trimmed data, then check what is left.

The child (`tests.crash.trimmer`) fills a stream with single-record batches, trims all but the
last few hundred records, and deletes the trimmed batches in hundreds of small commits; it is
killed at a chosen moment of that deletion. Reopened, the store must hold:

- every record from the trim point on, byte-identical, and the tail it had;
- nothing below the trim point on the read path, whatever is still on disk;
- on disk, a contiguous run of batches ending at the tail: deletion only ever takes whole
  batches from the front, so a crash can leave some trimmed batches, never a hole;
- one `TIMESTAMPS` key per stored batch;
- and, after one more jobs run, no trimmed batch at all.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from server.jobs import JobSettings
from server.reader import ReadLimits, ReadStart
from server.storage.kv import Table
from server.storage.layout import (
    batch_key,
    batch_key_last_seq,
    timestamp_key,
    timestamp_key_last_seq,
)
from server.streamstore import StreamStore
from tests.conftest import decode
from tests.crash.child import run_and_kill
from tests.crash.trimmer import BASIN, BATCHES, STREAM, TRIM_POINT, body_of
from tests.storage_mode import storage_for

TRIMMED_TIMEOUT_S = 60.0
KILL_DELAYS_S = [0.0, 0.02, 0.05, 0.1, 0.2, 0.4]
"""After `TRIMMED`; the deletion that follows takes ~0.3-1 s here."""


def run_child(data_dir: Path, kill_after_s: float) -> list[str]:
    """Run the trimmer and SIGKILL it `kill_after_s` after it printed `TRIMMED`."""
    killed = run_and_kill(
        "tests.crash.trimmer",
        [str(data_dir), storage_for(data_dir)],
        data_dir.parent / "trimmer.stderr",
        kill_after_s,
        "TRIMMED",
        TRIMMED_TIMEOUT_S,
    )
    assert f"TRIMMED {TRIM_POINT}" in killed.lines, killed.stderr
    return killed.lines


def stored_batches(store: StreamStore, sid: int) -> list[int]:
    """Last sequence numbers of the stream's stored batches, in order."""
    items = store.kv.scan(Table.BATCHES, batch_key(sid, 0), batch_key(sid + 1, 0), 10**6)
    return [batch_key_last_seq(key) for key, _ in items]


def timestamp_index(store: StreamStore, sid: int) -> list[int]:
    start, end = timestamp_key(sid, 0, 0), timestamp_key(sid + 1, 0, 0)
    return sorted(
        timestamp_key_last_seq(key) for key, _ in store.kv.scan(Table.TIMESTAMPS, start, end, 10**6)
    )


async def verify(data_dir: Path) -> list[int]:
    store = await StreamStore.open(
        str(data_dir), job_settings=JobSettings(interval_s=3600), storage=storage_for(data_dir)
    )
    try:
        sid = store.get_stream(BASIN, STREAM).sid
        # The trim command is the stream's last record, at seq BATCHES.
        assert (await store.check_tail(BASIN, STREAM)).seq_num == BATCHES + 1
        left = stored_batches(store, sid)
        assert left and left[0] <= TRIM_POINT, "a record above the trim point was deleted"
        assert left == list(range(left[0], BATCHES + 1)), "deletion left a hole"
        assert timestamp_index(store, sid) == left
        out = await store.read(BASIN, STREAM, ReadStart(seq_num=0), ReadLimits(count=BATCHES))
        assert out.records is not None
        records = [(r.seq_num, r.body) for r in decode(out.records.payload)]
        kept = [(seq, body_of(seq)) for seq in range(TRIM_POINT, BATCHES)]
        assert records[: len(kept)] == kept
        await store.jobs.run_once()
        assert stored_batches(store, sid) == list(range(TRIM_POINT, BATCHES + 1))
        assert timestamp_index(store, sid) == list(range(TRIM_POINT, BATCHES + 1))
        return left
    finally:
        await store.close()


@pytest.mark.parametrize("delay", KILL_DELAYS_S, ids=lambda d: f"{d:.2f}s")
def test_kill9_while_deleting_trimmed_batches(tmp_path: Path, delay: float) -> None:
    lines = run_child(tmp_path / "data", delay)
    left = asyncio.run(verify(tmp_path / "data"))
    if "RECLAIMED" in lines:
        assert left == list(range(TRIM_POINT, BATCHES + 1))
