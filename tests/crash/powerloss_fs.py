"""A FUSE filesystem that loses, at a simulated power loss, everything not yet made durable.

It passes everything through to a *volatile* directory (what the running processes see) and
keeps a *durable* directory holding only what was synced, the disk as it would be after the
power came back:

- **Data.** A write is pending until `fsync`/`fdatasync` of its file copies the pending ranges
  (and the file's size) across; a write through a descriptor opened with `O_DSYNC` is durable
  at once (the kernel also sends an fsync after it).
- **Names.** Creating, renaming and removing files and directories are entries in one ordered
  journal, as a journaling filesystem (ext4) keeps them. Syncing a directory makes durable
  every entry up to the last one that touched a name in it; syncing a file, every entry up to
  its own creation or the rename that gave it its name (ext4 commits its journal in order,
  and POSIX promises no more than that). So a file replaced by a rename keeps its old content
  at a power loss unless its directory was synced, which is why `server/durable_file.py`
  syncs it.

Power loss is: kill the processes using the mount, then unmount it (the kernel's page cache
of the mount goes with it). `persist_some` first lets a random part of the pending state reach
the disk, as the kernel's writeback may have done before the power went: any subset of the
pending 512-byte sectors of data (a sector is the unit a disk writes whole) and any prefix of
the journal. Needs /dev/fuse, root (to mount) and libfuse 2 (`mfusepy`'s ctypes binding loads
it).
"""

from __future__ import annotations

import ctypes
import errno
import os
import random
import signal
import threading
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mfusepy import FUSE, FuseOSError, Operations

_STAT_FIELDS = ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_blocks")
SECTOR = 512


@dataclass(frozen=True)
class _Entry:
    """One change of names: `kind` is create, mkdir, rename, unlink or rmdir; `new` is the
    target of a rename."""

    kind: str
    path: str
    new: str = ""
    mode: int = 0o644

    def touches(self, path: str) -> bool:
        return path in (self.path, self.new)

    def names_in(self, directory: str) -> bool:
        return any(name and os.path.dirname(name) == directory for name in (self.path, self.new))


class PowerLossFs(Operations):  # type: ignore[misc]
    use_ns = True  # times in nanoseconds (mfusepy's float seconds are deprecated)

    def __init__(self, volatile: Path, durable: Path) -> None:
        self.volatile = volatile
        self.durable = durable
        self._lock = threading.RLock()
        self._pending: defaultdict[str, list[tuple[int, int]]] = defaultdict(list)
        self._journal: list[_Entry] = []
        self._dsync: set[int] = set()
        self.synced_bytes = 0

    def pending_bytes(self) -> int:
        """Bytes written but not yet synced: what a power loss now would drop."""
        with self._lock:
            return sum(length for ranges in self._pending.values() for _, length in ranges)

    def pending_names(self) -> int:
        """Journal entries not yet durable."""
        with self._lock:
            return len(self._journal)

    def persist_some(self, rng: random.Random) -> tuple[int, int]:
        """Make a random part of the pending state durable, as writeback might have before
        the power went: each pending sector with probability 1/2, and a random prefix of the
        journal. Returns the sectors and the journal entries persisted."""
        with self._lock:
            entries = rng.randint(0, len(self._journal))
            self._apply_journal(entries)
            sectors = 0
            for path, ranges in self._pending.items():
                if not os.path.exists(self._d(path)):
                    continue  # its name never reached the disk
                chosen = [
                    (start, min(SECTOR, offset + length - start))
                    for offset, length in ranges
                    for start in range(offset, offset + length, SECTOR)
                    if rng.random() < 0.5
                ]
                self._copy(path, chosen, 0)
                sectors += len(chosen)
            return sectors, entries

    def _v(self, path: str) -> str:
        return str(self.volatile) + path

    def _d(self, path: str) -> str:
        return str(self.durable) + path

    # --- the journal of names ----------------------------------------------------------------

    def _log(self, entry: _Entry) -> None:
        with self._lock:
            self._journal.append(entry)

    def _apply_journal(self, count: int) -> None:
        """Apply the first `count` entries to the durable directory, in order."""
        for entry in self._journal[:count]:
            durable = self._d(entry.path)
            if entry.kind == "create" and not os.path.exists(durable):
                os.close(os.open(durable, os.O_WRONLY | os.O_CREAT, entry.mode))
            elif entry.kind == "mkdir" and not os.path.exists(durable):
                os.mkdir(durable, entry.mode)
            elif entry.kind == "rename" and os.path.lexists(durable):
                os.rename(durable, self._d(entry.new))
            elif entry.kind == "unlink" and os.path.lexists(durable):
                os.unlink(durable)
            elif entry.kind == "rmdir" and os.path.isdir(durable):
                os.rmdir(durable)
        del self._journal[:count]

    def _sync_names(self, matches: Any) -> None:
        """Apply the journal up to its last entry for which `matches(entry)` holds."""
        with self._lock:
            last = max(
                (index + 1 for index, entry in enumerate(self._journal) if matches(entry)),
                default=0,
            )
            self._apply_journal(last)

    # --- operations --------------------------------------------------------------------------

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        try:
            st = os.lstat(self._v(path))
        except FileNotFoundError:
            raise FuseOSError(errno.ENOENT) from None
        times = {name: getattr(st, f"{name}_ns") for name in ("st_atime", "st_mtime", "st_ctime")}
        return {name: getattr(st, name) for name in _STAT_FIELDS} | times

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *os.listdir(self._v(path))]

    def statfs(self, path: str) -> dict[str, int]:
        st = os.statvfs(self._v(path))
        names = ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree")
        return {name: getattr(st, name) for name in (*names, "f_namemax")}

    def chmod(self, path: str, mode: int) -> int:
        # Modes are taken as durable at once: nothing here depends on losing one.
        os.chmod(self._v(path), mode)
        if os.path.exists(self._d(path)):
            os.chmod(self._d(path), mode)
        return 0

    def mkdir(self, path: str, mode: int) -> int:
        os.mkdir(self._v(path), mode)
        self._log(_Entry("mkdir", path, mode=mode))
        return 0

    def rmdir(self, path: str) -> int:
        os.rmdir(self._v(path))
        self._log(_Entry("rmdir", path))
        return 0

    def unlink(self, path: str) -> int:
        os.unlink(self._v(path))
        with self._lock:
            self._pending.pop(path, None)
            self._journal.append(_Entry("unlink", path))
        return 0

    def rename(self, old: str, new: str) -> int:
        os.rename(self._v(old), self._v(new))
        with self._lock:
            self._pending.pop(new, None)
            if old in self._pending:
                self._pending[new] = self._pending.pop(old)
            self._journal.append(_Entry("rename", old, new))
        return 0

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        fd = os.open(self._v(path), os.O_RDWR | os.O_CREAT, mode)
        self._log(_Entry("create", path, mode=mode))
        return fd

    def open(self, path: str, flags: int) -> int:
        fd = os.open(self._v(path), os.O_RDWR)
        if flags & os.O_DSYNC:
            with self._lock:
                self._dsync.add(fd)
        return fd

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return os.pread(fh, size, offset)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        written = os.pwrite(fh, data, offset)
        with self._lock:
            durable_now = fh in self._dsync
            if not durable_now:
                self._pending[path].append((offset, written))
        if durable_now:
            # O_DSYNC makes this write durable, not the file's other pending ones.
            self._sync_names(lambda entry: entry.touches(path))
            self._copy(path, [(offset, written)], offset + written)
        return written

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        os.truncate(self._v(path), length)
        with self._lock:
            self._pending[path].append((length, 0))
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        self._sync_names(lambda entry: entry.touches(path))
        with self._lock:
            ranges = self._pending.pop(path, [])
        self._copy(path, ranges, None)
        return 0

    def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
        self._sync_names(lambda entry: entry.names_in(path))
        return 0

    def flush(self, path: str, fh: int) -> int:
        return 0

    def release(self, path: str, fh: int) -> int:
        with self._lock:
            self._dsync.discard(fh)
        os.close(fh)
        return 0

    def _copy(self, path: str, ranges: list[tuple[int, int]], size_min: int | None) -> None:
        """Copy the ranges from the volatile to the durable file, and its size (None), or grow
        the durable file to at least `size_min`."""
        source = os.open(self._v(path), os.O_RDONLY)
        target = os.open(self._d(path), os.O_WRONLY)
        try:
            for offset, length in ranges:
                data = os.pread(source, length, offset)
                os.pwrite(target, data, offset)
                self.synced_bytes += len(data)
            if size_min is None:
                os.ftruncate(target, os.fstat(source).st_size)
            elif os.fstat(target).st_size < size_min:
                os.ftruncate(target, size_min)
        finally:
            os.close(source)
            os.close(target)


def serve(fs: PowerLossFs, mount_point: Path) -> None:
    """Serve `fs` at `mount_point` until it is unmounted (blocks)."""
    try:
        FUSE(fs, str(mount_point), foreground=True, nothreads=False, default_permissions=True)
    finally:
        ignore_sigpipe_again()


def ignore_sigpipe_again() -> None:
    """libfuse ignores SIGPIPE while it serves and, on its way out, sets it to SIG_DFL: the
    whole process (a pytest worker) then dies silently at its next write to a closed socket,
    as a test that cuts connections makes (seen: xdist's "node down: Not properly
    terminated", tests later). Ignore it again, as Python does; through libc, since a
    disposition is the process's and this runs on the FUSE thread, where `signal.signal`
    may not be called."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.signal.restype = ctypes.c_void_p
    libc.signal.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.signal(signal.SIGPIPE, SIG_IGN_ADDRESS)


SIG_IGN_ADDRESS = 1
"""`SIG_IGN` as the C library defines it: `(void (*)(int)) 1`."""
