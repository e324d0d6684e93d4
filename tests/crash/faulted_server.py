"""`s2s serve` whose storage can be made to fail inside LMDB's commit, from outside.

Run as `python -m tests.crash.faulted_server serve ...` (what `ServerProcess` runs with
`command=FAULTED_SERVER`). It is the real server, except that its `LmdbStore` runs the first
commit after a signal under the `SyscallFault` (tests/crash/syscall_faults.py) that the signal
names in `SIGNAL_FAULTS`: SIGUSR1 its meta-page write (LMDB panics), SIGUSR2 its fdatasync, and
two real-time signals its data-page writes (EIO, ENOSPC). It writes `fault armed: NAME` to stderr
when a signal arms a fault, and `fault injected: NAME (OUTCOME)` once the faulted commit has run,
OUTCOME `commit failed` or `commit succeeded`, so a test knows when to look and that the fault
really failed a commit.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType

import server.storage.choice
from server import cli
from server.storage.kv import LmdbStore, Write
from tests.crash.syscall_faults import SyscallFault, run_with_fault

FAULTED_SERVER = (sys.executable, "-m", "tests.crash.faulted_server")

SIGNAL_FAULTS: dict[int, SyscallFault] = {
    signal.SIGUSR1: SyscallFault.META_WRITE_EIO,
    signal.SIGUSR2: SyscallFault.FSYNC_EIO,
    # Real-time signals have numbers, not names, in Python's `signal.Signals`.
    signal.SIGRTMIN: SyscallFault.DATA_WRITE_EIO,
    signal.SIGRTMIN + 1: SyscallFault.DATA_WRITE_ENOSPC,
}
FAULT_SIGNALS = {fault: signum for signum, fault in SIGNAL_FAULTS.items()}
COMMIT_FAILED = "commit failed"
_armed: list[SyscallFault] = []


class _SignalFaultedStore(LmdbStore):
    def commit(self, writes: Sequence[Write]) -> None:
        if not _armed:
            super().commit(writes)
            return
        fault = _armed.pop()
        outcome = COMMIT_FAILED
        try:
            run_with_fault(fault, lambda: super(_SignalFaultedStore, self).commit(writes))
            outcome = "commit succeeded"
        finally:
            _say(f"fault injected: {fault.name} ({outcome})")


def _arm(signum: int, frame: FrameType | None) -> None:
    fault = SIGNAL_FAULTS[signum]
    _armed.append(fault)
    _say(f"fault armed: {fault.name}")


def _say(line: str) -> None:
    # One unbuffered write: a signal handler must not reenter the buffered stderr mid-write.
    os.write(sys.stderr.fileno(), f"{line}\n".encode())


def install() -> None:
    """Arm faults on signals and make the server's stores faultable, in this process."""
    for signum in SIGNAL_FAULTS:
        signal.signal(signum, _arm)
    # `open_key_value_store` builds the LMDB store by this name; the subclass only adds the
    # fault. (It was `server.streamstore`'s until the storage choice moved: replacing a name
    # that a module no longer uses does nothing, silently, so this checks the name is there,
    # and every user of this server asserts that its faults were injected.)
    if not isinstance(getattr(server.storage.choice, "LmdbStore", None), type):
        raise RuntimeError("server.storage.choice no longer builds the store by LmdbStore")
    server.storage.choice.LmdbStore = _SignalFaultedStore  # type: ignore[attr-defined]


def main() -> int:
    install()
    return cli.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
