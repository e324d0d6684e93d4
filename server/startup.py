"""What `s2s serve` checks before it opens anything: the data directory is a directory it can
write, and no other server uses it. Each failure is a `StartupError` whose message says what is
wrong and what to do; `s2s serve` prints it as one line and exits 1.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO


class StartupError(Exception):
    """The server cannot start; the message says why and what to do about it."""


class DataDirInUse(StartupError):
    """Another process holds the data directory's lock: `holder` is the pid it wrote there
    ("unknown" if none)."""

    def __init__(self, message: str, holder: str) -> None:
        super().__init__(message)
        self.holder = holder


LOCK_FILE_NAME = "lock"
"""`DATA_DIR/lock`: held (flock) by the server using the directory, for as long as it runs;
the kernel releases it when the process ends, however it ends. It holds that server's pid."""


def claim_data_dir(path: str) -> IO[str]:
    """Create the data directory if needed and lock it for this process; keep the returned
    file open for as long as the server runs.

    Two servers on one directory would each number appends from their own view of the tails
    and overwrite each other's batches; an embedded lake catalog happens to refuse a second
    server, a shared (PostgreSQL) catalog does not.
    """
    directory = Path(path)
    if directory.exists() and not directory.is_dir():
        raise StartupError(
            f"--data-dir {path!r} is not a directory: give a directory (it is created if missing)"
        )
    try:
        directory.mkdir(parents=True, exist_ok=True)
        lock = open(directory / LOCK_FILE_NAME, "a+")  # noqa: SIM115 (held until exit)
    except OSError as error:
        raise StartupError(
            f"cannot use --data-dir {path!r}: {error.strerror}: give a directory this user can "
            "create and write"
        ) from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        lock.close()
        raise DataDirInUse(
            f"--data-dir {path!r} is in use by another s2s server (pid {holder}): stop it, or "
            "give this one another --data-dir",
            holder,
        ) from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock
