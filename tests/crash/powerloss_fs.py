"""A FUSE filesystem that loses, at a simulated power loss, every write not yet fsync'd.

It passes everything through to a *volatile* directory (what the running processes see) and
keeps a *durable* directory holding only what was synced: a write is recorded as pending until
`fsync`/`fdatasync` of its file copies the pending ranges (and the file's size) across, and a
write through a descriptor opened with `O_DSYNC` is durable at once (the kernel also sends an
fsync after it). Power loss is: kill the processes using the mount, then unmount it (the
kernel's page cache of the mount goes with it); the durable directory is then the disk as it
would be after the power came back. Directory operations (create, mkdir, unlink, rename) are
taken as durable at once: LMDB creates its two files when the environment opens and never
renames or removes them. Needs /dev/fuse, root (to mount) and libfuse 2 (`mfusepy`'s ctypes
binding loads it).
"""

from __future__ import annotations

import errno
import os
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any

from mfusepy import FUSE, FuseOSError, Operations

_STAT_FIELDS = ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_blocks")


class PowerLossFs(Operations):  # type: ignore[misc]
    use_ns = True  # times in nanoseconds (mfusepy's float seconds are deprecated)

    def __init__(self, volatile: Path, durable: Path) -> None:
        self.volatile = volatile
        self.durable = durable
        self._lock = threading.Lock()
        self._pending: defaultdict[str, list[tuple[int, int]]] = defaultdict(list)
        self._dsync: set[int] = set()
        self.synced_bytes = 0

    def pending_bytes(self) -> int:
        """Bytes written but not yet synced: what a power loss now would drop."""
        with self._lock:
            return sum(length for ranges in self._pending.values() for _, length in ranges)

    def _v(self, path: str) -> str:
        return str(self.volatile) + path

    def _d(self, path: str) -> str:
        return str(self.durable) + path

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

    def mkdir(self, path: str, mode: int) -> int:
        os.mkdir(self._v(path), mode)
        os.mkdir(self._d(path), mode)
        return 0

    def unlink(self, path: str) -> int:
        os.unlink(self._v(path))
        os.unlink(self._d(path))
        return 0

    def rename(self, old: str, new: str) -> int:
        os.rename(self._v(old), self._v(new))
        os.rename(self._d(old), self._d(new))
        return 0

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        os.close(os.open(self._d(path), os.O_WRONLY | os.O_CREAT, mode))
        return os.open(self._v(path), os.O_RDWR | os.O_CREAT, mode)

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
            self._copy(path, [(offset, written)], offset + written)
        return written

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        os.truncate(self._v(path), length)
        with self._lock:
            self._pending[path].append((length, 0))
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        self._sync(path)
        return 0

    def flush(self, path: str, fh: int) -> int:
        return 0

    def release(self, path: str, fh: int) -> int:
        with self._lock:
            self._dsync.discard(fh)
        os.close(fh)
        return 0

    def _sync(self, path: str) -> None:
        """Make the file's pending writes and its size durable."""
        with self._lock:
            ranges = self._pending.pop(path, [])
        self._copy(path, ranges, None)

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
    FUSE(fs, str(mount_point), foreground=True, nothreads=False, default_permissions=True)
