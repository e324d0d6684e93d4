"""Faults inside LMDB's own commit: chosen system calls fail, in one thread, for one commit.

`FaultyStore` fails a commit before it reaches LMDB. This goes further down: the commit runs in
a fresh thread that first installs a seccomp filter (Linux, through libc's `prctl`), so the
kernel itself answers chosen system calls of that thread with an error while LMDB is in the
middle of committing: its data-page writes (`writev`, `pwrite64` past the two meta pages), its
`fdatasync` between the data pages and the meta page, or its meta-page write (`pwrite64` into
the first two pages), which is what sets LMDB's fatal flag (`MDB_PANIC`). A filter cannot be
removed, but it dies with its thread, so the fault clears as soon as that commit is over; every
other thread, the event loop's reads included, runs unfiltered throughout. Nothing of ours is
mocked: LMDB sees the same errors a failing disk returns.
"""

from __future__ import annotations

import ctypes
import enum
import errno
import os
import platform
import struct
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

from server.storage.kv import KeyValueStore, Write
from tests.crash.faults import FaultyStore

R = TypeVar("R")

_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_AUDIT_ARCH_X86_64 = 0xC000003E
_SECCOMP_RET_ALLOW = 0x7FFF0000
_SECCOMP_RET_ERRNO = 0x00050000
# classic BPF opcodes
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_RET_K = 0x06
# struct seccomp_data: nr at 0, arch at 4, args[i] at 16 + 8 i (low word first on x86_64)
_NR, _ARCH, _ARG3_LOW, _ARG3_HIGH = 0, 4, 40, 44
_SYS_WRITEV, _SYS_PWRITE64, _SYS_FDATASYNC = 20, 18, 75

META_PAGES_BYTES = 2 * os.sysconf("SC_PAGE_SIZE")
"""LMDB's two meta pages come first in its data file; its page size is the OS's."""


class SyscallFault(enum.Enum):
    DATA_WRITE_EIO = "data pages' write fails with EIO"
    DATA_WRITE_ENOSPC = "data pages' write fails with ENOSPC"
    FSYNC_EIO = "fdatasync of the data pages fails with EIO"
    META_WRITE_EIO = "meta page's write fails with EIO (LMDB panics)"


def _insn(code: int, jump_true: int, jump_false: int, k: int) -> bytes:
    return struct.pack("HBBI", code, jump_true, jump_false, k)


def _allow() -> bytes:
    return _insn(_RET_K, 0, 0, _SECCOMP_RET_ALLOW)


def _fail(error: int) -> bytes:
    return _insn(_RET_K, 0, 0, _SECCOMP_RET_ERRNO | error)


def _program(fault: SyscallFault) -> bytes:
    """A filter that fails the fault's system calls and allows every other one."""
    head = [
        _insn(_LD_W_ABS, 0, 0, _ARCH),
        _insn(_JEQ_K, 1, 0, _AUDIT_ARCH_X86_64),
        _allow(),
        _insn(_LD_W_ABS, 0, 0, _NR),
    ]
    if fault is SyscallFault.FSYNC_EIO:
        body = [_insn(_JEQ_K, 0, 1, _SYS_FDATASYNC), _fail(errno.EIO), _allow()]
    elif fault is SyscallFault.META_WRITE_EIO:
        body = [
            _insn(_JEQ_K, 1, 0, _SYS_PWRITE64),
            _allow(),
            _insn(_LD_W_ABS, 0, 0, _ARG3_HIGH),  # the offset
            _insn(_JEQ_K, 1, 0, 0),
            _allow(),
            _insn(_LD_W_ABS, 0, 0, _ARG3_LOW),
            _insn(_JGE_K, 0, 1, META_PAGES_BYTES),
            _allow(),
            _fail(errno.EIO),
        ]
    else:
        error = errno.EIO if fault is SyscallFault.DATA_WRITE_EIO else errno.ENOSPC
        # LMDB writes several data pages with one writev, a single one with pwrite64.
        body = [
            _insn(_JEQ_K, 0, 1, _SYS_WRITEV),
            _fail(error),
            _insn(_JEQ_K, 1, 0, _SYS_PWRITE64),
            _allow(),
            _insn(_LD_W_ABS, 0, 0, _ARG3_HIGH),
            _insn(_JEQ_K, 0, 1, 0),
            _insn(_LD_W_ABS, 0, 0, _ARG3_LOW),
            _insn(_JGE_K, 0, 1, META_PAGES_BYTES),
            _fail(error),
            _allow(),
        ]
    return b"".join(head + body)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _install(fault: SyscallFault) -> None:
    """Install the fault's filter on the calling thread (for the rest of its life)."""
    libc = ctypes.CDLL(None, use_errno=True)
    code = ctypes.create_string_buffer(_program(fault))
    program = _SockFprog(len(code.raw) // 8, ctypes.addressof(code))
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 or (
        libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(program), 0, 0) != 0
    ):
        raise OSError(ctypes.get_errno(), "could not install a seccomp filter")


def run_with_fault(fault: SyscallFault, call: Callable[[], R]) -> R:
    """Run `call` in a new thread whose chosen system calls fail; return or raise as it did."""
    outcome: list[R] = []
    raised: list[BaseException] = []

    def faulted() -> None:
        try:
            _install(fault)
            outcome.append(call())
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=faulted, name="s2s-faulted-commit")
    thread.start()
    thread.join()
    if raised:
        raise raised[0]
    return outcome[0]


def seccomp_unavailable() -> str | None:
    """Why these faults cannot be injected here, or None if they can."""
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        return "seccomp faults are written for Linux on x86_64"
    try:
        run_with_fault(SyscallFault.FSYNC_EIO, lambda: None)
    except OSError as error:
        return f"seccomp filters are not permitted here: {error}"
    return None


class SyscallFaultStore(FaultyStore):
    """A `FaultyStore` whose chosen commits also run with a `SyscallFault` inside LMDB."""

    def __init__(self, inner: KeyValueStore) -> None:
        super().__init__(inner)
        self._faults: dict[int, SyscallFault] = {}

    def fault_commit(self, fault: SyscallFault, after: int = 0) -> int:
        """Run the commit that starts after `after` more commits under `fault`; its number."""
        with self._lock:
            number = self.started + 1 + after
            self._faults[number] = fault
            return number

    def commit(self, writes: Sequence[Write]) -> None:
        with self._lock:
            fault = self._faults.pop(self.started + 1, None)
        if fault is None:
            super().commit(writes)
            return
        run_with_fault(fault, lambda: super(SyscallFaultStore, self).commit(writes))
