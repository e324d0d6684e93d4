"""Faults inside LMDB's commit (tests/crash/syscall_faults.py), and what the engine promises.

For each fault (a data-page write failing with EIO or ENOSPC, the fdatasync between data and
meta pages failing, the meta-page write failing, which makes LMDB panic): the append in the
failed commit is not acknowledged and fails with `storage`; reads keep being served and show
nothing of it; the next append succeeds without a restart and takes the failed batch's sequence
numbers (no gap); and the data after reopening is exactly the acknowledged batches. The panic
case also checks that the environment really panicked and was reopened in place, and that
reads from other threads (as the jobs, the lake and usage make) go on across the reopen.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from pathlib import Path

import pytest

from s2s.errors import S2Error
from server.storage.kv import LmdbStore, Table
from server.streamstore import StreamStore
from tests.conftest import BASIN, ManualClock, make_batch
from tests.crash.syscall_faults import SyscallFault, SyscallFaultStore, seccomp_unavailable
from tests.crash.test_faults import SETTINGS, append_when_recovered, bodies, span

_UNAVAILABLE = seccomp_unavailable()
pytestmark = [
    pytest.mark.skipif(_UNAVAILABLE is not None, reason=_UNAVAILABLE or ""),
    pytest.mark.lmdb_only("seccomp faults in the system calls of LMDB's own commit"),
]

_ERRNO = {
    SyscallFault.DATA_WRITE_EIO: errno.EIO,
    SyscallFault.DATA_WRITE_ENOSPC: errno.ENOSPC,
    SyscallFault.FSYNC_EIO: errno.EIO,
    SyscallFault.META_WRITE_EIO: errno.EIO,
}


@pytest.mark.parametrize("fault", list(SyscallFault), ids=lambda fault: fault.name.lower())
async def test_fault_inside_lmdb_commit_fails_only_its_batch_and_writing_resumes(
    tmp_path: Path, clock: ManualClock, caplog: pytest.LogCaptureFixture, fault: SyscallFault
) -> None:
    caplog.set_level(logging.WARNING, logger="server.storage.kv")
    kv = SyscallFaultStore(LmdbStore(str(tmp_path / "log")))
    store = StreamStore(kv, clock, SETTINGS)
    await store.start()
    try:
        await store.create_basin(BASIN)
        await store.create_stream(BASIN, "s")
        assert span(await store.append(BASIN, "s", make_batch(b"a0", b"a1"))) == (0, 2)

        kv.fault_commit(fault)
        with pytest.raises(S2Error) as raised:
            await store.append(BASIN, "s", make_batch(b"lost" * 3000, b"lost"))
        assert raised.value.code == "storage"
        # The error came from inside LMDB's commit, not from before it.
        assert os.strerror(_ERRNO[fault]) in raised.value.message

        assert await bodies(store, "s") == [b"a0", b"a1"]
        assert span(await append_when_recovered(store, "s", b"b0")) == (2, 3)
        assert span(await store.append(BASIN, "s", make_batch(b"b1", b"b2"))) == (3, 5)
        assert await bodies(store, "s") == [b"a0", b"a1", b"b0", b"b1", b"b2"]
    finally:
        await store.close()

    reopened_after_panic = [r for r in caplog.records if "reopened" in r.getMessage()]
    assert len(reopened_after_panic) == (1 if fault is SyscallFault.META_WRITE_EIO else 0)

    reopened = StreamStore(LmdbStore(str(tmp_path / "log")), clock, SETTINGS)
    await reopened.start()
    try:
        assert await bodies(reopened, "s") == [b"a0", b"a1", b"b0", b"b1", b"b2"]
    finally:
        await reopened.close()


async def test_reads_from_other_threads_go_on_while_a_panicked_environment_is_reopened(
    tmp_path: Path, clock: ManualClock
) -> None:
    kv = SyscallFaultStore(LmdbStore(str(tmp_path / "log")))
    store = StreamStore(kv, clock, SETTINGS)
    await store.start()
    stop = threading.Event()
    read_errors: list[Exception] = []
    reads = 0

    def read_until_stopped() -> None:
        nonlocal reads
        while not stop.is_set():
            try:
                assert kv.scan(Table.STREAMS, b"", None, 10), "the stream's row vanished"
            except Exception as error:
                read_errors.append(error)
                return
            reads += 1

    readers = [threading.Thread(target=read_until_stopped) for _ in range(3)]
    try:
        await store.create_basin(BASIN)
        await store.create_stream(BASIN, "s")
        for reader in readers:
            reader.start()
        for panic in range(20):
            kv.fault_commit(SyscallFault.META_WRITE_EIO)
            with pytest.raises(S2Error):
                await store.append(BASIN, "s", make_batch(b"lost"))
            assert span(await append_when_recovered(store, "s", b"%d" % panic)) == (
                panic,
                panic + 1,
            )
    finally:
        stop.set()
        for reader in readers:
            reader.join()
        await store.close()
    assert read_errors == []
    assert reads > 0
