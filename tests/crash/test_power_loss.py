"""Power loss under LMDB: a crash that also drops every write not yet fsync'd.

The appender of the kill -9 tests floods a `StreamStore` whose data directory is on
`PowerLossFs` (tests/crash/powerloss_fs.py), a FUSE filesystem that keeps apart what was
written and what was synced. The test kills the appender, unmounts (the power goes), and
reopens the store on what was synced alone: every acknowledged batch must be there, whole,
where its ack said, with no partial batch and no reused sequence number (the kill -9 tests'
verifier). A planted bug, the same appender with LMDB's syncs off, must lose acknowledged
batches under the same power loss, which shows the layer really drops unsynced writes.
Root, /dev/fuse and libfuse 2 only (`make test` installs libfuse 2 on Debian); skipped with a
message elsewhere.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.crash.test_kill9 import Ack, Plans, run_child, verify

if TYPE_CHECKING:
    from tests.crash.powerloss_fs import PowerLossFs


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "mounting a FUSE filesystem needs root"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    try:
        import tests.crash.powerloss_fs  # noqa: F401
    except OSError as error:
        return f"libfuse is not installed: {error}"
    return None


_UNAVAILABLE = _unavailable()
pytestmark = pytest.mark.skipif(_UNAVAILABLE is not None, reason=_UNAVAILABLE or "")


@dataclass
class Mount:
    fs: PowerLossFs
    mount_point: Path
    thread: threading.Thread

    def power_loss(self) -> int:
        """Unmount (whatever used the mount must be dead); returns the bytes dropped."""
        dropped = self.fs.pending_bytes()
        subprocess.run(["umount", str(self.mount_point)], check=True)
        self.thread.join(10)
        assert not self.thread.is_alive(), "the FUSE filesystem did not stop"
        return dropped


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Mount]:
    from tests.crash.powerloss_fs import PowerLossFs, serve

    for name in ("volatile", "durable", "mnt"):
        (tmp_path / name).mkdir()
    fs = PowerLossFs(tmp_path / "volatile", tmp_path / "durable")
    thread = threading.Thread(target=serve, args=(fs, tmp_path / "mnt"), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not os.path.ismount(tmp_path / "mnt"):
        assert time.monotonic() < deadline and thread.is_alive(), "the FUSE mount failed"
        time.sleep(0.02)
    mounted = Mount(fs, tmp_path / "mnt", thread)
    try:
        yield mounted
    finally:
        if os.path.ismount(tmp_path / "mnt"):
            subprocess.run(["umount", "-l", str(tmp_path / "mnt")], check=False)


@pytest.mark.parametrize("kill_after_s", [0.3, 1.0])
def test_power_loss_loses_no_acknowledged_record(mount: Mount, kill_after_s: float) -> None:
    acks = run_child(mount.mount_point / "data", 1, kill_after_s, after_first_ack=True)
    mount.power_loss()
    assert acks and mount.fs.synced_bytes > 0
    asyncio.run(verify(mount.fs.durable / "data", list(acks), Plans(), probe_id=1))


def test_a_server_acking_before_fsync_loses_records_at_power_loss(mount: Mount) -> None:
    acks: list[Ack] = run_child(
        mount.mount_point / "data", 1, 1.0, True, module="tests.crash.nosync_appender"
    )
    dropped = mount.power_loss()
    assert dropped > 0
    with pytest.raises(AssertionError):
        asyncio.run(verify(mount.fs.durable / "data", list(acks), Plans(), probe_id=1))
