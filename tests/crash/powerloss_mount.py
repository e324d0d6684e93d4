"""A `PowerLossFs` mounted in a thread of this process, with the power going and coming back.

`power_loss` unmounts it (whatever used the mount must be dead first); the `durable`
directory is then the disk as the power left it. `power_on` mounts it again, the running
system seeing what the disk holds, at the same path: the lake's catalog and anything else
that keeps absolute paths finds itself where it was.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.crash.powerloss_fs import PowerLossFs


def unavailable() -> str | None:
    """Why a power-loss mount cannot run here (None: it can)."""
    if os.geteuid() != 0:
        return "mounting a FUSE filesystem needs root"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    try:
        import tests.crash.powerloss_fs  # noqa: F401
    except OSError as error:
        return f"libfuse is not installed: {error}"
    return None


@dataclass
class Mount:
    root: Path
    """Holds `volatile`, `durable` and the mount point `mnt`."""
    fs: PowerLossFs | None = None
    thread: threading.Thread | None = None

    @property
    def mount_point(self) -> Path:
        return self.root / "mnt"

    @property
    def durable(self) -> Path:
        return self.root / "durable"

    def power_on(self) -> None:
        """Mount the filesystem, the running system seeing what the disk holds."""
        from tests.crash.powerloss_fs import PowerLossFs, serve

        volatile = self.root / "volatile"
        shutil.rmtree(volatile, ignore_errors=True)
        shutil.copytree(self.durable, volatile, symlinks=True)
        self.fs = PowerLossFs(volatile, self.durable)
        self.thread = threading.Thread(target=serve, args=(self.fs, self.mount_point), daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not os.path.ismount(self.mount_point):
            assert time.monotonic() < deadline and self.thread.is_alive(), "the mount failed"
            time.sleep(0.02)

    def power_loss(self) -> int:
        """Unmount (whatever used the mount must be dead); returns the bytes dropped."""
        assert self.fs is not None and self.thread is not None
        dropped = self.fs.pending_bytes()
        subprocess.run(["umount", str(self.mount_point)], check=True)
        self.thread.join(10)
        assert not self.thread.is_alive(), "the FUSE filesystem did not stop"
        _restore_python_signal_handlers()
        return dropped


def _restore_python_signal_handlers() -> None:
    """libfuse handles SIGHUP, SIGINT and SIGTERM itself while it serves and leaves them at
    SIG_DFL when it stops (and SIGPIPE too: `ignore_sigpipe_again`): give them back to
    Python's handlers, which it still records, so Ctrl-C and a graceful SIGTERM keep working
    in this process. Only the main thread may set them."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE):
        signal.signal(signum, signal.getsignal(signum))


@contextmanager
def power_loss_mount(root: Path) -> Iterator[Mount]:
    """A fresh empty disk under `root`, mounted; unmounted at the end whatever happened."""
    for name in ("durable", "mnt"):
        (root / name).mkdir(parents=True)
    mount = Mount(root)
    mount.power_on()
    try:
        yield mount
    finally:
        if os.path.ismount(mount.mount_point):
            subprocess.run(["umount", "-l", str(mount.mount_point)], check=False)
