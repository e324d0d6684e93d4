"""`s2s serve` whose storage can be made to fail inside LMDB's commit, from outside.

Run as `python -m tests.crash.faulted_server serve ...` (what `ServerProcess` runs with
`command=FAULTED_SERVER`). It is the real server, except that its `LmdbStore` runs the first
commit after a SIGUSR1 under `SyscallFault.META_WRITE_EIO` (LMDB panics), and the first after a
SIGUSR2 under `SyscallFault.FSYNC_EIO` (tests/crash/syscall_faults.py). It writes
`fault armed: NAME` to stderr when a signal arms a fault, and `fault injected: NAME` once the
faulted commit has run, so a test knows when to look.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType

import server.streamstore
from server import cli
from server.storage.kv import LmdbStore, Write
from tests.crash.syscall_faults import SyscallFault, run_with_fault

FAULTED_SERVER = (sys.executable, "-m", "tests.crash.faulted_server")

_SIGNAL_FAULTS = {
    signal.SIGUSR1: SyscallFault.META_WRITE_EIO,
    signal.SIGUSR2: SyscallFault.FSYNC_EIO,
}
_armed: list[SyscallFault] = []


class _SignalFaultedStore(LmdbStore):
    def commit(self, writes: Sequence[Write]) -> None:
        if not _armed:
            super().commit(writes)
            return
        fault = _armed.pop()
        try:
            run_with_fault(fault, lambda: super(_SignalFaultedStore, self).commit(writes))
        finally:
            _say(f"fault injected: {fault.name}")


def _arm(signum: int, frame: FrameType | None) -> None:
    fault = _SIGNAL_FAULTS[signal.Signals(signum)]
    _armed.append(fault)
    _say(f"fault armed: {fault.name}")


def _say(line: str) -> None:
    # One unbuffered write: a signal handler must not reenter the buffered stderr mid-write.
    os.write(sys.stderr.fileno(), f"{line}\n".encode())


def main() -> int:
    for signum in _SIGNAL_FAULTS:
        signal.signal(signum, _arm)
    # `StreamStore.open` builds its store by this name; the subclass only adds the fault.
    server.streamstore.LmdbStore = _SignalFaultedStore  # type: ignore[attr-defined]
    return cli.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
